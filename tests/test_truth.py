"""Measured ground truth: per-layer sensitivity, configuration benchmark, and the disk cache."""
import json

import numpy as np
import pytest
from mpq_tiny import tiny_setup

import mpq.fitness
from mpq.quant import QuantConfig, Quantizer
from mpq.task import Task
from mpq.truth import SensitivityTruth, config_benchmark, measure_sensitivity, random_configs


@pytest.fixture(scope="module")
def quantizer():
    s = tiny_setup()
    return Quantizer(s.model, s.calib_images, QuantConfig())


def test_sensitivity_is_measured_per_layer_and_bits(quantizer):
    s = tiny_setup()
    calls = []
    truth = measure_sensitivity(quantizer, s.search_images, s.search_labels, bits=(2, 4),
                                progress=lambda done, total: calls.append((done, total)))
    n = len(quantizer.names)
    assert truth.names == quantizer.names and truth.bits == [2, 4] and truth.images == len(s.search_images)
    assert calls[-1] == (2 * n, 2 * n) and len(calls) == 2 * n
    loss = np.array(truth.delta_loss)
    assert loss.shape == (n, 2)
    assert np.all(loss[:, 0] > loss[:, 1] - 1e-3)  # 2 bits hurt more than 4 bits, every layer
    assert loss[:, 0].max() > 0.05                  # and at least one layer really suffers at 2 bits
    assert truth.sensitivity == pytest.approx(loss.mean(axis=1).tolist())
    assert SensitivityTruth.from_dict(json.loads(json.dumps(truth.to_dict()))) == truth


def test_random_configs_spread_over_the_budget_range():
    params = [100, 2000, 50, 4000, 300, 800]
    configs = random_configs(params, (2, 4, 8), k=16, seed=0)
    avg = [sum(p * b for p, b in zip(params, c)) / sum(params) for c in configs]
    assert len(configs) == 16 and all(set(c) <= {2, 4, 8} for c in configs)
    assert min(avg) < 3 and max(avg) > 6.5
    assert len({tuple(c) for c in configs}) >= 12
    assert configs == random_configs(params, (2, 4, 8), k=16, seed=0)


def test_config_benchmark_measures_each_configuration(quantizer):
    s = tiny_setup()
    params = [int(m.weight.numel()) for _, m in quantizer.layers]
    bench = config_benchmark(quantizer, s.search_images[:200], s.search_labels[:200], params, k=6, seed=1)
    assert len(bench.top1) == len(bench.configs) == 6 and bench.images == 200
    assert bench.avg_bits == sorted(bench.avg_bits)
    assert bench.top1[-1] > bench.top1[0]  # most bits beats fewest bits


def test_ground_truth_is_cached_on_disk_and_reused(tmp_path, monkeypatch):
    s = tiny_setup()
    task = Task(budget="4avg", eval_limit=200)
    args = (task, s.model, s.calib_images, s.calib_labels, s.search_images, s.search_labels)
    first = mpq.fitness.Evaluator.from_parts(*args, cache_dir=tmp_path, config_samples=8)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) == 1 and files[0].startswith("sensitivity-")
    _ = first.config_benchmark
    assert len(list(tmp_path.glob("configs-*.json"))) == 1

    def must_not_run(*_a, **_k):
        raise AssertionError("ground truth recomputed despite the cache")

    monkeypatch.setattr(mpq.fitness, "measure_sensitivity", must_not_run)
    monkeypatch.setattr(mpq.fitness, "config_benchmark", must_not_run)
    second = mpq.fitness.Evaluator.from_parts(*args, cache_dir=tmp_path, config_samples=8)
    assert second.truth == first.truth and second.config_benchmark == first.config_benchmark

    # another quantizer config (or other images) is another key: recomputed, not confused
    with pytest.raises(AssertionError, match="recomputed"):
        mpq.fitness.Evaluator.from_parts(*args, cache_dir=tmp_path, quant_config=QuantConfig(clipping="mse"))


def test_cache_dir_defaults_to_the_environment(tmp_path, monkeypatch):
    from mpq.cache import cached_json, default_cache_dir
    monkeypatch.setenv("TAP_MPQ_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    assert cached_json(None, "x", {"a": 1}, lambda: {"v": 2}) == {"v": 2}
    assert cached_json(None, "x", {"a": 1}, lambda: {"v": 3}) == {"v": 2}
    assert cached_json(None, "x", {"a": 2}, lambda: {"v": 3}) == {"v": 3}
