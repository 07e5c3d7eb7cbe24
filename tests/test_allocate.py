"""Exact allocation: the integer program against brute force, budgets, errors."""
import itertools

import numpy as np
import pytest

from mpq.allocate import AllocationError, allocate, default_noise, normalize_scores, summarize
from mpq.budget import Budget, parse_budget


def brute_force(scores, params, bit_budget, cand, macs=None, max_bops=None, act_bits=8, min_bits=None):
    s = normalize_scores(scores)
    noise = default_noise(len(s), cand)
    best = None
    for choice in itertools.product(range(len(cand)), repeat=len(s)):
        bits = [cand[j] for j in choice]
        if min_bits and any(f is not None and b < f for b, f in zip(bits, min_bits)):
            continue
        if sum(p * b for p, b in zip(params, bits)) > bit_budget:
            continue
        if max_bops is not None and sum(m * b * act_bits for m, b in zip(macs, bits)) > max_bops:
            continue
        value = sum(s[i] * noise[i, j] for i, j in enumerate(choice))
        if best is None or value < best:
            best = value
    return best


@pytest.mark.parametrize("seed", range(12))
def test_milp_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(3, 7))
    cand = (2, 4, 8) if seed % 2 else (2, 3, 4, 6, 8)
    n = min(n, 5) if len(cand) == 5 else n
    scores = rng.lognormal(0, 2, n) * (1 if seed % 3 else -1)  # negative scores too
    params = rng.integers(10, 5000, n)
    avg = float(rng.uniform(min(cand) + 0.1, max(cand) - 0.1))
    result = allocate(scores, params, f"{avg:.3f}avg", cand)
    bit_budget = float(f"{avg:.3f}") * params.sum()
    assert sum(p * b for p, b in zip(params, result.bits)) <= bit_budget
    assert result.objective == pytest.approx(brute_force(scores, params, bit_budget, cand), rel=1e-9)


@pytest.mark.parametrize("seed", range(6))
def test_milp_with_bops_and_floor_matches_brute_force(seed):
    rng = np.random.default_rng(100 + seed)
    n, cand = 5, (2, 4, 8)
    scores, params = rng.lognormal(0, 1, n), rng.integers(10, 5000, n)
    macs = rng.integers(1000, 100000, n)
    min_bits = [8, None, None, None, 4]
    lowest = 8 * (8 * macs[0] + 2 * macs[1:4].sum() + 4 * macs[4])
    max_bops = float(rng.uniform(lowest, 8 * 8 * macs.sum()))
    result = allocate(scores, params, "5avg", cand, macs=macs, max_bops=max_bops, min_bits=min_bits)
    assert result.bits[0] == 8 and result.bits[-1] >= 4
    assert result.bops <= max_bops
    expected = brute_force(scores, params, 5 * params.sum(), cand, macs, max_bops, min_bits=min_bits)
    assert result.objective == pytest.approx(expected, rel=1e-9)


def test_higher_score_never_gets_fewer_bits_for_equal_sizes():
    scores = [0.1, 5.0, 1.0, 20.0, 0.5, 3.0]
    result = allocate(scores, [100] * 6, "4avg")
    order = np.argsort(scores)
    assert [result.bits[i] for i in order] == sorted(result.bits)
    assert result.avg_bits <= 4


def test_constant_scores_spend_the_budget():
    result = allocate([1.0] * 4, [100, 100, 100, 100], "5avg")
    assert result.avg_bits == pytest.approx(5.0)  # e.g. two layers at 8, two at 2


def test_infeasible_budget_names_the_reachable_range():
    with pytest.raises(AllocationError, match=r"reachable from 2avg .* to 8avg"):
        allocate([1, 2, 3], [10, 10, 10], "1.5avg")
    with pytest.raises(AllocationError, match=r"MB"):
        allocate([1, 2, 3], [10**6] * 3, "0.1MB")


def test_budget_above_maximum_gives_all_top_bits():
    assert allocate([1, 2], [10, 10], "2x").bits == [8, 8]  # 2x compression = 16 average bits


def test_summarize_reports_size_and_bops():
    a = summarize([8, 4], params=[2**20, 2**20], macs=[10, 20], act_bits=8)
    assert a.size_mb == pytest.approx(1.5) and a.avg_bits == 6 and a.bops == 10 * 8 * 8 + 20 * 4 * 8


@pytest.mark.parametrize("text,kind,value", [("3avg", "avg_bits", 3.0), ("3.5avg", "avg_bits", 3.5),
                                             ("1.5MB", "size_mb", 1.5), (" 8x ", "compression", 8.0),
                                             ("2.25mb", "size_mb", 2.25)])
def test_parse_budget(text, kind, value):
    assert parse_budget(text) == Budget(kind, value)


@pytest.mark.parametrize("text", ["", "3", "avg", "3 bits", "-2avg", "0avg", "1.5GB", "x8"])
def test_parse_budget_rejects_bad_syntax_in_one_line(text):
    with pytest.raises(ValueError) as info:
        parse_budget(text)
    message = str(info.value)
    assert "\n" not in message and '"3avg"' in message and '"1.5MB"' in message and '"8x"' in message


def test_budget_units_agree():
    params = 4 * 2**20
    assert Budget("avg_bits", 4).total_bits(params) == Budget("compression", 8).total_bits(params)
    assert Budget("size_mb", 2).total_bits(params) == Budget("avg_bits", 4).total_bits(params)
    assert Budget("size_mb", 1).from_bits(8 * 2**20, params) == 1
