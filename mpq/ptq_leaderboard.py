"""Top-1 after reconstruction for many allocations at once (leaderboard column, benchmark).

``reconstruct_allocations`` takes labelled allocations (e.g. every proxy at
every budget), removes duplicates, reconstructs all of them for each
requested calibration seed in one stacked pass (``mpq.reconstruct``), and
measures each on the test images; ``attach_to_rows`` writes the result into
leaderboard rows under ``top1_test_reconstruct`` (seed 0) and
``top1_test_reconstruct_mean`` / ``_std`` / ``_seeds`` (all seeds).
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from mpq.ptq_stack import stack_model, stacked_layers, top1_per_variant
from mpq.reconstruct import ReconConfig, Variant, reconstruct_many


@dataclass(frozen=True)
class Allocation:
    label: str
    """What it is, e.g. ``ompq@3avg``; several labels may share one bit map."""
    bits: dict[str, int]
    seeds: tuple[int, ...] = (0,)
    """Calibration seeds to reconstruct it with."""


def _key(bits: dict[str, int]) -> tuple:
    return tuple(sorted(bits.items()))


def reconstruct_allocations(model: nn.Module, allocations: Sequence[Allocation], calib: dict[int, torch.Tensor],
                            test_images: torch.Tensor, test_labels: torch.Tensor, config: ReconConfig,
                            eval_batch: int = 100, progress=None) -> dict:
    """{"results": {label: {"seeds": {seed: top1}, "mean", "std"}}, "seconds", "variants", ...}.

    ``calib[seed]``: normalized calibration images of that seed (all the same shape)."""
    unique: dict[tuple, dict[int, None]] = {}
    bits_of: dict[tuple, dict[str, int]] = {}
    for a in allocations:
        key = _key(a.bits)
        bits_of[key] = a.bits
        for s in a.seeds:
            unique.setdefault(key, {})[s] = None
    plan = [(key, seed) for key, seeds in unique.items() for seed in seeds]
    variants = [Variant(bits_of[key], calib[seed]) for key, seed in plan]
    start = time.perf_counter()
    nets, stats = reconstruct_many(model, variants, config, progress)
    _sync(test_images.device)
    recon_s = time.perf_counter() - start
    stacked = stack_from_nets(nets, test_images.device)
    top1 = top1_per_variant(stacked, test_images, test_labels, len(nets), eval_batch)
    measured = {(key, seed): t for (key, seed), t in zip(plan, top1)}
    results = {}
    for a in allocations:
        per_seed = {s: measured[(_key(a.bits), s)] for s in a.seeds}
        values = list(per_seed.values())
        results[a.label] = {"seeds": per_seed, "mean": statistics.fmean(values),
                            "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                            "min": min(values), "max": max(values)}
    return {"results": results, "seconds": recon_s, "variants": len(variants), "iters": stats.iters,
            "step_s": stats.step_s,
            "seconds_per_variant": recon_s / len(variants), "blocks": stats.blocks,
            "blocks_optimized": stats.blocks_optimized, "nets": nets}


def stack_from_nets(nets: list, device: torch.device) -> nn.Module:
    """The K reconstructed networks stacked again for one batched evaluation (hard rounding)."""
    skeleton = nets[0].skeleton
    names = list(nets[0].layers)
    scales = {n: torch.stack([net.layers[n].scale for net in nets]).to(device) for n in names}
    bits = {n: [net.layers[n].bits for net in nets] for n in names}
    signs = {n: torch.stack([_orientation(net.layers[n]) for net in nets]).to(device) for n in names}
    stacked = stack_model(skeleton.to(device), names, scales, bits, signs)
    for name, m in stacked_layers(stacked).items():
        ints = m.sign * torch.stack([net.layers[name].weight_int for net in nets]).to(device).float()
        ratio = m.sign * m.weight_fp.unsqueeze(0) / m.scale
        # alpha >= 0 exactly where the stored integer rounds the ratio up
        m.alpha.data = torch.where(ints > torch.floor(ratio), 1.0, -1.0)
        m.bias = torch.cat([net.layers[name].bias for net in nets]).to(device)
        acts = [net.layers[name].act for net in nets]
        if acts[0] is not None:
            channels = m.weight_fp.shape[1] * (m.conv_args[3] // m.k if m.is_conv else 1)
            m.act_scale = torch.tensor([a[0] for a in acts], device=device).repeat_interleave(channels)
            m.act_zero = torch.tensor([a[1] for a in acts], dtype=torch.int32,
                                      device=device).repeat_interleave(channels)
            m.act_levels = 2 ** acts[0][2] - 1
            m.act_on = True
        m.mode = "hard"
    return stacked


def _orientation(q) -> torch.Tensor:
    return q.orientation if q.orientation is not None else torch.ones_like(q.scale)


def attach_to_rows(rows: list[dict], results: dict, label_of) -> None:
    """Write each row's reconstruction top-1 (``label_of(row)`` names its allocation) into the row."""
    for row in rows:
        r = results.get(label_of(row))
        if r is None:
            continue
        row["top1_test_reconstruct"] = r["seeds"].get(0, r["mean"])
        row["top1_test_reconstruct_mean"] = r["mean"]
        row["top1_test_reconstruct_std"] = r["std"]
        row["top1_test_reconstruct_seeds"] = len(r["seeds"])


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def add_reconstruct_column(report: dict, model: nn.Module, calib: dict[int, torch.Tensor],
                           test_images: torch.Tensor, test_labels: torch.Tensor, config: ReconConfig) -> None:
    """``mpq.leaderboard --final-ptq reconstruct``: every row's allocation reconstructed (all rows and
    calibration seeds in one stacked pass), its test top-1 written into the row beside ``top1_test``."""
    label = lambda row: f"{row['proxy']}@{row['budget']}"  # noqa: E731
    rows = [r for r in report["rows"] if "error" not in r]
    if not rows:
        return
    allocations = [Allocation(label(r), r["bits"], tuple(calib)) for r in rows]
    measured = reconstruct_allocations(model, allocations, calib, test_images, test_labels, config)
    attach_to_rows(report["rows"], measured["results"], label)
    report["reconstruct"] = {"config": config.to_dict(), "iters": measured["iters"], "seeds": list(calib),
                             "calib_images": int(next(iter(calib.values())).shape[0]),
                             "seconds": measured["seconds"], "variants": measured["variants"]}
