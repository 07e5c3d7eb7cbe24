"""What an agent is told: the task, the layers, the parents, the library.

The graph builds a :class:`DraftContext` once per generation from its state;
the agents turn it into placeholder values for the prompt files.
"""
from __future__ import annotations

import math
import re
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
    return {"task": ctx.task, "layers": ctx.layers or "(not given)",
            "layers_summary": summarize_layers(ctx.layers), "library": format_library(ctx, exclude)}


# One row of mpq.features.describe_layers: idx name kind shape k/s fmap params MACs [fan_in block role].
_ROW = re.compile(r"^\s*(\d+)\s+(\S+)\s+(conv|depthwise|linear)\s+(\S+)\s+(\S+)\s+(\S+)\s+([\d,]+)\s+([\d,]+)(?:\s+.*)?$")


def summarize_layers(table: str, largest: int = 3) -> str:
    """A few lines instead of the full layer table (for small models' prompts):
    counts per kind, total weights, the first and last layers and the largest
    ones. Falls back to the table itself when it is not describe_layers' format."""
    rows = [m.groups() for m in map(_ROW.match, table.splitlines()) if m]
    if not rows:
        return table.strip() or "(not given)"
    params = {int(r[0]): int(r[6].replace(",", "")) for r in rows}
    kinds: dict[str, int] = {}
    for r in rows:
        kinds[r[2]] = kinds.get(r[2], 0) + 1
    brief = lambda r: f"idx {r[0]} {r[2]} {r[3]} ({int(r[6].replace(',', '')):,} weights)"  # noqa: E731
    by_size = sorted(rows, key=lambda r: -params[int(r[0])])[:largest]
    lines = [
        f"{len(rows)} layers ({', '.join(f'{n} {k}' for k, n in sorted(kinds.items()))}), "
        f"{sum(params.values()):,} weights; index 0 = first.",
        f"first: {brief(rows[0])}; last: {brief(rows[-1])}",
        "largest: " + "; ".join(brief(r) for r in by_size),
    ]
    dw = [params[int(r[0])] for r in rows if r[2] == "depthwise"]
    if dw:
        lines.append(f"depthwise layers are small: {min(dw):,} to {max(dw):,} weights")
    return "\n".join(lines)


def parent_values(p: Parent, prefix: str) -> dict[str, str]:
    return {
        f"{prefix}_code": p.code.strip(),
        f"{prefix}_reasoning": p.reasoning.strip() or "(none given)",
        f"{prefix}_fitness": format_fitness(p),
    }
