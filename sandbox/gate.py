"""The static gate: refuse proxy source that reaches outside the proxy contract.

It parses the source with ``ast`` and never runs it. It is the first line of
defence only; the process (or container) around the proxy is what contains
code that gets past it. Standard library only (the worker checks again).

Rules (each rejection names its rule and line):
- ``size``: at most ``MAX_SOURCE_BYTES`` of source.
- ``syntax``: it must parse.
- ``contract``: it must define ``score(layer)`` or ``score_all(layers)`` at top level.
- ``import``: only ``math``, ``numpy``, ``torch``, ``scipy`` and their submodules,
  no relative imports, and no module path through a denied name (below).
- ``builtin``: no ``exec``, ``eval``, ``compile``, ``open``, ``__import__``,
  ``globals``, ``locals``, ``vars``, ``input``, ``breakpoint``, ``exit``, ... by name.
- ``dunder``: no name or attribute that starts with ``__``, no private attribute
  (``x._foo``: ``torch._C``, ``_hvp``), no string constant containing ``__``
  (``"{0.__class__}".format``), and ``getattr``/``hasattr`` only with a literal,
  public, allowed attribute name; ``setattr``/``delattr`` not at all.
- ``denied``: no attribute named after a process, file, network or code-loading
  facility (``torch.os``, ``np.load``, ``torch.save``, ``torch.hub``, ``.tofile``, ...).
"""
from __future__ import annotations

import ast
from dataclasses import dataclass

MAX_SOURCE_BYTES = 64 * 1024

ALLOWED_MODULES = frozenset({"math", "numpy", "torch", "scipy"})

DENIED_BUILTINS = frozenset({
    "exec", "eval", "compile", "open", "__import__", "globals", "locals", "vars",
    "input", "breakpoint", "help", "exit", "quit", "setattr", "delattr", "memoryview",
    "__builtins__", "__loader__", "__spec__",
})

REFLECTION_BUILTINS = frozenset({"getattr", "hasattr"})
"""Allowed only as ``getattr(obj, "literal_public_name"[, default])``."""

DENIED_ATTRIBUTES = frozenset({
    # processes, interpreter, threads and signals
    "os", "sys", "subprocess", "multiprocessing", "threading", "signal", "builtins",
    "importlib", "ctypes", "ctypeslib", "cffi", "gc", "inspect", "code", "runpy",
    "system", "popen", "spawn", "fork", "kill",
    # files and serialization (arbitrary code in pickles, writes outside the sandbox)
    "io", "pathlib", "shutil", "tempfile", "pickle", "marshal", "load", "loads",
    "save", "savez", "savez_compressed", "savetxt", "loadtxt", "genfromtxt", "fromfile",
    "tofile", "from_file", "memmap", "open_memmap", "fromregex", "DataSource",
    "loadmat", "savemat", "mmread", "mmwrite",
    # network, downloads, native code, code generation, distributed
    "socket", "urllib", "http", "hub", "cpp_extension", "load_library", "library",
    "ops", "classes", "jit", "package", "distributed", "f2py", "distutils", "testing",
    "compile", "compiler", "utils", "backends",
})

CONTRACT_FUNCTIONS = ("score", "score_all")


@dataclass
class GateRejection(Exception):
    """Source refused by the static gate: which rule, on which line, and why."""

    rule: str
    line: int
    message: str = ""

    def __str__(self) -> str:
        where = f"line {self.line}" if self.line else "source"
        return f"static gate, rule '{self.rule}', {where}: {self.message}"


def check_source(source: str) -> None:
    """Raise ``GateRejection`` if ``source`` breaks a rule; return None if it passes."""
    size = len(source.encode("utf-8", "replace"))
    if size > MAX_SOURCE_BYTES:
        raise GateRejection("size", 0, f"{size} bytes, limit {MAX_SOURCE_BYTES}")
    try:
        tree = ast.parse(source)
    except SyntaxError as exc:
        raise GateRejection("syntax", exc.lineno or 0, exc.msg) from None
    except ValueError as exc:  # e.g. null bytes
        raise GateRejection("syntax", 0, str(exc)) from None
    _check_contract(tree)
    for node in ast.walk(tree):
        _check_node(node)


def _check_contract(tree: ast.Module) -> None:
    defined = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    if not defined.intersection(CONTRACT_FUNCTIONS):
        raise GateRejection("contract", 0, "defines neither score(layer) nor score_all(layers) at top level")


def _check_node(node: ast.AST) -> None:
    line = getattr(node, "lineno", 0)
    if isinstance(node, ast.Import):
        for alias in node.names:
            _check_module(alias.name, line)
    elif isinstance(node, ast.ImportFrom):
        if node.level:
            raise GateRejection("import", line, "relative import")
        _check_module(node.module or "", line)
        for alias in node.names:
            _check_public_name(alias.name, line, "import")
    elif isinstance(node, ast.Name):
        _check_name(node.id, line)
    elif isinstance(node, ast.Attribute):
        _check_public_name(node.attr, line, "attribute")
    elif isinstance(node, ast.Constant) and isinstance(node.value, str) and "__" in node.value:
        raise GateRejection("dunder", line, f"string constant containing '__': {node.value[:40]!r}")
    elif isinstance(node, ast.Call):
        _check_reflection(node, line)
    elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        _check_name(node.name, line)
    elif isinstance(node, ast.arg):
        _check_name(node.arg, line)


def _check_module(module: str, line: int) -> None:
    parts = module.split(".")
    if parts[0] not in ALLOWED_MODULES:
        raise GateRejection("import", line, f"import of {module!r} (allowed: {', '.join(sorted(ALLOWED_MODULES))})")
    for part in parts[1:]:
        _check_public_name(part, line, "import")


def _check_name(name: str, line: int) -> None:
    if name in DENIED_BUILTINS:
        raise GateRejection("builtin", line, f"use of {name!r}")
    if name.startswith("__"):
        raise GateRejection("dunder", line, f"name {name!r}")


def _check_public_name(name: str, line: int, what: str) -> None:
    if name.startswith("_"):
        raise GateRejection("dunder", line, f"private or dunder {what} {name!r}")
    if name in DENIED_ATTRIBUTES:
        raise GateRejection("denied", line, f"{what} {name!r} (process, file, network or code loading)")


def _check_reflection(call: ast.Call, line: int) -> None:
    if not (isinstance(call.func, ast.Name) and call.func.id in REFLECTION_BUILTINS):
        return
    name = call.args[1] if len(call.args) > 1 else None
    if not (isinstance(name, ast.Constant) and isinstance(name.value, str)):
        raise GateRejection("dunder", line, f"{call.func.id}() needs a literal attribute name")
    _check_public_name(name.value, line, "attribute")
