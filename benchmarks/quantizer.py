"""Which quantizer settings to use: clipping (min-max, weight MSE, output MSE) x bias correction (x BN folding),
at uniform 3 and 4 weight bits, activations 8 bits, on the project's trained checkpoints.

Top-1 on the search split (val) per setting, the FP reference, the time to set a
quantizer up (clipping search, calibration) and to quantize + evaluate one
configuration, and the plain FP inference speed (images/s) on the same machine.
Results are merged into ``--out`` under ``<model>_<dataset>_<device>``.

    python3 -m benchmarks.quantizer                                   # embedded, CPU
    python3 -m benchmarks.quantizer --dataset cifar10 --data-root DIR --device cuda
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from mpq.data import calibration_batch, load_splits
from mpq.models import load_model
from mpq.quant import QuantConfig, Quantizer, evaluate


def machine(device: str) -> dict:
    info = {"platform": platform.platform(), "processor": platform.processor(), "cpu_count": os.cpu_count(),
            "load_avg_1m": os.getloadavg()[0],
            "torch": torch.__version__, "device": device}
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def fp_throughput(model: torch.nn.Module, images: torch.Tensor, device: str, batch_size: int) -> float:
    """Images per second of plain FP inference (the bound on evaluating anything)."""
    evaluate(model, images[:batch_size], torch.zeros(min(batch_size, len(images)), dtype=torch.long,
                                                      device=images.device), batch_size=batch_size)  # warm-up
    _sync(device)
    start = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(images), batch_size):
            model(images[i:i + batch_size])
    _sync(device)
    return len(images) / (time.perf_counter() - start)


def bench_model(name: str, args: argparse.Namespace) -> dict:
    splits = load_splits(args.dataset, args.data_root, seed=0)
    model = load_model(name, splits.spec, args.weights).to(args.device).eval()
    calib, _ = calibration_batch(splits, 16, seed=0, device=args.device)
    val = splits.val.head(args.eval_limit)
    images, labels = val.normalized(args.device), val.labels.to(args.device)
    fp = evaluate(model, images, labels, batch_size=args.batch_size)
    print(f"{name} on {args.dataset}: FP top-1 {fp.top1:.4f} ({len(images)} images)")
    rows = []
    folds = (True, False) if args.compare_folding else (True,)
    for fold, clipping, correction in itertools.product(folds, ("minmax", "mse", "output_mse"), (False, True)):
        config = QuantConfig(clipping=clipping, bias_correction=correction, fold_bn=fold, act_bits=8)
        _sync(args.device)
        start = time.perf_counter()
        quantizer = Quantizer(model, calib, config)
        for b in args.bits:  # the clipping search for every width, timed as set-up
            for layer in quantizer.names:
                quantizer.quantized(layer, b)
        _sync(args.device)
        setup_s = time.perf_counter() - start
        for b in args.bits:
            start = time.perf_counter()
            r = evaluate(quantizer.apply({n: b for n in quantizer.names}), images, labels, batch_size=args.batch_size)
            _sync(args.device)
            rows.append({"fold_bn": fold, "clipping": clipping, "bias_correction": correction, "weight_bits": b,
                         "act_bits": 8, "top1": r.top1, "loss": r.loss, "setup_s": setup_s,
                         "quantize_eval_s": time.perf_counter() - start})
            print(f"  fold={fold!s:<5} clip={clipping:<10} bias_corr={correction!s:<5} W{b}A8  "
                  f"top-1 {r.top1:.4f}  loss {r.loss:.4f}  ({rows[-1]['quantize_eval_s']:.2f} s)")
    throughput = fp_throughput(model, images, args.device, args.batch_size)
    print(f"  FP inference: {throughput:,.0f} images/s")
    return {"model": name, "dataset": args.dataset, "images": len(images), "fp_top1": fp.top1, "fp_loss": fp.loss,
            "fp_images_per_s": throughput, "rows": rows, "best": best_setting(rows)}


def best_setting(rows: list[dict]) -> dict:
    """The settings with the highest top-1 and with the lowest loss, each averaged over the weight widths
    (the loss is the steadier of the two on a few thousand images)."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["fold_bn"], r["clipping"], r["bias_correction"]), []).append(r)

    def describe(key: tuple) -> dict:
        fold, clipping, correction = key
        return {"fold_bn": fold, "clipping": clipping, "bias_correction": correction,
                "mean_top1": statistics.fmean(r["top1"] for r in groups[key]),
                "mean_loss": statistics.fmean(r["loss"] for r in groups[key])}

    by_top1 = max(groups, key=lambda k: statistics.fmean(r["top1"] for r in groups[k]))
    by_loss = min(groups, key=lambda k: statistics.fmean(r["loss"] for r in groups[k]))
    return {"by_top1": describe(by_top1), "by_loss": describe(by_loss)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["mobilenetv2"])
    parser.add_argument("--dataset", default="embedded")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--weights", default=None, help="checkpoint path (one model only)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--bits", type=int, nargs="+", default=[3, 4])
    parser.add_argument("--eval-limit", type=int, default=None, help="search-split images (default all)")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--compare-folding", action="store_true",
                        help="also quantize without BN folding (per-channel quantization is invariant to "
                             "the BN scale: the first embedded run found the same top-1 within 0.1 points)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/quantizer.json"))
    args = parser.parse_args()

    report = json.loads(args.out.read_text()) if args.out.exists() else {"benchmark": "quantizer", "runs": {}}
    device_kind = "cuda" if args.device.startswith("cuda") else "cpu"
    for name in args.models:
        result = bench_model(name, args)
        result.update(machine=machine(args.device), date=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                      default=dataclasses.asdict(QuantConfig()))
        report["runs"][f"{name}_{args.dataset}_{device_kind}"] = result
        print(f"  best: {result['best']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
