"""The prompt set: plain files in one folder, checked before any LLM call.

One file per template (``system``, ``init``, ``mutation``, ``crossover``,
``critic``; extension ``.md``, ``.txt`` or none) with ``{{name}}`` placeholders.
``--prompts DIR`` swaps the whole set; ``--prompts full`` / ``--prompts
compact`` name the project's sets (:data:`PROMPT_SETS`: the full contract for
large API models, a short digest + code skeleton + worked examples for small
local models). :meth:`PromptSet.load` fails with one clear line on a missing
file, an unknown placeholder or a missing required one. The proxy contract is
not copied into the prompts: ``{{contract}}`` is the "The proxy contract"
section of ``mpq/README.md``, read at load time.

Optional files of a set: ``skeleton`` and ``examples`` fill ``{{skeleton}}`` /
``{{examples}}`` in any template (so one skeleton serves every template);
``contract`` replaces the README section in ``{{contract}}`` with a digest
(the compact set's; tests/test_prompts.py checks it names only real
attributes); and
``ideas`` lists the idea families (``- `` items) that
:attr:`PromptSet.idea_families` returns (a set without one uses
``prompts/ideas.md``); each init draft of a generation gets a different one
through ``{{idea}}`` (agents.proposer.propose); ``hints`` lists, for errors the
sandbox reports, one hint each that the critic is shown with the error
(:attr:`PromptSet.error_hints`; a set without one uses ``prompts/hints.md``).

:attr:`PromptSet.shown_proxies` holds the AST hash of every proxy the prompts
show (their python blocks) and of every human baseline in ``mpq/proxies``: a
draft that merely copies one is not a discovery, and agents.runner rejects it.
"""
from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Mapping

from langchain_core.messages import BaseMessage, HumanMessage, SystemMessage

from agents.dedupe import ast_hash

DEFAULT_DIR = Path(__file__).resolve().parent.parent / "prompts"
# Named sets for --prompts (anything else is taken as a folder path).
PROMPT_SETS: Mapping[str, Path] = MappingProxyType({"full": DEFAULT_DIR, "compact": DEFAULT_DIR / "compact"})
# Which set an LLM provider gets when --prompts is not given: the small local
# models get the compact set (prompts about a quarter as long, more valid
# drafts: benchmarks/results/local_llm.json); API models get the full contract.
DEFAULT_SET_BY_PROVIDER: Mapping[str, str] = MappingProxyType({"local": "compact"})
CONTRACT_HEADING = "## The proxy contract"
SNIPPETS = ("skeleton", "examples")
CONTRACT_FILE = "contract"
IDEAS_FILE = "ideas"
HINTS_FILE = "hints"

_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
_IDEA_ITEM = re.compile(r"^\s*[-*]\s+(\S.*?)\s*$", re.MULTILINE)
_HINT_ITEM = re.compile(r"^\s*[-*]\s+`([^`]+)`\s*:\s*(\S.*?)\s*$", re.MULTILINE)
_PYTHON_BLOCK = re.compile(r"```python\n(.*?)```", re.DOTALL)
_SHARED = {"task", "layers", "layers_summary", "library", "contract", *SNIPPETS}
_PARENT = {"parent_code", "parent_reasoning", "parent_fitness"}
_PARENTS = {f"parent_{ab}_{part}" for ab in "ab" for part in ("code", "reasoning", "fitness")}

# template -> (required placeholders, optional placeholders)
PLACEHOLDERS: Mapping[str, tuple[frozenset[str], frozenset[str]]] = MappingProxyType({
    "system": (frozenset({"contract"}), frozenset(_SHARED)),
    "init": (frozenset({"task"}), frozenset(_SHARED | {"idea"})),
    "mutation": (frozenset({"parent_code"}), frozenset(_SHARED | _PARENT)),
    "crossover": (frozenset({"parent_a_code", "parent_b_code"}), frozenset(_SHARED | _PARENTS)),
    "critic": (frozenset({"code", "error"}), frozenset(_SHARED | {"code", "error"})),
})
TEMPLATES = tuple(PLACEHOLDERS)


class PromptError(ValueError):
    """The prompt set is incomplete or inconsistent."""


@dataclass(frozen=True)
class PromptSet:
    """Validated templates plus the proxy contract text."""

    directory: Path
    templates: Mapping[str, str]
    contract: str
    snippets: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    """Contents of the set's optional ``skeleton`` / ``examples`` files."""
    idea_families: tuple[str, ...] = ()
    """The ``- `` items of the set's ``ideas`` file (else prompts/ideas.md), in file order."""
    error_hints: tuple[tuple[str, str], ...] = ()
    """(regular expression, hint) pairs of the set's ``hints`` file (else prompts/hints.md)."""
    shown_proxies: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    """AST hash -> where it is shown, for every proxy in the prompts and every human baseline."""

    @classmethod
    def load(cls, directory: str | Path | None = None, readme: str | Path | None = None) -> "PromptSet":
        """Read and check the set in ``directory``: a folder, a name of
        :data:`PROMPT_SETS`, or None (the project's full set in prompts/)."""
        directory = resolve_prompt_dir(directory)
        if not directory.is_dir():
            raise PromptError(f"prompt folder not found: {directory} (or name a set: {', '.join(PROMPT_SETS)})")
        templates = {name: _read_template(directory, name) for name in TEMPLATES}
        snippets = {name: _read_optional(directory, name) for name in SNIPPETS}
        snippets = {name: text.strip() for name, text in snippets.items() if text is not None}
        for name, text in templates.items():
            _check_placeholders(directory, name, text, snippets)
        families = read_idea_families(directory)
        digest = _read_optional(directory, CONTRACT_FILE)
        contract = digest.strip() if digest is not None else read_contract(readme)
        shown = shown_proxies({**templates, **snippets, CONTRACT_FILE: contract})
        return cls(directory, MappingProxyType(templates), contract, MappingProxyType(snippets), families,
                   read_error_hints(directory), MappingProxyType(shown))

    def render(self, template: str, **values: str) -> str:
        """``template`` with its placeholders filled (``contract`` and the snippets are supplied)."""
        values = {"contract": self.contract, **self.snippets, **values}
        text = self.templates[template]
        missing = sorted({m.group(1) for m in _PLACEHOLDER.finditer(text)} - set(values))
        if missing:
            raise PromptError(f"prompt '{template}': no value for {', '.join(missing)}")
        return _PLACEHOLDER.sub(lambda m: str(values[m.group(1)]), text).strip() + "\n"

    def messages(self, template: str, **values: str) -> list[BaseMessage]:
        """The system prompt and the rendered ``template`` as chat messages."""
        return [
            SystemMessage(self.render("system", **values)),
            HumanMessage(self.render(template, **values)),
        ]


def default_prompt_set(llm_spec: str) -> str:
    """The set for ``--llm SPEC`` when ``--prompts`` is not given ("full" unless the provider has its own)."""
    return DEFAULT_SET_BY_PROVIDER.get(llm_spec.split(":", 1)[0], "full")


def resolve_prompt_dir(directory: str | Path | None) -> Path:
    """The folder of a set given as a path, a :data:`PROMPT_SETS` name or None (full)."""
    if directory is None:
        return DEFAULT_DIR
    if str(directory) in PROMPT_SETS and not Path(directory).is_dir():
        return PROMPT_SETS[str(directory)]
    return Path(directory)


def _read_template(directory: Path, name: str) -> str:
    text = _read_optional(directory, name)
    if text is None:
        raise PromptError(f"prompt file missing: {directory}/{name}.md")
    return text


def _read_optional(directory: Path, name: str) -> str | None:
    """The file ``name`` (.md, .txt, .py or no extension) in ``directory``, or None."""
    candidates = [directory / f"{name}{ext}" for ext in (".md", ".txt", ".py", "")]
    found = [p for p in candidates if p.is_file()]
    if not found:
        return None
    if len(found) > 1:
        raise PromptError(f"prompt '{name}' is ambiguous: {', '.join(p.name for p in found)} in {directory}")
    text = found[0].read_text(encoding="utf-8")
    if not text.strip():
        raise PromptError(f"prompt file is empty: {found[0]}")
    return text


def _check_placeholders(directory: Path, name: str, text: str, snippets: Mapping[str, str]) -> None:
    required, allowed = PLACEHOLDERS[name]
    used = {m.group(1) for m in _PLACEHOLDER.finditer(text)}
    unknown = sorted(used - allowed - required)
    if unknown:
        raise PromptError(
            f"prompt '{name}' ({directory}) has unknown placeholder(s) {', '.join(unknown)}; "
            f"allowed: {', '.join(sorted(allowed | required))}"
        )
    missing = sorted(required - used)
    if missing:
        raise PromptError(f"prompt '{name}' ({directory}) lacks required placeholder(s) {', '.join(missing)}")
    absent = sorted(used & set(SNIPPETS) - set(snippets))
    if absent:
        raise PromptError(f"prompt '{name}' ({directory}) uses {', '.join(absent)} but the set has no such file")


def read_idea_families(directory: Path) -> tuple[str, ...]:
    """The ``- `` items of ``directory``'s ideas file, else of the project's; () if neither exists."""
    for folder in (directory, DEFAULT_DIR):
        text = _read_optional(folder, IDEAS_FILE)
        if text is None:
            continue
        families = tuple(_IDEA_ITEM.findall(text))
        if not families:
            raise PromptError(f"{folder}/{IDEAS_FILE}: no '- ' items (one idea family per item)")
        return families
    return ()


def read_error_hints(directory: Path) -> tuple[tuple[str, str], ...]:
    """The ``- `pattern`: hint`` items of ``directory``'s hints file, else of the project's."""
    for folder in (directory, DEFAULT_DIR):
        text = _read_optional(folder, HINTS_FILE)
        if text is None:
            continue
        return parse_error_hints(text, f"{folder}/{HINTS_FILE}")
    return ()


def parse_error_hints(text: str, where: str) -> tuple[tuple[str, str], ...]:
    """(pattern, hint) of each ``- `pattern`: hint`` item of ``text``; ``where`` names it in errors."""
    hints = tuple(_HINT_ITEM.findall(text))
    for pattern, _ in hints:
        try:
            re.compile(pattern)
        except re.error as err:
            raise PromptError(f"{where}: bad pattern `{pattern}`: {err}") from None
    return hints


def shown_proxies(texts: Mapping[str, str]) -> dict[str, str]:
    """AST hash -> a description, for each human baseline and each python block of ``texts``
    (name -> text): the proxies a draft must not merely copy."""
    shown = {ast_hash(path.read_text(encoding="utf-8")): f"the human baseline {path.stem} (mpq/proxies/{path.name})"
             for path in _baseline_files()}
    for name, text in texts.items():
        for block in _PYTHON_BLOCK.findall(text):
            shown.setdefault(ast_hash(block), f"the example proxy shown in the prompt ({name})")
    return shown


def _baseline_files() -> Iterable[Path]:
    return sorted(p for p in (_mpq_dir() / "proxies").glob("*.py") if p.name != "__init__.py")


def read_contract(readme: str | Path | None = None) -> str:
    """The "The proxy contract" section of mpq/README.md (up to the next ``## ``)."""
    path = Path(readme) if readme is not None else _mpq_dir() / "README.md"
    if not path.is_file():
        raise PromptError(f"proxy contract not found: {path}")
    text = path.read_text(encoding="utf-8")
    start = text.find(CONTRACT_HEADING)
    if start < 0:
        raise PromptError(f"{path} has no '{CONTRACT_HEADING}' section")
    body = text[start + len(CONTRACT_HEADING):]
    end = re.search(r"^## ", body, re.MULTILINE)
    return body[: end.start() if end else None].strip()


def _mpq_dir() -> Path:
    # Located without importing mpq (which would import torch).
    import importlib.util

    spec = importlib.util.find_spec("mpq")
    if spec is None or not spec.submodule_search_locations:
        raise PromptError("package mpq not found: cannot read the proxy contract or the baselines")
    return Path(next(iter(spec.submodule_search_locations)))
