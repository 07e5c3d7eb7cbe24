"""Exact bit allocation: an integer program over one bit width per layer.

Objective (HAWQ-V2, Dong et al. 2020, Eq. 6 shape: sensitivity x perturbation)::

    minimise  sum_l  s_l * noise(l, b_l)
    s.t.      sum_l params_l * b_l        <= weight-bit budget
              sum_l macs_l * b_l * a      <= BOPs budget            (optional)
              b_l in candidate bits (>= the layer's floor, if any)

Why this penalty. Rounding to b bits adds noise whose power is proportional
to the squared step, and mpq.quant's step is ``max|w| / (2**(b-1) - 1)``; to
second order a layer's loss increase is its sensitivity times that noise power.
So by default ``noise(l, b) = ((2**(b_min-1) - 1) / (2**(b-1) - 1)) ** 2``
(1, 1/49, 1/16129 for 2, 4, 8 bits): a layer's penalty at the lowest candidate
width is exactly its (normalised) score and shrinks as the quantizer's noise
power does. A proxy whose scores are the loss increases of its layers at b_min
bits (what mpq.truth measures) then makes the program minimise the predicted
total loss increase, which is the allocation one wants. The layer size enters
only through the budget, so the proxy alone decides how much a layer's weights
matter (a proxy may fold ``params`` into its score if it wants). A measured
noise table (e.g. each layer's relative weight MSE at each width) can be
passed instead with ``noise=``.

Scores are made positive and scale-free first (``normalize_scores``), so any
finite scores work; only their order and ratios matter.
Solved by HiGHS through ``scipy.optimize.milp`` with a zero MIP gap, so the
result is the exact optimum (tests/test_allocate.py checks it by brute force).
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import sys
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp

from mpq.budget import Budget, parse_budget


class AllocationError(ValueError):
    """The budget cannot be met (or the inputs do not fit together)."""


@dataclass(frozen=True)
class Allocation:
    bits: list[int]
    """Weight bits per layer, in the order of the scores."""
    objective: float
    """Value of the objective (normalised scores x noise)."""
    total_bits: int
    avg_bits: float
    """Parameter-weighted average weight bits."""
    size_mb: float
    """Weight size in MB (2**20 bytes)."""
    bops: float
    """Bit operations per image: sum macs * weight bits * activation bits."""
    seconds: float


def normalize_scores(scores: Sequence[float]) -> np.ndarray:
    """Positive, max-1 version of ``scores`` with the same order.

    All positive: divided by the maximum (ratios kept). Otherwise shifted so the
    smallest becomes 1% of the range, then divided by the maximum. Constant
    scores become all ones.
    """
    s = np.asarray(scores, dtype=float)
    lo, hi = float(s.min()), float(s.max())
    if hi == lo:
        return np.ones_like(s)
    if lo <= 0:
        s = s - lo + 0.01 * (hi - lo)
    return s / s.max()


def default_noise(num_layers: int, candidates: Sequence[int]) -> np.ndarray:
    """noise[l, j]: the quantizer's rounding-noise power at candidates[j] bits relative to the lowest
    candidate, ((2**(b_min-1) - 1) / (2**(b-1) - 1)) ** 2, the same for every layer."""
    c = np.asarray(candidates, dtype=float)
    if c.min() < 2:
        raise AllocationError(f"candidate bits must be at least 2, got {sorted(candidates)}")
    step = 1.0 / (2.0 ** (c - 1) - 1)
    return np.tile((step / step[np.argmin(c)]) ** 2, (num_layers, 1))


def allocate(scores: Sequence[float], params: Sequence[int], budget: Budget | str,
             candidates: Sequence[int] = (2, 4, 8), macs: Sequence[int] | None = None, act_bits: int = 8,
             max_bops: float | None = None, min_bits: Sequence[int | None] | None = None,
             noise: np.ndarray | None = None) -> Allocation:
    """Optimal weight bits per layer for ``scores`` (higher = more sensitive) under ``budget``."""
    start = time.perf_counter()
    budget = parse_budget(budget) if isinstance(budget, str) else budget
    cand = sorted(int(b) for b in candidates)
    n, k = len(scores), len(cand)
    p = np.asarray(params, dtype=float)
    if len(p) != n or n == 0:
        raise AllocationError(f"{n} scores for {len(p)} layers")
    noise = default_noise(n, cand) if noise is None else np.asarray(noise, dtype=float)
    allowed = _allowed(n, cand, min_bits)

    total_params = int(p.sum())
    bit_budget = budget.total_bits(total_params)
    lowest = sum(p[i] * cand[int(np.argmax(allowed[i]))] for i in range(n))
    highest = float(p.sum() * cand[-1])
    if bit_budget < lowest - 1e-6:
        raise AllocationError(
            f"budget {budget} is infeasible: reachable from {_fmt(budget, lowest, total_params)} "
            f"(all layers at their lowest bits) to {_fmt(budget, highest, total_params)} (all at {cand[-1]} bits)")

    bits_grid = np.tile(np.asarray(cand, dtype=float), (n, 1))
    weight_row = (p[:, None] * bits_grid).ravel()
    constraints = [LinearConstraint(np.kron(np.eye(n), np.ones(k)), 1, 1),
                   LinearConstraint(weight_row[None, :], -np.inf, bit_budget)]
    if max_bops is not None:
        if macs is None:
            raise AllocationError("a BOPs budget needs the layers' MACs")
        bops_row = (np.asarray(macs, dtype=float)[:, None] * bits_grid * act_bits).ravel()
        min_bops = float(sum(bops_row.reshape(n, k)[i][allowed[i]].min() for i in range(n)))
        if max_bops < min_bops * (1 - 1e-9):
            raise AllocationError(f"BOPs budget {max_bops:.4g} is infeasible: the minimum reachable is "
                                  f"{min_bops:.4g}, the maximum {float(bops_row.reshape(n, k).max(1).sum()):.4g}")
        constraints.append(LinearConstraint(bops_row[None, :], -np.inf, max_bops))

    # Scaled up so HiGHS's absolute gap tolerance cannot hide a better solution.
    cost = (normalize_scores(scores)[:, None] * noise).ravel()
    scale = 1e6 / max(float(cost.max()), 1e-300)
    with _silenced_stdout():
        result = milp(c=cost * scale, constraints=constraints, integrality=np.ones(n * k),
                      bounds=Bounds(0, allowed.ravel().astype(float)), options={"mip_rel_gap": 0})
    if result.x is None:
        raise AllocationError(f"no bit allocation meets budget {budget}"
                              + ("" if max_bops is None else f" and {max_bops:.4g} BOPs") + f": {result.message}")
    choice = np.round(result.x).reshape(n, k).argmax(axis=1)
    bits = [cand[j] for j in choice]
    return summarize(bits, params, macs, act_bits, objective=float(cost.reshape(n, k)[np.arange(n), choice].sum()),
                     seconds=time.perf_counter() - start)


@contextlib.contextmanager
def _silenced_stdout():
    """HiGHS (scipy 1.17) prints a debug line to the C stdout whatever ``disp`` says
    ("HighsMipSolverData::transformNewIntegerFeasibleSolution tmpSolver.run();",
    jump-dev/HiGHS.jl#312); it would corrupt ``--json`` output, so file descriptor 1
    goes to /dev/null while the solver runs (C buffers flushed before it comes back)."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, ValueError, OSError):  # no real stdout (captured): nothing to protect
        yield
        return
    sys.stdout.flush()
    saved = os.dup(fd)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), fd)
            try:
                yield
            finally:
                _flush_c_stdout()
                os.dup2(saved, fd)
    finally:
        os.close(saved)


def _flush_c_stdout() -> None:
    try:
        ctypes.CDLL(None).fflush(None)
    except (OSError, AttributeError):
        pass


def _allowed(n: int, cand: list[int], min_bits: Sequence[int | None] | None) -> np.ndarray:
    allowed = np.ones((n, len(cand)), dtype=bool)
    if min_bits is not None:
        for i, floor in enumerate(min_bits):
            if floor is not None:
                allowed[i] = np.asarray(cand) >= min(floor, cand[-1])
    return allowed


def _fmt(budget: Budget, bits: float, total_params: int) -> str:
    return str(Budget(budget.kind, round(budget.from_bits(bits, total_params), 4)))


def summarize(bits: Sequence[int], params: Sequence[int], macs: Sequence[int] | None = None, act_bits: int = 8,
              objective: float = float("nan"), seconds: float = 0.0) -> Allocation:
    """Size / average bits / BOPs of a bit configuration."""
    total = int(sum(int(p) * int(b) for p, b in zip(params, bits)))
    bops = float(sum(int(m) * int(b) * act_bits for m, b in zip(macs, bits))) if macs is not None else float("nan")
    return Allocation(bits=[int(b) for b in bits], objective=objective, total_bits=total,
                      avg_bits=total / max(sum(int(p) for p in params), 1), size_mb=total / 8 / 2**20,
                      bops=bops, seconds=seconds)
