"""The default task ships its ground truth: a fresh run never measures it."""
from __future__ import annotations

import pytest

import mpq.fitness
from mpq.cache import SHIPPED_DIR
from mpq.fitness import Evaluator
from mpq.task import Task


def test_the_default_task_is_the_shipped_cifar10_subset():
    task = Task()
    assert (task.model, task.dataset, task.budget, task.calib_size) == ("mobilenetv2", "cifar10-mini", "3avg", 16)


@pytest.mark.parametrize("model", ["mobilenetv2", "resnet18"])
def test_shipped_ground_truth_matches_the_default_task(model, tmp_path, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("ground truth recomputed: the shipped file's key no longer matches the task")

    monkeypatch.setattr(mpq.fitness, "measure_sensitivity", never)
    evaluator = Evaluator(Task(model=model), cache_dir=tmp_path)  # empty user cache: only the shipped file
    assert len(evaluator.truth.sensitivity) == len(evaluator.layers)
    assert evaluator.truth.images == 1000
    assert not list(tmp_path.glob("sensitivity-*.json"))  # read from SHIPPED_DIR, nothing written
    assert any(SHIPPED_DIR.glob("sensitivity-*.json"))
