"""Weight-memory budgets: "3avg", "3.5avg", "1.5MB", "8x".

A budget is turned into one number, the total number of weight bits allowed,
so the allocator sees a single linear constraint whatever the user typed.
Only the weights of the quantizable layers count (biases and BatchNorm are
folded / kept in FP32 and are small); 1 MB = 2**20 bytes.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

BudgetKind = Literal["avg_bits", "size_mb", "compression"]

ACCEPTED_FORMS = '"3avg" (average weight bits), "1.5MB" (weight size), "8x" (compression vs FP32)'
_PATTERN = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(avg|mb|x)\s*$", re.IGNORECASE)
_KINDS: dict[str, BudgetKind] = {"avg": "avg_bits", "mb": "size_mb", "x": "compression"}
BYTES_PER_MB = 2**20


@dataclass(frozen=True)
class Budget:
    """A weight-memory budget in the unit the user gave."""

    kind: BudgetKind
    value: float

    def total_bits(self, total_params: int) -> float:
        """Weight bits allowed for a model with ``total_params`` quantizable weights."""
        if self.kind == "avg_bits":
            return self.value * total_params
        if self.kind == "size_mb":
            return self.value * BYTES_PER_MB * 8
        return 32.0 * total_params / self.value

    def from_bits(self, bits: float, total_params: int) -> float:
        """Express ``bits`` total weight bits in this budget's unit (for messages)."""
        if self.kind == "avg_bits":
            return bits / total_params
        if self.kind == "size_mb":
            return bits / 8 / BYTES_PER_MB
        return 32.0 * total_params / bits

    def __str__(self) -> str:
        suffix = {"avg_bits": "avg", "size_mb": "MB", "compression": "x"}[self.kind]
        return f"{self.value:g}{suffix}"


def parse_budget(text: str) -> Budget:
    """Parse ``"3avg"``, ``"3.5avg"``, ``"1.5MB"`` or ``"8x"``; ValueError otherwise."""
    match = _PATTERN.match(str(text))
    if not match or float(match.group(1)) <= 0:
        raise ValueError(f"bad budget {text!r}: use a positive number with a unit, {ACCEPTED_FORMS}")
    return Budget(kind=_KINDS[match.group(2).lower()], value=float(match.group(1)))
