"""Measured ground truth that proxies are judged against.

- Per-layer sensitivity: quantize one layer alone (weights only, every other
  layer and all activations FP) to each of ``bits`` (default 2 and 4) and
  measure the loss increase and the top-1 drop on the search split. A layer's
  sensitivity (what rho_sens correlates with) is its loss increase averaged
  over those bit widths. Weights only, so the number isolates what the proxy
  is asked about: how much this layer's weights suffer from rounding.
- Configuration benchmark (EMQ, Dong et al. 2023, Sec. 4; OMPQ, Ma et al. 2023):
  K bit configurations spread evenly over the reachable average-bit range, each
  quantized in full (weights and activations) and its top-1 measured, so a
  proxy's predicted ranking of configurations can be scored by Kendall tau.
  Configuration i is the optimal allocation (mpq.allocate) for random
  log-normal layer scores at the i-th budget of the range: realistic mixed
  configurations, not a uniform draw that almost never reaches the extremes.

Both are plain dataclasses with ``to_dict`` / ``from_dict`` so mpq.cache can
store them; ``progress(done, total)`` is an optional callback for long loops.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from mpq.allocate import allocate
from mpq.budget import Budget
from mpq.quant import Quantizer, evaluate

Progress = Callable[[int, int], None] | None


@dataclass(frozen=True)
class SensitivityTruth:
    names: list[str]
    bits: list[int]
    fp_loss: float
    fp_top1: float
    delta_loss: list[list[float]]
    """[layer][j]: loss increase with only this layer at bits[j]."""
    delta_top1: list[list[float]]
    """[layer][j]: top-1 drop (0..1) with only this layer at bits[j]."""
    images: int

    @property
    def sensitivity(self) -> list[float]:
        """Per layer: the loss increase averaged over ``bits`` (the rho_sens target)."""
        return [float(np.mean(row)) for row in self.delta_loss]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "SensitivityTruth":
        return cls(**d)


@dataclass(frozen=True)
class ConfigBenchmark:
    names: list[str]
    configs: list[list[int]]
    """Bits per layer (order of ``names``) of each configuration."""
    avg_bits: list[float]
    top1: list[float]
    loss: list[float]
    images: int

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ConfigBenchmark":
        return cls(**d)


def measure_sensitivity(quantizer: Quantizer, images: torch.Tensor, labels: torch.Tensor,
                        bits: Sequence[int] = (2, 4), batch_size: int = 500,
                        progress: Progress = None) -> SensitivityTruth:
    """Loss increase and top-1 drop of quantizing each layer alone (weights only)."""
    base = evaluate(quantizer.apply({}, act_quant=False), images, labels, batch_size=batch_size)
    delta_loss, delta_top1 = [], []
    total = len(quantizer.names) * len(bits)
    for i, name in enumerate(quantizer.names):
        row_loss, row_top1 = [], []
        for j, b in enumerate(bits):
            r = evaluate(quantizer.apply({name: b}, act_quant=False), images, labels, batch_size=batch_size)
            row_loss.append(r.loss - base.loss)
            row_top1.append(base.top1 - r.top1)
            if progress:
                progress(i * len(bits) + j + 1, total)
        delta_loss.append(row_loss)
        delta_top1.append(row_top1)
    quantizer.apply({}, act_quant=False)
    return SensitivityTruth(names=list(quantizer.names), bits=[int(b) for b in bits], fp_loss=base.loss,
                            fp_top1=base.top1, delta_loss=delta_loss, delta_top1=delta_top1, images=len(images))


def random_configs(params: Sequence[int], candidates: Sequence[int] = (2, 4, 8), k: int = 64,
                   seed: int = 0) -> list[list[int]]:
    """``k`` configurations whose average bits spread evenly over the reachable range."""
    rng = np.random.default_rng(seed)
    lo, hi = min(candidates), max(candidates)
    configs = []
    for i in range(k):
        target = lo + (hi - lo) * (i + 0.5) / k
        scores = rng.lognormal(mean=0.0, sigma=2.0, size=len(params))
        configs.append(allocate(scores, params, Budget("avg_bits", target), candidates).bits)
    return configs


def config_benchmark(quantizer: Quantizer, images: torch.Tensor, labels: torch.Tensor, params: Sequence[int],
                     candidates: Sequence[int] = (2, 4, 8), k: int = 64, seed: int = 0, batch_size: int = 500,
                     progress: Progress = None) -> ConfigBenchmark:
    """Measured top-1 of ``k`` random mixed-precision configurations (weights and activations quantized)."""
    configs = random_configs(params, candidates, k, seed)
    top1, loss = [], []
    for i, cfg in enumerate(configs):
        r = evaluate(quantizer.apply(dict(zip(quantizer.names, cfg))), images, labels, batch_size=batch_size)
        top1.append(r.top1)
        loss.append(r.loss)
        if progress:
            progress(i + 1, len(configs))
    quantizer.apply({}, act_quant=False)
    total = sum(params)
    avg = [sum(p * b for p, b in zip(params, cfg)) / total for cfg in configs]
    return ConfigBenchmark(names=list(quantizer.names), configs=configs, avg_bits=avg, top1=top1, loss=loss,
                           images=len(images))
