"""What an agent is told: the task, the layers, the parents, the library.

The graph builds a :class:`DraftContext` once per generation from its state;
the agents turn it into placeholder values for the prompt files.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Parent:
    """A proxy already evaluated: shown to mutation / crossover and in the library."""

    id: str
    code: str
    reasoning: str = ""
    phi: float | None = None
    rho_sens: float | None = None
    acc_quant: float | None = None


@dataclass(frozen=True)
class DraftContext:
    """Everything but the parents that the prompts show."""

    task: str
    """What is being optimised, in words (see :func:`describe_task`)."""
    layers: str = ""
    """Compact layer metadata table (mpq.fitness.describe_layers)."""
    library: tuple[Parent, ...] = ()
    """The context library: best proxies so far, best first (paper: top 10%)."""
    max_library: int = 3
    """Show at most this many library entries (prompt length matters for small models)."""


@dataclass(frozen=True)
class EvalFailure:
    """Why a proxy failed in the sandbox: what the critic is shown."""

    reason: str
    traceback_tail: str = ""

    def __str__(self) -> str:
        tail = self.traceback_tail.strip()
        return f"{self.reason}\n{tail}" if tail else self.reason


_BUDGET_UNITS = (
    ("avg", "average weight bits <= {}"),
    ("MB", "model size <= {} MB"),
    ("x", "compression >= {}x vs FP32"),
)


def describe_task(task: Any) -> str:
    """The task in words, from an ``mpq.task.Task`` (or its ``to_dict()``)."""
    t: Mapping[str, Any] = task if isinstance(task, Mapping) else task.to_dict()
    budget = str(t.get("budget", ""))
    for suffix, phrase in _BUDGET_UNITS:
        if budget.endswith(suffix):
            budget = phrase.format(budget[: -len(suffix)])
            break
    bits = "/".join(str(b) for b in t.get("bits", (2, 4, 8)))
    alpha = float(t.get("alpha", 0.1))
    return (
        f"Post-training mixed-precision quantization of {t.get('model')} on the {t.get('dataset')} data set. "
        f"Each layer's weights get {bits} bits, activations {t.get('act_bits', 8)} bits; budget: {budget}. "
        f"Bits go to the layers your proxy scores highest. Fitness = {alpha:g} * rho_sens "
        f"(Spearman correlation of your scores with each layer's measured quantization sensitivity) "
        f"+ {1 - alpha:g} * top-1 accuracy of the quantized model. Higher is better."
    )


def format_fitness(p: Parent) -> str:
    if p.phi is None or not math.isfinite(p.phi):
        return "not evaluated" if p.phi is None else "failed"
    parts = [f"fitness {p.phi:.4f}"]
    if p.rho_sens is not None:
        parts.append(f"rho_sens {p.rho_sens:.3f}")
    if p.acc_quant is not None:
        parts.append(f"acc_quant {p.acc_quant:.4f}")
    return ", ".join(parts)


def format_library(ctx: DraftContext, exclude: tuple[str, ...] = ()) -> str:
    """The library entries (minus the parents shown elsewhere), compact."""
    entries = [p for p in ctx.library if p.id not in exclude][: ctx.max_library]
    if not entries:
        return "(none yet)"
    blocks = []
    for i, p in enumerate(entries, start=1):
        idea = f"Idea: {p.reasoning.strip()}\n" if p.reasoning.strip() else ""
        blocks.append(f"#{i} ({format_fitness(p)})\n{idea}```python\n{p.code.strip()}\n```")
    return "\n\n".join(blocks)


def shared_values(ctx: DraftContext, exclude: tuple[str, ...] = ()) -> dict[str, str]:
    return {"task": ctx.task, "layers": ctx.layers or "(not given)", "library": format_library(ctx, exclude)}


def parent_values(p: Parent, prefix: str) -> dict[str, str]:
    return {
        f"{prefix}_code": p.code.strip(),
        f"{prefix}_reasoning": p.reasoning.strip() or "(none given)",
        f"{prefix}_fitness": format_fitness(p),
    }
