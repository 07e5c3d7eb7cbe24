"""What isolation costs: one proxy evaluated in-process vs through the sandbox,
on a cold slot (start a worker, load the task, evaluate) and a warm one.

Per backend: the cold first result, then ``--repeats`` rounds of: the proxy
in-process (``mpq.fitness.Evaluator``, loaded once: the reference), the same
proxy through the warm slot (with the sandbox's own share: everything but the
proxy's scoring and the fitness work), and a proxy that fails at once (the bare
round trip: fork, proxy load, IPC). Alternating keeps a busy machine fair.
Results are merged into ``--out`` under ``<model>_<dataset>_<device>``.

    python3 -m benchmarks.sandbox                                   # CPU, process backend
    python3 -m benchmarks.sandbox --backends process docker         # and Docker (engine started if need be)
    python3 -m benchmarks.sandbox --device cuda --eval-limit 1000   # on the GPU machine
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from benchmarks.quantizer import machine
from mpq.task import Task

PROJECT = Path(__file__).resolve().parent.parent
PROXY = PROJECT / "mpq" / "proxies" / "tap_formula.py"
FAILING = "def score(layer):\n    raise ValueError('fails at once')\n"
FITNESS_KEYS = ("score_s", "allocate_s", "quantize_s", "eval_s")


def sandboxed(evaluator, source: str, backend: str, repeats: int, docker_host: str | None) -> dict:
    """Cold first result, then warm evaluations alternating with the in-process ``evaluator``
    (so that a busy machine slows both alike)."""
    from sandbox.docker_backend import DockerSettings
    from sandbox.pool import EvaluatorPool

    settings = DockerSettings(docker_host=docker_host) if backend == "docker" else None
    start = time.perf_counter()
    with EvaluatorPool(evaluator.task, backend=backend, workers=1, docker=settings, log=print) as pool:
        cold = pool.evaluate(source)
        cold_s = time.perf_counter() - start
        if cold.status != "ok":
            raise SystemExit(f"{backend}: the proxy failed: {cold.reason}\n{cold.traceback_tail}")
        direct, warm, share, failing = [], [], [], []
        for _ in range(repeats):
            start = time.perf_counter()
            evaluator.evaluate(source)
            direct.append(time.perf_counter() - start)
            start = time.perf_counter()
            result = pool.evaluate(source)
            warm.append(time.perf_counter() - start)
            share.append(warm[-1] - sum(result.timings[k] for k in FITNESS_KEYS))
            start = time.perf_counter()
            pool.evaluate(FAILING)
            failing.append(time.perf_counter() - start)
    median = statistics.median
    return {"cold_first_result_s": cold_s, "in_process_median_s": median(direct), "warm_median_s": median(warm),
            "warm_overhead_median_s": median(w - d for w, d in zip(warm, direct)),
            "warm_sandbox_share_median_s": median(share), "warm_failing_proxy_median_s": median(failing),
            "in_process_s": direct, "warm_s": warm, "isolation_notes": cold.isolation_notes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mobilenetv2")
    parser.add_argument("--dataset", default="embedded")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--eval-limit", type=int, default=256, help="search-split images per evaluation")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--backends", nargs="+", default=["process"], choices=["process", "docker"])
    parser.add_argument("--out", type=Path, default=PROJECT / "benchmarks" / "results" / "sandbox.json")
    args = parser.parse_args()

    task = Task(model=args.model, dataset=args.dataset, data_root=args.data_root, device=args.device,
                eval_limit=args.eval_limit)
    source = PROXY.read_text()
    run = {"how_to_read": "sandbox_share: what the sandbox itself adds to a warm evaluation (fork, proxy load, "
                          "layer copies, IPC, validation); warm_overhead: end-to-end difference to in-process, which "
                          "on a busy machine is dominated by CPU contention between processes (machine.load_avg_1m)",
           "machine": machine(args.device), "task": task.to_dict(), "proxy": PROXY.stem, "repeats": args.repeats,
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    # in-process first: it also computes and caches the ground truth, which the slots then read
    from mpq.fitness import Evaluator

    start = time.perf_counter()
    evaluator = Evaluator(task)
    run["in_process_load_s"] = time.perf_counter() - start
    evaluator.evaluate(source)  # the quantizer memoizes per-layer weights: warm it like a slot's first result
    print(f"in-process: load {run['in_process_load_s']:.2f} s")
    engine = None
    for backend in args.backends:
        host = None
        if backend == "docker":
            from sandbox.local_engine import ensure_engine

            engine = ensure_engine()
            host = engine.docker_host
        run[backend] = f = sandboxed(evaluator, source, backend, args.repeats, host)
        print(f"{backend}: cold first result {f['cold_first_result_s']:.2f} s; warm {f['warm_median_s']:.3f} s vs "
              f"in-process {f['in_process_median_s']:.3f} s (overhead median {f['warm_overhead_median_s']:+.3f} s; "
              f"sandbox share {f['warm_sandbox_share_median_s']:.3f} s); failing proxy round trip "
              f"{f['warm_failing_proxy_median_s']:.3f} s")
    if engine is not None:
        engine.stop()
    report = json.loads(args.out.read_text()) if args.out.exists() else {"benchmark": "sandbox", "runs": {}}
    device_kind = "cuda" if args.device.startswith("cuda") else "cpu"
    report["runs"][f"{args.model}_{args.dataset}_{device_kind}"] = run
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
