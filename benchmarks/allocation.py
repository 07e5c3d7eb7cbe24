"""Time of the exact bit allocation (mpq.allocate) on ResNet-50's layers (ImageNet shapes).

The TAP paper reports 0.065 s for bit allocation. Here: 54 layers x {2,4,8},
random log-normal scores, budgets 3 / 4 / 5 average bits, with and without a
BOPs constraint; each case solved ``--repeats`` times (fresh scores each time).

    python3 -m benchmarks.allocation [--repeats 20] [--out benchmarks/results/allocation.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import torchvision

from mpq.allocate import allocate
from mpq.quant import quantizable_layers


def resnet50_layers() -> tuple[list[str], list[int], list[int]]:
    """Names, weight counts and MACs (one 224x224 image) of ResNet-50's conv / linear layers."""
    model = torchvision.models.resnet50().eval()
    x = torch.zeros(1, 3, 224, 224)
    layers = quantizable_layers(model, x)
    outputs: dict[str, tuple[int, ...]] = {}

    def record(name):
        def hook(_module, _inputs, output):
            outputs.setdefault(name, tuple(output.shape))
        return hook

    hooks = [m.register_forward_hook(record(n)) for n, m in layers]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    names = [n for n, _ in layers]
    params = [m.weight.numel() for _, m in layers]
    macs = [m.weight.numel() * (outputs[n][2] * outputs[n][3] if len(outputs[n]) == 4 else 1) for n, m in layers]
    return names, params, macs


def machine() -> dict:
    return {"platform": platform.platform(), "processor": platform.processor(), "cpu_count": os.cpu_count(),
            "load_avg_1m": os.getloadavg()[0],
            "torch": torch.__version__, "numpy": np.__version__}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/allocation.json"))
    args = parser.parse_args()

    names, params, macs = resnet50_layers()
    rng = np.random.default_rng(0)
    cases = []
    for budget in ("3avg", "4avg", "5avg"):
        for with_bops in (False, True):
            times, objective = [], []
            for _ in range(args.repeats):
                scores = rng.lognormal(0, 2, len(names))
                max_bops = 5.0 * 8 * sum(macs) if with_bops else None  # W5A8-equivalent BOPs
                start = time.perf_counter()
                result = allocate(scores, params, budget, (2, 4, 8), macs=macs, max_bops=max_bops)
                times.append(time.perf_counter() - start)
                objective.append(result.objective)
            cases.append({"budget": budget, "bops_constraint": with_bops, "repeats": args.repeats,
                          "median_s": statistics.median(times), "mean_s": statistics.fmean(times),
                          "max_s": max(times)})
            print(f"{budget:>5} bops={'yes' if with_bops else 'no ':<3}  median {cases[-1]['median_s'] * 1e3:7.1f} ms"
                  f"  mean {cases[-1]['mean_s'] * 1e3:7.1f} ms  max {cases[-1]['max_s'] * 1e3:7.1f} ms")
    report = {"benchmark": "allocation", "model": "resnet50 (ImageNet shapes)", "layers": len(names),
              "candidates": [2, 4, 8], "paper_s": 0.065, "cases": cases, "machine": machine(),
              "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{len(names)} layers; paper: 65 ms; written {args.out}")


if __name__ == "__main__":
    main()
