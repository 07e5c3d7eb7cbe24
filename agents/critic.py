"""The critic: repair a proxy that failed in the sandbox.

:func:`repair` is one LLM call. :func:`repair_step` is one call under the
repair policy (what counts as a repair worth evaluating, what the next call is
shown, :func:`next_failure`); it is the policy's only implementation. Two drivers run it at most R
times: the graph's critic node (one step per node, so a run resumes between
steps) and :func:`repair_loop` for callers without a graph (benchmarks).
"""
from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from langchain_core.language_models import BaseChatModel

from agents.context import DraftContext, EvalFailure, shared_values
from agents.dedupe import ast_hash
from agents.drafts import DraftError, ProxyDraft
from agents.llm import LLMCallError, LLMCallRecord
from agents.prompts import PromptSet
from agents.runner import draft

DEFAULT_MAX_REPAIRS = 2
# mpq.proxy.load_proxy compiles a proxy as "<proxy>", so its traceback frames name this file.
_PROXY_FRAME = re.compile(r'File "<proxy>", line (\d+)')


def repair(
    llm: BaseChatModel, prompts: PromptSet, ctx: DraftContext, code: str, failure: EvalFailure | str
) -> tuple[ProxyDraft, LLMCallRecord]:
    """Repaired code for ``code`` given its sandbox error (template ``critic``).

    The result's operator is ``repair`` and its parent the failed code's
    ast_hash. Raises DraftError / LLMCallError.
    """
    error = explain_failure(code.strip(), failure, prompts.error_hints)
    values = {**shared_values(ctx), "code": code.strip(), "error": error}
    return draft(llm, prompts, "critic", values, "repair", (ast_hash(code),), agent="critic")


def explain_failure(code: str, failure: EvalFailure | str, hints: Sequence[tuple[str, str]]) -> str:
    """The error as the critic is shown it: the sandbox's message, then the line of ``code``
    that raised (the innermost ``<proxy>`` frame) and the first hint whose pattern matches.

    Small models repair a named line far more often than a traceback (session 2: the 1.5B
    model's critic re-submitted the same ``float(tensor)`` twice in three of five repairs)."""
    text = str(failure).strip()
    notes = []
    frames = _PROXY_FRAME.findall(text)
    lines = code.splitlines()
    if frames and 1 <= int(frames[-1]) <= len(lines):
        notes.append(f"The line that failed: `{lines[int(frames[-1]) - 1].strip()}`")
    hint = next((h for pattern, h in hints if re.search(pattern, text)), None)
    if hint:
        notes.append(f"Hint: {hint}")
    return "\n".join([text, *notes])


@dataclass(frozen=True)
class RepairStep:
    """One critic call under the repair policy."""

    draft: ProxyDraft | None
    """The repair to evaluate; None when there is nothing new to evaluate (the try still counts)."""
    code: str
    """The code the next critic call is shown: the repair, the critic's own unparsable code, or the old code."""
    failure: EvalFailure
    """What the next critic call is told when ``draft`` is None."""
    reason: str
    """Why ``draft`` is None ('' when it is not)."""
    records: tuple[LLMCallRecord, ...]
    """The call's record (none when the call failed before one existed)."""


def repair_step(
    llm: BaseChatModel, prompts: PromptSet, ctx: DraftContext, code: str, failure: EvalFailure | str
) -> RepairStep:
    """Ask the critic once. A repair that is unusable or identical to ``code`` (same AST
    hash) is not evaluated; one that does not parse is shown, with its error, to the
    next call, since the critic may fix its own output."""
    failure = failure if isinstance(failure, EvalFailure) else EvalFailure(str(failure))
    try:
        fixed, record = repair(llm, prompts, ctx, code, failure)
    except DraftError as err:
        records = (err.record,) if err.record else ()
        if err.code:
            return RepairStep(None, err.code, EvalFailure(err.reason), err.reason, records)
        return RepairStep(None, code, failure, err.reason, records)
    except LLMCallError as err:
        return RepairStep(None, code, failure, str(err), (err.record,))
    if fixed.ast_hash == ast_hash(code):  # same proxy: same failure, no evaluation
        return RepairStep(None, code, failure, "critic returned the same proxy", (record,))
    return RepairStep(fixed, fixed.code, failure, "", (record,))


def next_failure(step: RepairStep, code: str, failure: EvalFailure) -> EvalFailure:
    """What the next critic call is told after ``step`` left nothing to evaluate: the error of the
    critic's own unparsable code, or why the step was dropped and, after it, the error before
    (``failure``, the one ``code`` had). Both drivers, the graph's critic node and :func:`repair_loop`, use this."""
    if step.code != code:
        return step.failure
    return EvalFailure(f"{step.reason}; before: {failure.reason}", failure.traceback_tail)


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
    """Evaluate ``candidate``; while it fails, take a :func:`repair_step` (at most
    ``max_repairs`` times) and evaluate the repairs worth evaluating."""
    failure = evaluate(candidate.code)
    current, code, records, repairs = candidate, candidate.code, [], 0
    while failure is not None and repairs < max_repairs:
        repairs += 1
        step = repair_step(llm, prompts, ctx, code, failure)
        records += step.records
        if step.draft is None:
            failure, code = next_failure(step, code, failure), step.code
            continue
        code = step.code
        current = step.draft
        failure = evaluate(code)
    return RepairOutcome(current, failure, repairs, tuple(records))
