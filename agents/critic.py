"""The critic: repair a proxy that failed in the sandbox.

:func:`repair` is one LLM call. :func:`repair_loop` is the paper's loop for
callers without a graph (tests, scripts): evaluate, and on failure ask the
critic, at most ``max_repairs`` times (default R = 2). The graph runs the same
loop as graph edges, calling :func:`repair` from its critic node.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from langchain_core.language_models import BaseChatModel

from agents.context import DraftContext, EvalFailure, shared_values
from agents.dedupe import ast_hash
from agents.drafts import DraftError, ProxyDraft
from agents.llm import LLMCallError, LLMCallRecord
from agents.prompts import PromptSet
from agents.runner import draft

DEFAULT_MAX_REPAIRS = 2


def repair(
    llm: BaseChatModel, prompts: PromptSet, ctx: DraftContext, code: str, failure: EvalFailure | str
) -> tuple[ProxyDraft, LLMCallRecord]:
    """Repaired code for ``code`` given its sandbox error (template ``critic``).

    The result's operator is ``repair`` and its parent the failed code's
    ast_hash. Raises DraftError / LLMCallError.
    """
    values = {**shared_values(ctx), "code": code.strip(), "error": str(failure).strip()}
    return draft(llm, prompts, "critic", values, "repair", (ast_hash(code),), agent="critic")


@dataclass(frozen=True)
class RepairOutcome:
    draft: ProxyDraft
    """The last draft evaluated (the repaired one if a repair worked)."""
    failure: EvalFailure | None
    """None if ``draft`` passed; else its (last) failure."""
    repairs: int
    """Critic calls made (<= max_repairs)."""
    records: tuple[LLMCallRecord, ...]
    """The critic's LLM calls, in order."""


def repair_loop(
    llm: BaseChatModel,
    prompts: PromptSet,
    ctx: DraftContext,
    candidate: ProxyDraft,
    evaluate: Callable[[str], EvalFailure | None],
    max_repairs: int = DEFAULT_MAX_REPAIRS,
) -> RepairOutcome:
    """Evaluate ``candidate``; while it fails, ask the critic (at most
    ``max_repairs`` times). A critic answer that is unusable or identical to
    the failing code counts as a try and is not evaluated."""
    failure = evaluate(candidate.code)
    current, code, records, repairs = candidate, candidate.code, [], 0
    while failure is not None and repairs < max_repairs:
        repairs += 1
        try:
            fixed, record = repair(llm, prompts, ctx, code, failure)
        except DraftError as err:
            records += [err.record] if err.record else []
            if err.code:  # e.g. a syntax error: the critic may fix its own output
                code, failure = err.code, EvalFailure(err.reason)
            continue
        except LLMCallError as err:
            records.append(err.record)
            continue
        records.append(record)
        if fixed.ast_hash == ast_hash(code):  # same proxy: same failure, no evaluation
            continue
        current, code = fixed, fixed.code
        failure = evaluate(code)
    return RepairOutcome(current, failure, repairs, tuple(records))
