"""Turn an LLM response into ``(reasoning, code)``.

The prompts ask for a short reasoning and exactly one fenced python block. Real
models also wrap the block in prose, add example blocks, forget the fence or
forget to close it; this module accepts what is unambiguous and raises
:class:`DraftError` (with a one-line reason) for the rest.
"""
from __future__ import annotations

import ast
import re
import textwrap
from dataclasses import dataclass

from agents.dedupe import ENTRY_POINTS, ast_hash
from agents.drafts import DraftError

# A fenced block: ``` or ~~~, optional language tag, body up to the closing
# fence or, for a response cut off at max_tokens, the end of the text.
_FENCE = re.compile(
    r"^[ \t]*(?P<fence>```|~~~)[ \t]*(?P<lang>[\w.+-]*)[^\n]*\n(?P<body>.*?)(?:^[ \t]*(?P=fence)[ \t]*$|\Z)",
    re.MULTILINE | re.DOTALL,
)
_THINK = re.compile(r"<think>.*?(</think>|\Z)", re.DOTALL)
_CODE_START = re.compile(r"^(import |from \w|def |@)")
_LABEL = re.compile(r"^\s*(\*\*)?(reasoning|explanation|idea)(\*\*)?\s*:\s*(\*\*)?\s*", re.IGNORECASE)


@dataclass(frozen=True)
class ParsedResponse:
    reasoning: str
    code: str


def parse_response(text: str) -> ParsedResponse:
    """Reasoning and the one proxy module in ``text``; raises DraftError."""
    text = _THINK.sub("", (text or "").replace("\r\n", "\n")).strip()
    if not text:
        raise DraftError("empty response", text)
    blocks = list(_FENCE.finditer(text))
    if blocks:
        # A closing fence glued to the last code line ("return x```") ends the code there.
        code = _pick_block(text, [m.group("body").split("```")[0] for m in blocks])
        prose = _FENCE.sub("\n", text)
    else:
        prose, code = _unfenced(text)
    code = _clean_code(code, text)
    check_entry_points(code, text)
    return ParsedResponse(reasoning=_clean_reasoning(prose), code=code)


def check_entry_points(code: str, raw: str = "") -> None:
    """Enforce the proxy contract's signature: a module-level ``score(layer)``
    or ``score_all(layers)`` callable with exactly one positional argument."""
    try:
        tree = ast.parse(code)
    except SyntaxError as err:
        raise DraftError(f"code does not parse: {err.msg} (line {err.lineno})", raw, code=code) from None
    entries = [s for s in tree.body if isinstance(s, ast.FunctionDef) and s.name in ENTRY_POINTS]
    if not entries:
        raise DraftError("code defines neither score(layer) nor score_all(layers) at module level", raw, code=code)
    for func in entries:
        args = func.args
        positional = args.posonlyargs + args.args
        required = len(positional) - len(args.defaults)
        kw_required = [a.arg for a, d in zip(args.kwonlyargs, args.kw_defaults) if d is None]
        if required > 1 or kw_required or (not positional and args.vararg is None):
            wanted = "score(layer)" if func.name == "score" else "score_all(layers)"
            raise DraftError(f"{func.name}() must be callable as {wanted} with one argument", raw, code=code)


def _defines_entry(code: str) -> bool:
    try:
        tree = ast.parse(code)
    except SyntaxError:  # still recognisable, so a broken proxy reaches the critic
        return bool(re.search(r"^def (score|score_all)\s*\(", code, re.MULTILINE))
    return any(isinstance(s, ast.FunctionDef) and s.name in ENTRY_POINTS for s in tree.body)


def _pick_block(text: str, bodies: list[str]) -> str:
    if len(bodies) == 1:
        return bodies[0]
    defining = [b for b in bodies if _defines_entry(b)]
    distinct = {ast_hash(b): b for b in defining}
    if len(distinct) == 1:
        return defining[-1]
    if not distinct:
        raise DraftError(f"{len(bodies)} code blocks, none defines score(layer) or score_all(layers)", text)
    raise DraftError(f"{len(distinct)} different code blocks define score/score_all; expected exactly one", text)


def _unfenced(text: str) -> tuple[str, str]:
    """Code without a fence: from a line that starts a module (the first that
    works), trimmed of trailing prose until it parses."""
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if _CODE_START.match(line)]
    for start in starts:
        for end in range(len(lines), start, -1):
            code = "\n".join(lines[start:end])
            if _defines_entry(code) and _parses(code):
                return "\n".join(lines[:start] + lines[end:]), code
    for start in starts:  # broken code is still code: let the critic see it
        code = "\n".join(lines[start:])
        if _defines_entry(code):
            return "\n".join(lines[:start]), code
    raise DraftError("no code block in the response", text)


def _parses(code: str) -> bool:
    try:
        ast.parse(code)
    except SyntaxError:
        return False
    return True


def _clean_code(code: str, raw: str) -> str:
    """Drop what is not the proxy: ``if __name__ == "__main__":`` demos and
    bare top-level expressions such as ``print(score(x))``."""
    code = textwrap.dedent(code.strip("\n")).rstrip()  # a block inside a list item is indented
    if not code.strip():
        raise DraftError("the code block is empty", raw)
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return code  # reported by check_entry_points with the line number
    drop: set[int] = set()
    for stmt in tree.body:
        if _is_main_guard(stmt) or _is_bare_expression(stmt, first=stmt is tree.body[0]):
            drop.update(range(stmt.lineno, (stmt.end_lineno or stmt.lineno) + 1))
    if not drop:
        return code
    kept = [line for i, line in enumerate(code.splitlines(), start=1) if i not in drop]
    return "\n".join(kept).strip("\n")


def _is_main_guard(stmt: ast.stmt) -> bool:
    return isinstance(stmt, ast.If) and "__name__" in ast.unparse(stmt.test)


def _is_bare_expression(stmt: ast.stmt, first: bool) -> bool:
    if not isinstance(stmt, ast.Expr):
        return False
    is_docstring = isinstance(stmt.value, ast.Constant) and isinstance(stmt.value.value, str)
    return not (first and is_docstring)


def _clean_reasoning(prose: str) -> str:
    lines = [_LABEL.sub("", line).rstrip() for line in prose.strip().splitlines()]
    text = "\n".join(lines)
    return re.sub(r"\n{3,}", "\n\n", text).strip()
