"""How many network-wide Hutchinson probes HAWQ-V2 needs: a precise reference for issue 13.

    python -m benchmarks.hawq_reference [--pairs cifar10-mini:mobilenetv2,...] [--probes 1024]
        [--device cuda] [--out benchmarks/results/hawq_reference.json]

Session 2 compared the joint estimator (``benchmarks/reference/hawq_v2_joint.py``:
PROBES network-wide probes, one double-backward pass each, as PyHessian's
``hessian.trace``) with the per-layer estimator (``mpq/proxies/hawq_v2.py``:
PyHessian's stopping rule, at most 16 probes per layer; the baseline again
since session 4, on this benchmark's figures) and found Spearman 0.69-0.76, but neither side was
precise: the per-layer one may stop after 2 probes. This benchmark draws
``--probes`` network-wide probes (the same estimator, so their mean is an
unbiased, arbitrarily precise trace) and reports, against that reference:

- Spearman of the first m probes' traces (m = 16 ... probes/2), and of HAWQ-V2's
  scores (trace / params * ||Q_4(W) - W||^2, what the allocator sees);
- Spearman of the per-layer estimator's traces (today's reference);
- split-half agreement of the reference itself (first half vs second half);
- seconds per probe and for each estimator on this device.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import time
from pathlib import Path

import torch

from mpq.data import calibration_batch, load_splits
from mpq.features import extract_features
from mpq.fitness import rank_correlation
from mpq.leaderboard import machine_info
from mpq.models import load_model
from mpq.proxies import hawq_v2

JOINT = Path(__file__).resolve().parent / "reference" / "hawq_v2_joint.py"


def _synced(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def probe_matrix(layers, probes: int, seed: int, device: str) -> tuple[torch.Tensor, float]:
    """[probes, layers] per-probe estimates v_l^T (H v)_l, and seconds per probe."""
    generator = torch.Generator().manual_seed(seed)
    rows = []
    _synced(device)
    start = time.perf_counter()
    for _ in range(probes):
        vs = [hawq_v2.rademacher(tuple(layer.weight.shape), generator).to(layer.weight) for layer in layers]
        products = layers[0].network_hvp(vs)
        rows.append(torch.stack([(hv.double() * v.double()).sum() for hv, v in zip(products, vs)]).cpu())
    _synced(device)
    return torch.stack(rows), (time.perf_counter() - start) / probes


def hawq_scores(traces, layers) -> list[float]:
    return [float(t) / layer.params * hawq_v2.perturbation(layer.weight, hawq_v2.REF_BITS)
            for t, layer in zip(traces, layers)]


def measure(dataset: str, model_name: str, probes: int, device: str) -> dict:
    splits = load_splits(dataset)
    calib, labels = calibration_batch(splits, 16, 0, device)
    layers = extract_features(load_model(model_name, splits.spec).to(device), calib, labels)
    matrix, per_probe_s = probe_matrix(layers, probes, seed=1, device=device)
    print(f"  {dataset}/{model_name}: reference of {probes} probes, {per_probe_s * 1e3:.0f} ms each", flush=True)
    reference = matrix.mean(0).tolist()
    ref_scores = hawq_scores(reference, layers)
    half = probes // 2
    row = {"dataset": dataset, "model": model_name, "layers": len(layers), "device": device,
           "reference_probes": probes, "seconds_per_probe": per_probe_s,
           "split_half_spearman": rank_correlation(matrix[:half].mean(0).tolist(), matrix[half:].mean(0).tolist()),
           "reference_traces": reference, "joint": []}
    # Prefixes of an independent draw (seed 0, the proxy's own) against the reference (seed 1).
    own, _ = probe_matrix(layers, half, seed=0, device=device)
    m = 16
    while m <= half:
        traces = own[:m].mean(0).tolist()
        row["joint"].append({"probes": m, "seconds": m * per_probe_s,
                             "spearman_traces": rank_correlation(traces, reference),
                             "spearman_scores": rank_correlation(hawq_scores(traces, layers), ref_scores)})
        m *= 2
    _synced(device)
    start = time.perf_counter()
    old = [hawq_v2.block_trace(layer, torch.Generator().manual_seed(0)) for layer in layers]
    _synced(device)
    row["per_layer"] = {"seconds": time.perf_counter() - start, "spearman_traces": rank_correlation(old, reference),
                        "spearman_scores": rank_correlation(hawq_scores(old, layers), ref_scores), "traces": old}
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.hawq_reference", description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", default="cifar10-mini:resnet18,cifar10-mini:mobilenetv2,embedded:mobilenetv2")
    parser.add_argument("--probes", type=int, default=1024)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default="benchmarks/results/hawq_reference.json")
    args = parser.parse_args(argv)
    if args.probes < 32:
        parser.exit(2, "error: --probes must be at least 32\n")
    spec = importlib.util.spec_from_file_location("hawq_joint", JOINT)
    joint = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(joint)
    report = {"machine": machine_info(args.device), "proxy_probes": joint.PROBES, "rows": []}
    for pair in filter(None, args.pairs.split(",")):
        dataset, model_name = pair.split(":")
        row = measure(dataset, model_name, args.probes, args.device)
        report["rows"].append(row)
        joint = ", ".join(f"{j['probes']}: {j['spearman_traces']:+.3f}/{j['spearman_scores']:+.3f}" for j in row["joint"])
        print(f"{dataset}/{model_name}: {row['seconds_per_probe'] * 1e3:.0f} ms/probe, reference split-half "
              f"{row['split_half_spearman']:+.3f}; joint probes -> Spearman traces/scores {joint}; per-layer "
              f"{row['per_layer']['spearman_traces']:+.3f}/{row['per_layer']['spearman_scores']:+.3f} "
              f"in {row['per_layer']['seconds']:.1f} s", flush=True)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
