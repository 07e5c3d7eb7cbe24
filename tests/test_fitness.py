"""Fitness (phi) and the proxy loader: good proxies, edge cases, broken proxies never crash."""
import math

import pytest
from mpq_tiny import tiny_setup

from mpq.fitness import Evaluator, rank_correlation
from mpq.proxy import ProxyError, load_proxy
from mpq.task import Task


@pytest.fixture(scope="module")
def evaluator(tmp_path_factory):
    s = tiny_setup()
    return Evaluator.from_parts(Task(budget="3avg", eval_limit=300), s.model, s.calib_images, s.calib_labels,
                                s.search_images, s.search_labels, s.test_images, s.test_labels,
                                cache_dir=tmp_path_factory.mktemp("cache"), config_samples=8)


def test_fitness_of_a_real_proxy(evaluator):
    r = evaluator.evaluate("import torch\ndef score(layer):\n    return float(layer.weight.norm())\n")
    assert len(r.scores) == 5 and -1 <= r.rho_sens <= 1 and 0 <= r.acc_quant <= 1
    assert r.phi == pytest.approx(0.1 * r.rho_sens + 0.9 * r.acc_quant)
    assert set(r.bits) == set(evaluator.names) and r.avg_bits <= 3 and r.size_mb > 0 and r.bops > 0
    assert set(r.timings) == {"score_s", "allocate_s", "quantize_s", "eval_s"}


def test_the_measured_sensitivity_as_a_proxy_is_perfectly_correlated(evaluator):
    truth = evaluator.truth.sensitivity
    r = evaluator.evaluate(f"def score_all(layers):\n    return {truth!r}\n")
    assert r.rho_sens == pytest.approx(1.0)
    inverse = evaluator.evaluate(f"def score_all(layers):\n    return [-x for x in {truth!r}]\n")
    assert inverse.rho_sens == pytest.approx(-1.0)
    assert r.acc_quant >= inverse.acc_quant


def test_constant_scores_have_rho_zero_and_a_finite_phi(evaluator):
    r = evaluator.evaluate("def score(layer):\n    return 1.0\n")
    assert r.rho_sens == 0.0 and math.isfinite(r.phi) and r.avg_bits <= 3
    assert rank_correlation([1, 2, 3], [5, 5, 5]) == 0.0 and rank_correlation([1, 2, 3], [1, 2, 4]) == 1.0


@pytest.mark.parametrize("source,reason", [
    ("def score(layer):\n    return float('nan')\n", "finite"),
    ("def score(layer):\n    return float('inf')\n", "finite"),
    ("def score_all(layers):\n    return [1.0, 2.0]\n", "2 scores for 5 layers"),
    ("def score(layer):\n    return 'high'\n", "not a real number"),
    ("def score(layer):\n    return None\n", "not a real number"),
    ("import torch\ndef score(layer):\n    return layer.weight\n", "array of shape"),
    ("def score_all(layers):\n    return 3.0\n", "not a list"),
    ("def score(layer):\n    return layer.no_such_thing\n", "AttributeError"),
    ("def score(layer):\n    return 1 / 0\n", "ZeroDivisionError"),
    ("def score(layer)\n    return 1\n", "SyntaxError"),
    ("import sys\nsys.exit(3)\n", "SystemExit"),
    ("x = 1\n", "neither score"),
])
def test_invalid_proxies_are_errors_with_a_reason(evaluator, source, reason):
    with pytest.raises(ProxyError) as info:
        evaluator.evaluate(source)
    assert reason in info.value.reason


def test_the_traceback_tail_points_into_the_proxy():
    scorer = load_proxy("def helper(x):\n    raise ValueError('boom')\n\ndef score(layer):\n    return helper(1)\n")
    with pytest.raises(ProxyError) as info:
        scorer([object()])
    assert "boom" in info.value.reason and "<proxy>" in info.value.traceback_tail
    assert "line 2" in info.value.traceback_tail


def test_numpy_and_torch_scalars_are_accepted(evaluator):
    r = evaluator.evaluate("import numpy as np\nimport torch\n"
                           "def score_all(layers):\n"
                           "    return torch.tensor([float(np.float32(l.params)) for l in layers])\n")
    assert r.scores == [float(f.params) for f in evaluator.layers]


def test_a_proxy_that_mutates_its_input_cannot_change_the_next_result(evaluator):
    honest = "def score(layer):\n    return float(layer.weight.abs().sum())\n"
    before = evaluator.evaluate(honest)
    evaluator.evaluate("def score(layer):\n    layer.weight.mul_(0)\n    layer.input.zero_()\n    return 1.0\n")
    after = evaluator.evaluate(honest)
    assert after.scores == before.scores and after.acc_quant == before.acc_quant


def test_hessian_proxy_runs_through_the_contract(evaluator):
    src = ("import torch\n"
           "def score(layer):\n"
           "    v = torch.randint(0, 2, layer.weight.shape).float() * 2 - 1\n"
           "    return float((v * layer.hvp(v)).sum())\n")
    assert len(evaluator.evaluate(src).scores) == 5


def test_reports_on_the_test_split_and_config_ranking(evaluator):
    fp = evaluator.evaluate_bits(None, split="test")
    w8 = evaluator.evaluate_bits(8, split="test")
    w2 = evaluator.evaluate_bits(2, split="search")
    assert fp.images == 500 and abs(fp.top1 - w8.top1) <= 0.02 and w2.top1 < w8.top1
    with pytest.raises(ValueError, match="split"):
        evaluator.evaluate_bits(8, split="train")
    ranking = evaluator.config_ranking(evaluator.truth.sensitivity)
    assert ranking.configs == 8 and -1 <= ranking.kendall_tau <= 1 and -1 <= ranking.kendall_tau_within <= 1
    assert ranking.kendall_tau > 0  # more bits -> lower predicted penalty -> higher measured top-1


def test_an_infeasible_budget_fails_when_the_evaluator_is_built(tmp_path):
    from mpq.allocate import AllocationError
    s = tiny_setup()
    with pytest.raises(AllocationError, match="reachable"):
        Evaluator.from_parts(Task(budget="1avg"), s.model, s.calib_images, s.calib_labels,
                             s.search_images, s.search_labels, cache_dir=tmp_path)
