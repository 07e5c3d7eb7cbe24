"""The prompt set: plain files in one folder, checked before any LLM call.

One file per template (``system``, ``init``, ``mutation``, ``crossover``,
``critic``; extension ``.md``, ``.txt`` or none) with ``{{name}}`` placeholders.
``--prompts DIR`` swaps the whole set. :meth:`PromptSet.load` fails with one
clear line on a missing file, an unknown placeholder or a missing required
one. The proxy contract is not copied into the prompts: ``{{contract}}`` is
the "The proxy contract" section of ``mpq/README.md``, read at load time.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Mapping

from langchain_core.messages import BaseMessage, HumanMessage, SystemMessage

DEFAULT_DIR = Path(__file__).resolve().parent.parent / "prompts"
CONTRACT_HEADING = "## The proxy contract"

_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
_SHARED = {"task", "layers", "library", "contract"}
_PARENT = {"parent_code", "parent_reasoning", "parent_fitness"}
_PARENTS = {f"parent_{ab}_{part}" for ab in "ab" for part in ("code", "reasoning", "fitness")}

# template -> (required placeholders, optional placeholders)
PLACEHOLDERS: Mapping[str, tuple[frozenset[str], frozenset[str]]] = MappingProxyType({
    "system": (frozenset({"contract"}), frozenset(_SHARED)),
    "init": (frozenset({"task"}), frozenset(_SHARED)),
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

    @classmethod
    def load(cls, directory: str | Path | None = None, readme: str | Path | None = None) -> "PromptSet":
        """Read and check the set in ``directory`` (default: the project's prompts/)."""
        directory = Path(directory) if directory is not None else DEFAULT_DIR
        if not directory.is_dir():
            raise PromptError(f"prompt folder not found: {directory}")
        templates = {name: _read_template(directory, name) for name in TEMPLATES}
        for name, text in templates.items():
            _check_placeholders(directory, name, text)
        contract = read_contract(readme)
        return cls(directory, MappingProxyType(templates), contract)

    def render(self, template: str, **values: str) -> str:
        """``template`` with its placeholders filled (``contract`` is supplied)."""
        values = {"contract": self.contract, **values}
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


def _read_template(directory: Path, name: str) -> str:
    candidates = [directory / f"{name}{ext}" for ext in (".md", ".txt", "")]
    found = [p for p in candidates if p.is_file()]
    if not found:
        raise PromptError(f"prompt file missing: {directory}/{name}.md")
    if len(found) > 1:
        raise PromptError(f"prompt '{name}' is ambiguous: {', '.join(p.name for p in found)} in {directory}")
    text = found[0].read_text(encoding="utf-8")
    if not text.strip():
        raise PromptError(f"prompt file is empty: {found[0]}")
    return text


def _check_placeholders(directory: Path, name: str, text: str) -> None:
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


def read_contract(readme: str | Path | None = None) -> str:
    """The "The proxy contract" section of mpq/README.md (up to the next ``## ``)."""
    path = Path(readme) if readme is not None else _mpq_readme()
    if not path.is_file():
        raise PromptError(f"proxy contract not found: {path}")
    text = path.read_text(encoding="utf-8")
    start = text.find(CONTRACT_HEADING)
    if start < 0:
        raise PromptError(f"{path} has no '{CONTRACT_HEADING}' section")
    body = text[start + len(CONTRACT_HEADING):]
    end = re.search(r"^## ", body, re.MULTILINE)
    return body[: end.start() if end else None].strip()


def _mpq_readme() -> Path:
    # Located without importing mpq (which would import torch).
    import importlib.util

    spec = importlib.util.find_spec("mpq")
    if spec is None or not spec.submodule_search_locations:
        raise PromptError("package mpq not found: cannot read the proxy contract")
    return Path(next(iter(spec.submodule_search_locations))) / "README.md"
