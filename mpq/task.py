"""The task: everything that defines how a proxy is judged.

One frozen object travels from the CLI through the sandbox wire format to the
worker, so a proxy's fitness is always tied to exactly one task.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class Task:
    """How a proxy is judged (paper: fitness phi, Eq. 5)."""

    model: str = "mobilenetv2"
    """Registry name, see ``mpq.models.MODEL_NAMES``."""
    dataset: str = "cifar10-mini"
    """``cifar10-mini`` or ``embedded`` (offline, shipped), ``cifar10`` or ``imagenet``.
    The default is the task that separates human proxies most on a CPU
    (benchmarks/results/default_task.md)."""
    data_root: str | None = None
    """Folder holding the data set (not needed for ``embedded``)."""
    weights: str | None = None
    """None = the project's own checkpoint; a file path; or ``torchvision``."""
    budget: str = "3avg"
    """``3avg`` (average weight bits), ``1.5MB`` (model size) or ``8x`` (compression vs FP32)."""
    bits: tuple[int, ...] = (2, 4, 8)
    """Candidate weight bit-widths per layer."""
    act_bits: int = 8
    """Activation bit-width (per-tensor, all layers)."""
    alpha: float = 0.1
    """phi = alpha * rho_sens + (1 - alpha) * acc_quant."""
    calib_size: int = 16
    """Calibration images, drawn from the training split."""
    seed: int = 0
    device: str = "cpu"
    eval_limit: int | None = None
    """Use at most this many search-split images for acc_quant (None = all)."""
    fitness_ptq: str = "rtn"
    """How acc_quant quantizes a candidate's allocation (``mpq.fitness_ptq.FITNESS_PTQ``):
    ``rtn`` (round-to-nearest, the paper's fitness) or ``reconstruct`` (a short block
    reconstruction, BRECQ / AdaRound). The ground truth (rho_sens) is the same for both."""
    fitness_recon_iters: int = 100
    """Reconstruction steps per block for ``fitness_ptq="reconstruct"`` (the final model uses 2,000)."""
    fitness_calib: int = 256
    """Training images the ``reconstruct`` fitness reconstructs on (same seed as the ``calib_size``
    images, which are its first ones)."""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Task":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown task field(s): {', '.join(sorted(unknown))}")
        values = dict(data)
        if "bits" in values:
            values["bits"] = tuple(int(b) for b in values["bits"])
        return cls(**values)


def parse_bits(text: str) -> tuple[int, ...]:
    """``--bits 2,4,8`` -> (2, 4, 8), sorted and without repeats; ValueError names the accepted form."""
    try:
        bits = tuple(sorted({int(b) for b in text.split(",") if b.strip()}))
    except ValueError:
        raise ValueError(f"--bits {text!r}: expected comma-separated integers, e.g. 2,4,8") from None
    if not bits or any(b < 1 or b > 16 for b in bits):
        raise ValueError(f"--bits {text!r}: expected integers between 1 and 16")
    return bits
