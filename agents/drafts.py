"""What the agents produce: a proxy draft, or a draft error.

A draft is the paper's proxy ``(reasoning, code)`` plus where it came from.
Agents never execute code; whether a draft *works* is the sandbox's question.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:  # only for the annotation; llm.py does not import this module
    from agents.llm import LLMCallRecord

Operator = Literal["init", "mutation", "crossover", "repair"]


@dataclass(frozen=True)
class ProxyDraft:
    """One proxy written by an agent (TAP: a candidate of the population)."""

    reasoning: str
    """The model's short explanation, prose only (may be empty)."""
    code: str
    """A Python module defining ``score(layer)`` or ``score_all(layers)``; no prose."""
    operator: Operator
    """Which evolution operator produced it."""
    parents: tuple[str, ...]
    """Ids of the parents as the caller named them (empty for init); for a
    repair, the ``ast_hash`` of the draft that failed."""
    ast_hash: str
    """Normalised-AST hash (agents.dedupe.ast_hash): equal hash = same proxy."""


class DraftError(Exception):
    """The response held no usable proxy. The graph may retry the operator.

    ``code`` is the extracted code when there was some (e.g. it does not parse),
    so a caller can hand it to the critic; ``record`` is the LLM call that
    produced the response, to be stored like any other call.
    """

    def __init__(
        self,
        reason: str,
        raw_response: str,
        code: str | None = None,
        record: "LLMCallRecord | None" = None,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.raw_response = raw_response
        self.code = code
        self.record = record
