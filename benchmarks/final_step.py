"""The run's final step on the default task, timed part by part (issue 13: it took 498 s of a run).

    python -m benchmarks.final_step [--out benchmarks/results/final_step.json]

Loads the default task (graph.final.TaskModel), takes SNIP's allocation at 3 average bits from the
committed leaderboard (what the searches' best proxies allocate), and times what the final step
measures: the export (quantize, ``quantized.pt``, ONNX and its onnxruntime check, the exported
model's test top-1), then ``test_accuracy`` as it is now (the RTN top-1 reused from the export, FP
from the checkpoint's record) against measuring both again (as before session 4). CPU only.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from graph.final import TaskModel
from mpq.ptq_final import FinalPTQ
from mpq.quant import QuantConfig, Quantizer, evaluate
from mpq.task import Task

RESULTS = Path(__file__).parent / "results"


def timed(fn):
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.final_step", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=RESULTS / "final_step.json")
    args = parser.parse_args(argv)
    board = json.loads((RESULTS / "leaderboard_mobilenetv2_cifar10-mini.json").read_text())
    bits = next(r["bits"] for r in board["rows"] if r["proxy"] == "snip" and r["budget"] == "3avg")
    task_model, load_s = timed(lambda: TaskModel(Task()))
    settings = FinalPTQ()
    with tempfile.TemporaryDirectory() as run_dir:
        export, export_s = timed(lambda: task_model.final_model(bits, settings, Path(run_dir), None))
    now, now_s = timed(lambda: task_model.test_accuracy(bits, export, settings))
    test = task_model.splits.test
    images, labels = test.normalized(), test.labels
    quantizer = Quantizer(task_model.model, task_model.calib_images, QuantConfig())
    rtn, rtn_s = timed(lambda: evaluate(quantizer.apply(bits), images, labels))
    fp, fp_s = timed(lambda: evaluate(quantizer.apply({}, act_quant=False), images, labels))
    report = {
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                    "torch_threads": torch.get_num_threads(), "load_avg": os.getloadavg()},
        "task": Task().to_dict(), "test_images": len(labels), "allocation": "snip@3avg",
        "seconds": {"load_task": load_s, "export": export_s, "test_accuracy_now": now_s,
                    "rtn_top1_measured_again": rtn_s, "fp_top1_measured_again": fp_s},
        "saved_s": rtn_s + fp_s - now_s,
        "top1": {"export_reused": now["test_acc"], "rtn_measured_again": rtn.top1,
                 "fp_recorded": now["fp_test_acc"], "fp_measured_again": fp.top1,
                 "onnxruntime": export.get("top1_onnxruntime"), "onnx_check_images": export.get("check_images")},
    }
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report["seconds"] | {"saved_s": report["saved_s"]}, indent=1))
    print(json.dumps(report["top1"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
