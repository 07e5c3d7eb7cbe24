"""Collect the committed checkpoints' recorded figures into base_models.json.

The figures are written by ``python -m mpq.train`` into each checkpoint's
metadata (measured after the fp16 round trip, on the held-out test split);
this script only gathers them, with the targets of issue "substrate I" (and of
issue 16 for ResNet50 and the transformers). Checkpoints too large to commit
(their runs are in ``benchmarks/gpu_base_models.sh``) are listed from the
final JSON line of their training log in ``results/train_logs/``, with
``checkpoint`` None.

    python -m benchmarks.base_models
"""
from __future__ import annotations

import json
from pathlib import Path

from mpq.models import CHECKPOINT_DIR, read_checkpoint

RESULTS = Path(__file__).parent / "results"
TARGETS = {("resnet18", "cifar10"): 0.94, ("mobilenetv2", "cifar10"): 0.92,
           ("mobilenetv2", "embedded"): 0.97, ("resnet18", "embedded"): 0.97,
           ("resnet50", "cifar10"): 0.93, ("vit", "cifar10"): 0.85, ("swin", "cifar10"): 0.85}
TRAIN_LOGS = RESULTS / "train_logs"


def collect() -> list[dict]:
    rows = []
    for path in sorted(CHECKPOINT_DIR.glob("*.pt")):
        meta = read_checkpoint(path)["meta"]
        target = TARGETS.get((meta["model"], meta["dataset"]))
        rows.append({
            "model": meta["model"], "dataset": meta["dataset"], "top1": meta["top1"],
            "top1_val": meta["top1_val"], "top1_test_subset": meta["top1_test_subset"],
            "params": meta["params"], "epochs": meta["epochs"], "train_seconds": meta["train_seconds"],
            "device": meta["device"], "torch": meta["torch"], "checkpoint": path.name,
            "checkpoint_mb": round(path.stat().st_size / 2**20, 1),
            "target_top1": target, "meets_target": None if target is None else meta["top1"] >= target,
            "recipe": {k: v for k, v in meta["recipe"].items() if k not in ("out", "data_root", "device")},
        })
    committed = {(r["model"], r["dataset"]) for r in rows}
    return rows + _uncommitted_rows(committed)


def _uncommitted_rows(committed: set[tuple[str, str]]) -> list[dict]:
    """Rows for trained but uncommitted checkpoints: their metadata, kept beside the training log
    as ``<model>_<dataset>.meta.json`` (or, for older runs, the summary line the log ends with)."""
    rows = []
    for (model, dataset), target in sorted(TARGETS.items()):
        log = TRAIN_LOGS / f"{model}_{dataset}.log"
        if (model, dataset) in committed or not log.is_file():
            continue
        meta_file = log.with_suffix(".meta.json")
        meta = json.loads(meta_file.read_text()) if meta_file.is_file() else _summary_line(log)
        rows.append({"model": model, "dataset": dataset, "top1": meta["top1"],
                     "top1_val": meta["top1_val"], "epochs": meta["epochs"],
                     "train_seconds": meta["train_seconds"],
                     "device": meta.get("device", "NVIDIA H100 80GB HBM3"),
                     "gpus": meta.get("processes", 1), "checkpoint": None, "log": f"train_logs/{log.name}",
                     "target_top1": target, "meets_target": meta["top1"] >= target})
    return rows


def _summary_line(log: Path) -> dict:
    """The last JSON line of a training log (torchrun may print warnings after it)."""
    return next(json.loads(line) for line in reversed(log.read_text().splitlines()) if line.startswith("{"))


def main() -> None:
    rows = collect()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "base_models.json").write_text(json.dumps(rows, indent=2) + "\n")
    print(f"{'model':12} {'dataset':9} {'top1':>6} {'target':>6} {'epochs':>6} {'train s':>8}  device")
    for r in rows:
        print(f"{r['model']:12} {r['dataset']:9} {r['top1']:6.4f} {r['target_top1'] or 0:6.2f} "
              f"{r['epochs']:6d} {r['train_seconds']:8.1f}  {r['device']}")


if __name__ == "__main__":
    main()
