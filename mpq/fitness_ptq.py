"""How the fitness's ``acc_quant`` quantizes a candidate's allocation (``Task.fitness_ptq``).

- ``rtn`` (the paper's fitness, the default): the search's round-to-nearest
  quantizer (``mpq.quant.Quantizer``) on the task's calibration images, then one
  pass over the search split.
- ``reconstruct``: a short block reconstruction of the allocation (BRECQ with
  AdaRound rounding, ``mpq.reconstruct``; Li et al. 2021, Nagel et al. 2020) with
  ``fitness_recon_iters`` steps per block on ``fitness_calib`` training images,
  then the same pass. Issue 17 measured that the human baselines' order under
  round-to-nearest is not their order after reconstruction (Spearman -0.36 at 3
  average bits), so a proxy can win the paper's fitness and nothing a user keeps;
  this fitness judges allocations by what reconstruction makes of them.

The ground truth (``rho_sens``, mpq.truth) is the same for both: it measures
layers, not the candidate's allocation, so its cache key does not change.
A reconstructed accuracy is cached per allocation (kind ``acc_quant``) under a key
holding the reconstruction's settings and calibration images, so two proxies
with the same allocation are reconstructed once and an RTN fitness never reads a
reconstructed one (RTN is cheaper than a cache lookup and is not cached). The
disk write is best effort: a locked-down sandbox slot (read-only mounts) keeps
its entries in memory, so it still reconstructs each allocation once.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass
from typing import Callable, Protocol

import torch
from torch import nn

from mpq.cache import SHIPPED_DIR, cache_file, tensor_digest
from mpq.quant import Quantizer, evaluate
from mpq.reconstruct import ReconConfig, reconstruct
from mpq.task import Task

CACHE_KIND = "acc_quant"


class AccuracyOfBits(Protocol):
    """Top-1 (0..1) on the search split of the model quantized with ``bits``, and its timings."""

    def measure(self, bits: dict[str, int]) -> tuple[float, dict[str, float]]: ...

    def cache_key(self, bits: dict[str, int]) -> dict | None:
        """The key its result is cached under (None: not cached)."""


@dataclass(frozen=True)
class FitnessParts:
    """What the Evaluator has loaded, handed to the registered fitness quantizer."""

    task: Task
    model: nn.Module
    """The FP model (BatchNorm not folded), on the task's device."""
    quantizer: Quantizer
    search_images: torch.Tensor
    search_labels: torch.Tensor
    base_key: dict
    """The Evaluator's cache key (model, weights, data, calibration, quantizer)."""
    calibration: Callable[[int], torch.Tensor]
    """n -> n normalized training images (seeded by the task; the first ``calib_size`` are the RTN ones)."""
    cache_dir: object = None


class RoundToNearestAccuracy:
    """The paper's acc_quant: a weight swap in the warm quantizer and one pass over the search split."""

    @staticmethod
    def extra_seconds(task: Task) -> float:
        return 0.0

    def __init__(self, parts: FitnessParts):
        self.parts = parts

    def measure(self, bits: dict[str, int]) -> tuple[float, dict[str, float]]:
        start = time.perf_counter()
        model = self.parts.quantizer.apply(bits)
        quantize_s = time.perf_counter() - start
        top1 = evaluate(model, self.parts.search_images, self.parts.search_labels).top1
        return top1, {"quantize_s": quantize_s, "eval_s": time.perf_counter() - start - quantize_s}

    def cache_key(self, bits: dict[str, int]) -> dict | None:
        return None


class ReconstructedAccuracy:
    """acc_quant after a short block reconstruction of the allocation (cached per allocation)."""

    STEP_ALLOWANCE_S = 12.0
    """Seconds allowed per step of every block: one MobileNetV2 step measured 5.4 s on the loaded
    2-core CPU at 1 thread (benchmarks/results/recon_fitness.json); an H100 needs far less."""

    @staticmethod
    def extra_seconds(task: Task) -> float:
        return task.fitness_recon_iters * ReconstructedAccuracy.STEP_ALLOWANCE_S

    def __init__(self, parts: FitnessParts):
        task = parts.task
        self.parts = parts
        self.calib = parts.calibration(task.fitness_calib)
        self.config = ReconConfig(iters=task.fitness_recon_iters, act_bits=task.act_bits, seed=task.seed)
        self._memory: dict[str, float] = {}

    def cache_key(self, bits: dict[str, int]) -> dict | None:
        return {**self.parts.base_key, "fitness_ptq": "reconstruct", "recon": self.config.to_dict(),
                "recon_calib": tensor_digest(self.calib), "recon_calib_images": int(self.calib.shape[0]),
                "act_bits": self.parts.task.act_bits, "alloc": sorted(bits.items())}

    def measure(self, bits: dict[str, int]) -> tuple[float, dict[str, float]]:
        key = self.cache_key(bits)
        path = cache_file(self.parts.cache_dir, CACHE_KIND, key)
        known = self._memory.get(path.name)
        if known is None:
            known = _read_cached(path)
        if known is not None:
            self._memory[path.name] = known
            return known, {"quantize_s": 0.0, "reconstruct_s": 0.0, "eval_s": 0.0, "cached": 1.0}
        start = time.perf_counter()
        net, _ = reconstruct(self.parts.model, bits, self.calib, self.config)
        reconstruct_s = time.perf_counter() - start
        top1 = evaluate(net.to_module(), self.parts.search_images, self.parts.search_labels).top1
        eval_s = time.perf_counter() - start - reconstruct_s
        self._memory[path.name] = top1
        _write_cached(path, key, top1)
        # quantize_s is the reconstruction: consumers that add quantize_s + eval_s see the whole cost
        return top1, {"quantize_s": reconstruct_s, "reconstruct_s": reconstruct_s, "eval_s": eval_s, "cached": 0.0}


FITNESS_PTQ: dict[str, type] = {"rtn": RoundToNearestAccuracy, "reconstruct": ReconstructedAccuracy}
"""``--fitness-ptq`` choices: one class per way of quantizing a candidate for acc_quant."""
FITNESS_PTQ_MODES = tuple(FITNESS_PTQ)


def accuracy_measure(parts: FitnessParts) -> AccuracyOfBits:
    check_fitness_task(parts.task)
    return FITNESS_PTQ[parts.task.fitness_ptq](parts)


def extra_fitness_seconds(task: Task) -> float:
    """Time to allow one fitness computation beyond round-to-nearest's (the sandbox's ``fitness_s``)."""
    return FITNESS_PTQ[task.fitness_ptq].extra_seconds(task)


def check_fitness_task(task: Task) -> None:
    """ValueError with one line when the task's fitness settings cannot run."""
    if task.fitness_ptq not in FITNESS_PTQ:
        raise ValueError(f"--fitness-ptq {task.fitness_ptq!r}: choose from {', '.join(FITNESS_PTQ_MODES)}")
    for flag, value in (("--fitness-recon-iters", task.fitness_recon_iters), ("--fitness-calib", task.fitness_calib)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{flag} {value!r}: expected a positive integer")


def _read_cached(path) -> float | None:
    for candidate in (path, SHIPPED_DIR / path.name):
        try:
            return float(json.loads(candidate.read_text())["value"]["top1"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return None


def _write_cached(path, key: dict, top1: float) -> None:
    """Best effort: a locked-down sandbox slot (read-only mounts, dropped privileges) cannot write the
    cache, and losing an entry only costs a reconstruction later."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as tmp:
            json.dump({"key": key, "value": {"top1": top1}}, tmp, default=str)
        os.replace(tmp.name, path)
    except OSError:
        pass

