"""Fitness of a proxy (paper Eq. 5) and the warm ``Evaluator`` that computes it.

    phi = alpha * rho_sens + (1 - alpha) * acc_quant

- ``rho_sens``: Spearman correlation between the proxy's per-layer scores and
  the measured per-layer sensitivity (mpq.truth). Spearman is undefined when
  either side is constant; we define it as 0 there (a constant proxy carries
  no ranking information), so phi stays finite.
- ``acc_quant``: top-1 (0..1) on the search split of the model quantized with
  the allocation (mpq.allocate) that the proxy's scores give at the task's
  budget, activations at ``task.act_bits``; quantized by round-to-nearest (the
  paper) or, with ``task.fitness_ptq="reconstruct"``, after a short block
  reconstruction (mpq.fitness_ptq).

The ``Evaluator`` loads model, data, calibration batch, features and ground
truth once; each ``evaluate(source)`` then costs one proxy call, one integer
program, one weight swap and one pass over the search split.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from scipy import stats
from torch import nn

from mpq.allocate import Allocation, allocate, default_noise, normalize_scores
from mpq.budget import parse_budget
from mpq.cache import cached_json, tensor_digest, weights_hash
from mpq.features import LayerFeatures, describe_layers, extract_features  # noqa: F401 (re-exported)
from mpq.fitness_ptq import AccuracyOfBits, FitnessParts, accuracy_measure
from mpq.proxy import load_proxy, validate_scores
from mpq.quant import EvalResult, QuantConfig, Quantizer, evaluate
from mpq.task import Task
from mpq.truth import ConfigBenchmark, Progress, SensitivityTruth, config_benchmark, measure_sensitivity

TRUTH_BITS = (2, 4)
CONFIG_SAMPLES = 64
CONFIG_GROUP = 8  # configurations per size group for ConfigRanking.kendall_tau_within


@dataclass(frozen=True)
class FitnessResult:
    scores: list[float]
    rho_sens: float
    acc_quant: float
    phi: float
    bits: dict[str, int]
    size_mb: float
    avg_bits: float
    bops: float
    timings: dict[str, float] = field(default_factory=dict)
    """score_s, allocate_s, quantize_s, eval_s (seconds); a ``reconstruct`` fitness adds
    reconstruct_s (= quantize_s) and cached (1.0 when the allocation's accuracy was known)."""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class ConfigRanking:
    kendall_tau: float
    """Over all configurations (dominated by "more bits is better": even constant scores score high)."""
    spearman: float
    kendall_tau_within: float
    """Mean Kendall tau inside groups of configurations of similar size (consecutive by average
    bits): how well the proxy ranks configurations beyond their size."""
    configs: int


def rank_correlation(a: Sequence[float], b: Sequence[float], method: str = "spearman") -> float:
    """Spearman or Kendall tau-b; 0.0 when either side is constant (undefined otherwise)."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(x) < 2 or np.all(x == x[0]) or np.all(y == y[0]):
        return 0.0
    value = stats.spearmanr(x, y).statistic if method == "spearman" else stats.kendalltau(x, y).statistic
    return float(value) if np.isfinite(value) else 0.0


def _synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(torch.device(device))


def _first_images(images: torch.Tensor, n: int) -> torch.Tensor:
    if not 0 < n <= images.shape[0]:
        raise ValueError(f"fitness calibration size must be in 1..{images.shape[0]}, got {n}")
    return images[:n]


class Evaluator:
    """Judges proxies for one ``Task``; everything expensive is done once, here."""

    def __init__(self, task: Task, cache_dir: Path | None = None, quant_config: QuantConfig | None = None,
                 progress: Progress = None, config_samples: int = CONFIG_SAMPLES):
        from mpq.data import calibration_batch, load_splits  # the lead's modules; imported late
        from mpq.models import load_model

        splits = load_splits(task.dataset, task.data_root, cache_dir=cache_dir, seed=task.seed)
        model = load_model(task.model, splits.spec, task.weights)
        calib_images, calib_labels = calibration_batch(splits, task.calib_size, task.seed, task.device)
        search = splits.val.head(task.eval_limit)
        self._calibration = lambda n: calibration_batch(splits, n, task.seed, task.device)[0]
        self._setup(task, model, calib_images, calib_labels, search.normalized(task.device),
                    search.labels.to(task.device), cache_dir, quant_config, progress, config_samples)
        self._test_set = splits.test

    @classmethod
    def from_parts(cls, task: Task, model: nn.Module, calib_images: torch.Tensor, calib_labels: torch.Tensor,
                   search_images: torch.Tensor, search_labels: torch.Tensor,
                   test_images: torch.Tensor | None = None, test_labels: torch.Tensor | None = None,
                   cache_dir: Path | None = None, quant_config: QuantConfig | None = None,
                   progress: Progress = None, config_samples: int = CONFIG_SAMPLES,
                   fitness_calib_images: torch.Tensor | None = None) -> "Evaluator":
        """An Evaluator on tensors given directly (normalized float images); for tests and tools.

        ``fitness_calib_images``: the images a ``reconstruct`` fitness reconstructs on (their first
        ``task.fitness_calib``); default: the calibration images."""
        self = cls.__new__(cls)
        limit = task.eval_limit
        pool = calib_images if fitness_calib_images is None else fitness_calib_images
        self._calibration = lambda n: _first_images(pool, n).to(task.device)
        self._setup(task, model, calib_images.to(task.device), calib_labels.to(task.device),
                    search_images[:limit].to(task.device), search_labels[:limit].to(task.device),
                    cache_dir, quant_config, progress, config_samples)
        self._test_set = None if test_images is None else (test_images, test_labels)
        return self

    def _setup(self, task: Task, model: nn.Module, calib_images: torch.Tensor, calib_labels: torch.Tensor,
               search_images: torch.Tensor, search_labels: torch.Tensor, cache_dir: Path | None,
               quant_config: QuantConfig | None, progress: Progress, config_samples: int) -> None:
        self.task = task
        self.config_samples = config_samples
        self.cache_dir = cache_dir
        self.progress = progress
        self.quant_config = quant_config or QuantConfig(act_bits=task.act_bits)
        self.budget = parse_budget(task.budget)
        model = model.to(task.device).eval()
        self.quantizer = Quantizer(model, calib_images, self.quant_config)
        self.layers: list[LayerFeatures] = extract_features(model, calib_images, calib_labels)
        self.names = [f.name for f in self.layers]
        self.params = [f.params for f in self.layers]
        self.macs = [f.macs for f in self.layers]
        floor = self.quant_config.first_last_bits
        self.min_bits = [floor if i in (0, len(self.layers) - 1) else None for i in range(len(self.layers))]
        self.search_images, self.search_labels = search_images, search_labels
        self._cache_key = {
            "model": task.model, "weights": weights_hash(model), "dataset": task.dataset,
            "search": tensor_digest(search_images, search_labels), "calib": tensor_digest(calib_images),
            "quant": dataclasses.asdict(self.quant_config),
        }
        self._allocate([1.0] * len(self.layers))  # an infeasible budget fails here, not per proxy
        for name in self.names:  # quantized weights for every candidate width, once, before any proxy
            for b in task.bits:
                self.quantizer.quantized(name, b)
        self.truth = SensitivityTruth.from_dict(cached_json(
            cache_dir, "sensitivity", {**self._cache_key, "bits": list(TRUTH_BITS)},
            lambda: measure_sensitivity(self.quantizer, search_images, search_labels, TRUTH_BITS,
                                        progress=progress).to_dict()))
        self._configs: ConfigBenchmark | None = None
        self.accuracy: AccuracyOfBits = accuracy_measure(FitnessParts(
            task=task, model=model, quantizer=self.quantizer, search_images=search_images,
            search_labels=search_labels, base_key=self._cache_key, calibration=self._calibration,
            cache_dir=cache_dir))

    @property
    def cache_key(self) -> dict:
        """What this evaluator's cached results (ground truth, configuration benchmark) are keyed on:
        model, weights, data, calibration images, quantizer. The fitness's PTQ (``task.fitness_ptq``)
        is not in it: the ground truth measures layers, not the candidate's allocation, so the
        shipped default-task files serve both fitnesses. A reconstructed acc_quant has its own key
        (``self.accuracy.cache_key``)."""
        return dict(self._cache_key)

    # ------------------------------------------------------------------ fitness

    def evaluate(self, source: str) -> FitnessResult:
        """Fitness of proxy ``source``; raises ProxyError for a broken or invalid proxy.

        Runs ``source`` in this process: for trusted code only (the project's
        baselines, tests); anything else goes through ``sandbox``."""
        scores, score_s = self.proxy_scores(source)
        return self.fitness_of_scores(scores, score_s=score_s)

    def proxy_scores(self, source: str) -> tuple[list[float], float]:
        """The proxy's validated scores on copies of the layers, and the seconds they took.

        The one place a proxy is called: the sandbox worker calls it in its isolated
        child, the leaderboard for the baselines. ProxyError for a broken proxy."""
        scorer = load_proxy(source)
        layers = [f.copy() for f in self.layers]  # a proxy cannot corrupt the shared features
        _synchronize(self.task.device)
        start = time.perf_counter()
        scores = scorer(layers)
        _synchronize(self.task.device)  # a GPU proxy's time is its kernels' time
        return scores, time.perf_counter() - start

    def fitness_of_scores(self, scores: Sequence[float], score_s: float = 0.0) -> FitnessResult:
        """Fitness of already computed scores (validated like a proxy's output)."""
        scores = validate_scores(list(scores), len(self.layers))
        rho = rank_correlation(scores, self.truth.sensitivity)
        allocation = self._allocate(scores)
        bits = dict(zip(self.names, allocation.bits))
        acc_quant, timings = self.accuracy.measure(bits)  # task.fitness_ptq: rtn or reconstruct
        alpha = self.task.alpha
        return FitnessResult(
            scores=scores, rho_sens=rho, acc_quant=acc_quant, phi=alpha * rho + (1 - alpha) * acc_quant,
            bits=bits, size_mb=allocation.size_mb, avg_bits=allocation.avg_bits, bops=allocation.bops,
            timings={"score_s": score_s, "allocate_s": allocation.seconds, **timings})

    def _allocate(self, scores: Sequence[float]) -> Allocation:
        return allocate(scores, self.params, self.budget, self.task.bits, macs=self.macs,
                        act_bits=self.task.act_bits, min_bits=self.min_bits)

    # ------------------------------------------------------------------ reports

    def evaluate_bits(self, bits: dict[str, int] | int | None, split: str = "search") -> EvalResult:
        """Top-1 / loss of a configuration ({layer: bits}, one width for all, or None = FP) on
        ``search`` or the held-out ``test`` split. FP means weights and activations FP."""
        if isinstance(bits, int):
            bits = {n: bits for n in self.names}
        model = self.quantizer.apply(bits or {}, act_quant=bits is not None)
        images, labels = self._split(split)
        return evaluate(model, images, labels)

    def _split(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        if split == "search":
            return self.search_images, self.search_labels
        if split != "test":
            raise ValueError(f"unknown split {split!r}: use 'search' or 'test'")
        if self._test_set is None:
            raise ValueError("this Evaluator was built without a test split")
        if not isinstance(self._test_set, tuple):  # an ImageSet from mpq.data: normalized on first use
            self._test_set = (self._test_set.normalized(self.task.device), self._test_set.labels.to(self.task.device))
        return self._test_set

    @property
    def config_benchmark(self) -> ConfigBenchmark:
        """K measured random configurations (computed on first use, cached on disk)."""
        if self._configs is None:
            key = {**self._cache_key, "bits": list(self.task.bits), "act_bits": self.task.act_bits,
                   "k": self.config_samples, "seed": self.task.seed}
            self._configs = ConfigBenchmark.from_dict(cached_json(
                self.cache_dir, "configs", key,
                lambda: config_benchmark(self.quantizer, self.search_images, self.search_labels, self.params,
                                         self.task.bits, self.config_samples, self.task.seed,
                                         progress=self.progress).to_dict()))
        return self._configs

    def config_ranking(self, scores: Sequence[float]) -> ConfigRanking:
        """How well the proxy ranks the benchmark's configurations: the allocation objective
        sum_l s_l * noise(l, b_l) (lower = predicted better) against measured top-1."""
        bench = self.config_benchmark
        s = normalize_scores(validate_scores(list(scores), len(self.layers)))
        noise = default_noise(len(s), self.task.bits)
        column = {b: j for j, b in enumerate(sorted(self.task.bits))}
        predicted = [-float(sum(s[i] * noise[i, column[b]] for i, b in enumerate(cfg))) for cfg in bench.configs]
        order = np.argsort(bench.avg_bits, kind="stable")
        groups = [order[i:i + CONFIG_GROUP] for i in range(0, len(order), CONFIG_GROUP)]
        within = [rank_correlation([predicted[i] for i in g], [bench.top1[i] for i in g], "kendall")
                  for g in groups if len(g) >= 3]
        return ConfigRanking(kendall_tau=rank_correlation(predicted, bench.top1, "kendall"),
                             spearman=rank_correlation(predicted, bench.top1),
                             kendall_tau_within=float(np.mean(within)) if within else 0.0,
                             configs=len(bench.configs))
