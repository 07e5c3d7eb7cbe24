"""Normalised-AST hash: one proxy, one hash, however it is written.

Two drafts get the same hash when they differ only in comments, docstrings,
formatting, type annotations or the names of their variables and helpers, so
an identical proxy is never evaluated twice. The entry points ``score`` and
``score_all``, imports, attributes (``layer.weight``) and keyword arguments
keep their names: they change what the code does.
"""
from __future__ import annotations

import ast
import hashlib

ENTRY_POINTS = ("score", "score_all")

_Scope = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)


def ast_hash(code: str) -> str:
    """16 hex digits identifying ``code`` up to the normalisations above.

    Code that does not parse is hashed as its whitespace-normalised text.
    """
    try:
        tree = ast.parse(code)
    except SyntaxError:
        text = "\n".join(line.rstrip() for line in code.strip().splitlines())
        return _digest("raw:" + text)
    tree = _normalise(tree)
    return _digest(ast.dump(tree, annotate_fields=False, include_attributes=False))


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _normalise(tree: ast.Module) -> ast.Module:
    _StripDocsAndAnnotations().visit(tree)
    module_map = _numbered(_module_bindings(tree), "g")
    for stmt in tree.body:
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
            local_map = _numbered(_local_bindings(stmt), "v")
            mapping = {**module_map, **local_map}
            # The function's own name is a module binding, not a local one.
            stmt.name = module_map.get(stmt.name, stmt.name)
            renamer = _Rename(mapping)
            for child in ast.iter_child_nodes(stmt):
                renamer.visit(child)
        else:
            _Rename(module_map).visit(stmt)
    return tree


def _numbered(names: list[str], prefix: str) -> dict[str, str]:
    mapping: dict[str, str] = {}
    for name in names:
        mapping.setdefault(name, f"{prefix}{len(mapping)}")
    return mapping


def _module_bindings(tree: ast.Module) -> list[str]:
    """Helper functions and constants defined at module level (not imports)."""
    names = []
    for stmt in tree.body:
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
            if stmt.name not in ENTRY_POINTS:
                names.append(stmt.name)
        elif isinstance(stmt, ast.Assign):
            names += [t.id for t in stmt.targets if isinstance(t, ast.Name)]
    return names


def _local_bindings(func: ast.FunctionDef | ast.AsyncFunctionDef) -> list[str]:
    """Names bound inside ``func`` (arguments, assignments, loop targets...),
    in a deterministic (breadth-first) order; ``global`` names excluded."""
    declared = {n for node in ast.walk(func) if isinstance(node, (ast.Global, ast.Nonlocal)) for n in node.names}
    names = []
    for node in ast.walk(func):
        if isinstance(node, ast.arg):
            names.append(node.arg)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            names.append(node.id)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            names.append(node.name)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node is not func:
            names.append(node.name)
    return [n for n in names if n not in declared]


class _Rename(ast.NodeTransformer):
    def __init__(self, mapping: dict[str, str]) -> None:
        self.mapping = mapping

    def visit_Name(self, node: ast.Name) -> ast.Name:
        node.id = self.mapping.get(node.id, node.id)
        return node

    def visit_arg(self, node: ast.arg) -> ast.arg:
        node.arg = self.mapping.get(node.arg, node.arg)
        return self.generic_visit(node)

    def visit_ExceptHandler(self, node: ast.ExceptHandler) -> ast.ExceptHandler:
        if node.name:
            node.name = self.mapping.get(node.name, node.name)
        return self.generic_visit(node)

    def visit_FunctionDef(self, node: ast.FunctionDef) -> ast.FunctionDef:
        node.name = self.mapping.get(node.name, node.name)
        return self.generic_visit(node)

    visit_AsyncFunctionDef = visit_FunctionDef


class _StripDocsAndAnnotations(ast.NodeTransformer):
    def generic_visit(self, node: ast.AST) -> ast.AST:
        super().generic_visit(node)
        body = getattr(node, "body", None)
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and body:
            if _is_docstring(body[0]):
                node.body = body[1:] or [ast.Pass()]
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            node.returns = None
        if isinstance(node, ast.arg):
            node.annotation = None
        return node

    def visit_AnnAssign(self, node: ast.AnnAssign) -> ast.AST | None:
        if node.value is None:
            return None
        return ast.Assign(targets=[self.visit(node.target)], value=self.visit(node.value))


def _is_docstring(stmt: ast.stmt) -> bool:
    return (
        isinstance(stmt, ast.Expr)
        and isinstance(stmt.value, ast.Constant)
        and isinstance(stmt.value.value, str)
    )
