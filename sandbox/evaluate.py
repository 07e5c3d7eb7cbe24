"""``python -m sandbox.evaluate PROXY.py``: judge one proxy file through the sandbox.

For people testing their own proxies, and for our checks. Exit code 0 when the
proxy was judged (status ok), 1 when it was rejected or failed, 2 on bad input.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from mpq.task import Task
from sandbox.gate import GateRejection, check_source
from sandbox.pool import BACKEND_NAMES, EvaluatorPool, PoolError, interrupt_on_sigterm
from sandbox.protocol import Limits, failure, result_to_json


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m sandbox.evaluate", description=__doc__.splitlines()[0])
    p.add_argument("proxy", type=Path, help="a Python file defining score(layer) or score_all(layers)")
    p.add_argument("--model", default="mobilenetv2")
    p.add_argument("--dataset", default="cifar10-mini")
    p.add_argument("--data-root")
    p.add_argument("--weights", help="checkpoint path or 'torchvision' (default: the project's)")
    p.add_argument("--budget", default="3avg", help='"3avg" | "1.5MB" | "8x" (default: %(default)s)')
    p.add_argument("--eval-limit", type=int, help="cap on search-split images for acc_quant")
    p.add_argument("--device", default="cpu")
    p.add_argument("--fitness-ptq", default="rtn", help="acc_quant after round-to-nearest or a short block "
                   "reconstruction: rtn | reconstruct (default: %(default)s)")
    p.add_argument("--fitness-recon-iters", type=int, default=Task.fitness_recon_iters,
                   help="reconstruction steps per block (default: %(default)s)")
    p.add_argument("--fitness-calib", type=int, default=Task.fitness_calib,
                   help="training images the reconstruction uses (default: %(default)s)")
    p.add_argument("--sandbox", choices=BACKEND_NAMES, default="auto")
    p.add_argument("--gpus", help="GPU for the slot: an index or 'all' (with --device cuda)")
    p.add_argument("--timeout", type=float, default=Limits.timeout_s, help="seconds (default: %(default)s)")
    p.add_argument("--cache-dir", type=Path, help="ground-truth cache (default: $TAP_MPQ_CACHE or ~/.cache/tap-mpq)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    return p


def _task(args: argparse.Namespace):
    from mpq.budget import parse_budget
    from mpq.data import DATASET_NAMES
    from mpq.fitness_ptq import check_fitness_task
    from mpq.models import MODEL_NAMES

    if args.model not in MODEL_NAMES:
        raise ValueError(f"unknown model {args.model!r}; valid: {', '.join(MODEL_NAMES)}")
    if args.dataset not in DATASET_NAMES:
        raise ValueError(f"unknown dataset {args.dataset!r}; valid: {', '.join(DATASET_NAMES)}")
    parse_budget(args.budget)
    task = Task(model=args.model, dataset=args.dataset, data_root=args.data_root, weights=args.weights,
                budget=args.budget, eval_limit=args.eval_limit, device=args.device, fitness_ptq=args.fitness_ptq,
                fitness_recon_iters=args.fitness_recon_iters, fitness_calib=args.fitness_calib)
    check_fitness_task(task)
    return task


def _report(result) -> str:
    lines = [f"status: {result.status}"]
    if result.ok:
        lines += [f"phi: {result.phi:.4f}   rho_sens: {result.rho_sens:.4f}   acc_quant: {result.acc_quant:.4f}",
                  f"size: {result.size_mb:.3f} MB   avg bits: {result.avg_bits:.2f}",
                  "bits: " + " ".join(str(b) for b in result.bits.values())]
    else:
        lines.append(f"reason: {result.reason}")
        if result.traceback_tail:
            lines += ["traceback (last lines):", result.traceback_tail]
    lines.append("timings: " + ", ".join(f"{k} {v:.3f}s" for k, v in result.timings.items()))
    lines += ["isolation:"] + [f"  - {note}" for note in result.isolation_notes]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        source = args.proxy.read_text()
        task = _task(args)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    def progress(slot: int, done: int, total: int) -> None:
        print(f"\rground truth (first use of this task): {done}/{total} layer measurements",
              end="\n" if done == total else "", file=sys.stderr, flush=True)

    from mpq.fitness_ptq import extra_fitness_seconds

    limits = dataclasses.replace(Limits(), timeout_s=args.timeout,
                                 fitness_s=Limits.fitness_s + extra_fitness_seconds(task))
    try:
        check_source(source)  # a rejection needs no evaluator slot
    except GateRejection as exc:
        result = failure(args.proxy.stem, "rejected", str(exc))
        print(result_to_json(result) if args.json else _report(result))
        return 1
    interrupt_on_sigterm()
    try:
        with EvaluatorPool(task, backend=args.sandbox, workers=1, limits=limits, cache_dir=args.cache_dir,
                           gpus=[args.gpus] if args.gpus else None, progress=progress) as pool:
            result = pool.evaluate(source, request_id=args.proxy.stem)
    except PoolError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the pool has closed its slot
        print("interrupted", file=sys.stderr)
        return 130
    print(json.dumps(json.loads(result_to_json(result)), indent=2) if args.json else _report(result))
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
