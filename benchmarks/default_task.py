"""Which default task separates good proxies from bad ones? (issue 13, item 1)

    python -m benchmarks.default_task --device cuda --out DIR [--quick]

For every candidate default (data set x model x budget) and three seeds, the
human baselines' allocations are quantized (round to nearest, A8, the search's
16 calibration images) and measured on a search subset and on the held-out
test split. A seed draws the 16 calibration images and the search subset:

- ``cifar10-mini``: a seeded order of the 5,000-image search split; top-1 on its
  first 500 / 1,000 / 2,000 / 5,000 images (seed 0 keeps the split's own order,
  which is what a run with ``--eval-limit N`` uses); test = the 10,000 images;
- ``embedded``: the 1,000 search + 1,000 test images (both unseen in training)
  re-split by the seed (seed 0 keeps the fixed split).

Per candidate it reports the held-out spread (best minus median baseline),
Kendall tau between each subset's order of the baselines and their held-out
order, and the stability of the held-out order across seeds (mean pairwise
Kendall tau). It also times HAWQ-V2's joint Hutchinson traces against the
per-layer estimator (mpq/proxies/hawq_v2.py; the joint one is in
benchmarks/reference/hawq_v2_joint.py), and leaves
the ground-truth cache files of seed 0 in ``DIR/cache`` (the default task's
are shipped in mpq/ground_truth/). Figures: ``DIR/default_task.json``.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import itertools
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from mpq.budget import parse_budget
from mpq.data import DataSplits, ImageSet, calibration_batch, load_splits
from mpq.fitness import Evaluator, rank_correlation
from mpq.leaderboard import machine_info
from mpq.models import load_model
from mpq.proxies import BASELINES, baseline_source
from mpq.task import Task

CANDIDATES = [(d, m) for d in ("cifar10-mini", "embedded") for m in ("mobilenetv2", "resnet18")]
BUDGETS = ("3avg", "2.5avg", "2.25avg")
SEEDS = (0, 1, 2)
SEARCH_SIZES = {"cifar10-mini": (500, 1000, 2000, 5000), "embedded": (1000,)}
JOINT_HAWQ = Path(__file__).resolve().parent / "reference" / "hawq_v2_joint.py"


def seeded_parts(dataset: str, splits: DataSplits, seed: int) -> tuple[ImageSet, ImageSet]:
    """(search, test) for ``seed``; seed 0 is the task's own split."""
    if seed == 0:
        return splits.val, splits.test
    rng = np.random.default_rng(seed)
    if dataset == "embedded":  # re-split the 2,000 images that training never saw
        pool = ImageSet(torch.cat([splits.val.images, splits.test.images]),
                        torch.cat([splits.val.labels, splits.test.labels]), splits.spec)
        order = rng.permutation(len(pool))
        half = len(splits.val)
        return pool.subset(order[:half]), pool.subset(order[half:])
    return splits.val.subset(rng.permutation(len(splits.val))), splits.test


def correct_mask(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, batch: int = 1000) -> torch.Tensor:
    """Per-image correctness, so every prefix's top-1 comes from one pass."""
    model.eval()
    out = []
    with torch.inference_mode():
        for start in range(0, len(images), batch):
            out.append(model(images[start:start + batch]).argmax(1) == labels[start:start + batch])
    return torch.cat(out).cpu()


def measure_seed(dataset: str, model_name: str, splits: DataSplits, seed: int, device: str,
                 cache: Path, baselines: list[str]) -> dict:
    search, test = seeded_parts(dataset, splits, seed)
    model = load_model(model_name, splits.spec)
    calib, calib_labels = calibration_batch(splits, 16, seed, device)
    sizes = [n for n in SEARCH_SIZES[dataset] if n <= len(search)] or [len(search)]
    # seed 0: one Evaluator per search size, so that each size's ground truth lands in the cache
    truth_sizes = sizes if seed == 0 else sizes[:1]
    evaluator = None
    for n in truth_sizes:
        task = Task(model=model_name, dataset=dataset, budget=BUDGETS[0], device=device, seed=seed,
                    eval_limit=n if n < len(search) else None)
        evaluator = Evaluator.from_parts(task, model, calib, calib_labels,
                                         search.normalized(device), search.labels.to(device),
                                         cache_dir=cache)
    search_x, search_y = search.normalized(device), search.labels.to(device)
    test_x, test_y = test.normalized(device), test.labels.to(device)
    rows: dict[str, dict] = {}
    for name in baselines:
        start = time.perf_counter()
        scores = evaluator.evaluate(baseline_source(name)).scores
        score_s = time.perf_counter() - start
        rows[name] = {"score_s": score_s}
        for budget in BUDGETS:
            evaluator.budget = parse_budget(budget)
            evaluator.task = dataclasses.replace(evaluator.task, budget=budget)
            bits = evaluator.fitness_of_scores(scores).bits
            quantized = evaluator.quantizer.apply(bits)
            search_ok = correct_mask(quantized, search_x, search_y)
            rows[name][budget] = {
                "avg_bits": sum(bits[n] * p for n, p in zip(evaluator.names, evaluator.params)) / sum(evaluator.params),
                "two_bit_layers": sum(1 for b in bits.values() if b == 2),
                "test": float(correct_mask(quantized, test_x, test_y).float().mean()),
                "search": {str(n): float(search_ok[:n].float().mean()) for n in sizes}}
    fp = evaluator.quantizer.apply({}, act_quant=False)
    return {"fp_test": float(correct_mask(fp, test_x, test_y).float().mean()), "rows": rows}


def summarise(per_seed: dict[int, dict], budget: str, sizes: tuple[int, ...]) -> dict:
    spreads, taus, test_orders = [], {str(n): [] for n in sizes}, []
    for result in per_seed.values():
        names = list(result["rows"])
        test = [result["rows"][n][budget]["test"] for n in names]
        spreads.append(max(test) - statistics.median(test))
        test_orders.append(test)
        for n in taus:
            search = [result["rows"][p][budget]["search"][n] for p in names if n in result["rows"][p][budget]["search"]]
            if len(search) == len(test):
                taus[n].append(rank_correlation(search, test, "kendall"))
    stability = [rank_correlation(a, b, "kendall") for a, b in itertools.combinations(test_orders, 2)]
    return {"spread_best_minus_median": {"mean": statistics.mean(spreads), "min": min(spreads)},
            "kendall_search_vs_test": {n: {"mean": statistics.mean(t), "min": min(t)} for n, t in taus.items() if t},
            "test_order_stability_kendall": statistics.mean(stability) if stability else None}


def hawq_timing(splits: DataSplits, dataset: str, model_name: str, device: str) -> dict:
    """Joint (one network-wide probe per pass) vs per-layer Hutchinson traces: ranks and seconds."""
    from mpq.features import extract_features
    from mpq.proxies import hawq_v2 as reference

    spec = importlib.util.spec_from_file_location("hawq_joint", JOINT_HAWQ)
    joint = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(joint)
    calib, labels = calibration_batch(splits, 16, 0, device)
    layers = extract_features(load_model(model_name, splits.spec).to(device), calib, labels)

    def timed(fn):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        value = fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return value, time.perf_counter() - start

    per_layer, per_layer_s = timed(lambda: [reference.block_trace(layer, torch.Generator().manual_seed(0)) for layer in layers])
    joint_traces, joint_s = timed(lambda: joint.block_traces(layers, torch.Generator().manual_seed(0)))
    return {"dataset": dataset, "model": model_name, "layers": len(layers), "device": device,
            "per_layer_s": per_layer_s, "joint_s": joint_s, "joint_probes": joint.PROBES,
            "spearman_traces": rank_correlation(per_layer, joint_traces),
            "per_layer_traces": per_layer, "joint_traces": joint_traces}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.default_task", description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--candidates", default=",".join(f"{d}:{m}" for d, m in CANDIDATES))
    parser.add_argument("--hawq-timing", default="embedded:mobilenetv2,cifar10-mini:resnet18,cifar10-mini:mobilenetv2",
                        help="data:model pairs for the joint vs per-layer HAWQ comparison ('' = none)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cache = out / "cache"
    report: dict = {"machine": machine_info(args.device), "budgets": BUDGETS, "seeds": SEEDS,
                    "baselines": list(BASELINES), "candidates": [], "hawq": []}
    for pair in args.candidates.split(","):
        dataset, model_name = pair.split(":")
        splits = load_splits(dataset)
        start = time.perf_counter()
        per_seed = {s: measure_seed(dataset, model_name, splits, s, args.device, cache, list(BASELINES)) for s in SEEDS}
        entry = {"dataset": dataset, "model": model_name, "seconds": time.perf_counter() - start,
                 "fp_test": per_seed[0]["fp_test"], "per_seed": per_seed,
                 "summary": {b: summarise(per_seed, b, SEARCH_SIZES[dataset]) for b in BUDGETS}}
        report["candidates"].append(entry)
        for budget in BUDGETS:
            s = entry["summary"][budget]
            taus = ", ".join(f"n={n}: {v['mean']:+.2f}" for n, v in s["kendall_search_vs_test"].items())
            print(f"{dataset:>13} {model_name:<12} {budget:<8} spread {100 * s['spread_best_minus_median']['mean']:5.1f} "
                  f"(min {100 * s['spread_best_minus_median']['min']:4.1f}) stability {s['test_order_stability_kendall']:+.2f} "
                  f"tau {taus}", flush=True)
        (out / "default_task.json").write_text(json.dumps(report, indent=1))
    for pair in filter(None, args.hawq_timing.split(",")):
        dataset, model_name = pair.split(":")
        row = hawq_timing(load_splits(dataset), dataset, model_name, args.device)
        print(f"hawq {dataset}/{model_name}: per-layer {row['per_layer_s']:.1f} s, joint {row['joint_s']:.1f} s, "
              f"Spearman {row['spearman_traces']:+.3f}", flush=True)
        report["hawq"].append(row)
        (out / "default_task.json").write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
