"""The final model of a search: its allocation quantized once more, carefully, and exported.

The search judges allocations with round-to-nearest on 16 images (the paper's
fitness); the model a user keeps may be quantized differently:

* ``rtn``: the search's own quantizer (``mpq.quant.Quantizer``, min-max
  clipping, bias correction) on ``calib_size`` images;
* ``reconstruct``: block reconstruction (``mpq.reconstruct``, BRECQ / AdaRound)
  on ``calib_size`` images (OMPQ / EMQ / BRECQ use 1,024).

``keep_first_last_8bit`` raises the first and last layer to 8 bits (the
OMPQ / EMQ protocol); the extra size is reported, not hidden.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from mpq.ptq_model import QuantizedNet, from_quantizer
from mpq.quant import QuantConfig, Quantizer, evaluate, quantizable_layers
from mpq.reconstruct import DEFAULT_ITERS, ReconConfig, reconstruct

FINAL_PTQ_MODES = ("rtn", "reconstruct")


@dataclass(frozen=True)
class FinalPTQ:
    """How the final model is quantized (``--final-ptq``, ``--calib-final``, ``--recon-iters``,
    ``--keep-first-last-8bit``); recorded with the run's configuration."""

    mode: Literal["rtn", "reconstruct"] = "rtn"
    calib_size: int | None = None
    """Calibration images from the training split; None: 1,024 for ``reconstruct`` (OMPQ / EMQ /
    BRECQ), the task's own (16) for ``rtn``, so that the exported RTN model is the one the search
    measured (RTN top-1 of allocations with 2-bit layers moves with the calibration images)."""
    iters: int = DEFAULT_ITERS
    """Reconstruction steps per block (``reconstruct`` only)."""
    keep_first_last_8bit: bool = False
    seed: int = 0
    """Seed of the calibration draw (and of the reconstruction's mini-batches)."""

    def __post_init__(self) -> None:
        if self.mode not in FINAL_PTQ_MODES:
            raise ValueError(f"--final-ptq must be one of {', '.join(FINAL_PTQ_MODES)}, got {self.mode!r}")
        if (self.calib_size is not None and self.calib_size < 1) or self.iters < 0:
            raise ValueError("--calib-final must be >= 1 and --recon-iters >= 0")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def calib_images(self, task_calib_size: int) -> int:
        if self.calib_size is not None:
            return self.calib_size
        return 1024 if self.mode == "reconstruct" else task_calib_size

    def repeats_search(self, task_calib_size: int, task_seed: int) -> bool:
        """Whether the final model is the search's own quantization of the allocation (round-to-nearest,
        the same calibration images, no layer raised), so its test top-1 is the search's."""
        return (self.mode == "rtn" and self.calib_images(task_calib_size) == task_calib_size
                and self.seed == task_seed and not self.keep_first_last_8bit)

    def recon_config(self, act_bits: int | None) -> ReconConfig:
        return ReconConfig(iters=self.iters, act_bits=act_bits, seed=self.seed)


def with_first_last(bits: dict[str, int], names: list[str], floor: int = 8) -> dict[str, int]:
    """``bits`` with the first and last layer (forward order ``names``) raised to at least ``floor``."""
    out = dict(bits)
    for name in (names[0], names[-1]):
        out[name] = max(out[name], floor)
    return out


def final_quantize(model: nn.Module, bits: dict[str, int], calib: torch.Tensor, settings: FinalPTQ,
                   act_bits: int | None = 8) -> tuple[QuantizedNet, dict]:
    """The final quantized network of ``bits`` and what it took ({mode, seconds, bits, ...})."""
    start = time.perf_counter()
    names = [n for n, _ in quantizable_layers(model, calib[:1])]
    if settings.keep_first_last_8bit:
        bits = with_first_last(bits, names)
    if settings.mode == "reconstruct":
        net, stats = reconstruct(model, bits, calib, settings.recon_config(act_bits))
        info = {"blocks": stats.blocks, "blocks_optimized": stats.blocks_optimized}
    else:
        net = from_quantizer(Quantizer(model, calib, QuantConfig(act_bits=act_bits)), bits)
        info = {}
    net.meta.update({"final_ptq": settings.to_dict(), "act_bits": act_bits})
    return net, {"mode": settings.mode, "seconds": time.perf_counter() - start, "calib_images": int(calib.shape[0]),
                 "bits": net.bits, **info}


def test_top1(net: QuantizedNet, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 (0..1) of the fake-quantized network on ``images`` (on their device)."""
    return evaluate(net.to_module(), images, labels).top1
