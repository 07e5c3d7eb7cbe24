"""Evaluator throughput against slot count: the Ray backend vs the process backend (issue 18).

Per backend and slot count: a warm pool (start-up not timed, reported apart),
then ``--evaluations`` real proxies submitted at once (the human baselines of
``mpq.proxies`` and two mutations of each: the square root and the square of
its scores' magnitude), timed from the first submit to the last result, in
evaluations per minute. Slots share the machine's GPUs evenly: Ray gives each
``gpus/slots`` of them (at most one), the process backend deals them round-robin. The Ray instance
is local and started once for the whole benchmark. Results are merged into
``--out`` under ``<label>_<model>_<dataset>_<device>``.

    python -m benchmarks.ray_scaling --device cuda --dataset cifar10 --data-root .data/cifar10 \\
        --eval-limit 1000 --slots 1 2 4 8 --label gpu              # on the GPU machine (16 cores, one GPU)
    python -m benchmarks.ray_scaling --dataset embedded --eval-limit 32 --slots 1 2 --evaluations 12 \\
        --label cpu-smoke --note "..."                              # a smoke run on the 2-core CPU
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import time
from pathlib import Path

from mpq.proxies import BASELINES
from mpq.task import Task

PROJECT = Path(__file__).resolve().parent.parent
MUTATIONS = {"sqrt": "abs(s) ** 0.5", "square": "abs(s) ** 2"}
"""Mechanical stand-ins for LLM mutations: same cost profile as their parent, other scores."""


def mutated(source: str, expression: str) -> str:
    """``source`` whose scores ``s`` become ``expression`` (works for ``score`` and ``score_all``)."""
    if "def score_all(" in source:
        return source + (f"\n\n_parent_score_all = score_all\n\n\ndef score_all(layers):\n"
                         f"    return [{expression} for s in _parent_score_all(layers)]\n")
    return source + (f"\n\n_parent_score = score\n\n\ndef score(layer):\n"
                     f"    s = _parent_score(layer)\n    return {expression}\n")


def proxies(exclude: tuple[str, ...] = ()) -> list[tuple[str, str]]:
    """(name, source) of every baseline but ``exclude`` and its mutations."""
    found = []
    for name, path in BASELINES.items():
        if name in exclude:
            continue
        source = path.read_text()
        found.append((name, source))
        found += [(f"{name}~{m}", mutated(source, e)) for m, e in MUTATIONS.items()]
    return found


def pool_for(task: Task, backend: str, slots: int, limits):
    import torch

    from sandbox.pool import EvaluatorPool
    from sandbox.ray_backend import RaySettings

    gpus = torch.cuda.device_count() if task.device.startswith("cuda") else 0
    if backend == "ray":
        # each slot gets its share of the cores and GPUs, as a process slot does (pool.slot_specs); the
        # benchmark started the Ray instance itself, so the pool would not share them out on its own
        even = RaySettings()
        settings = RaySettings(cpus_per_slot=even.cpus_for(slots, float(os.cpu_count() or 1)),
                               gpus_per_slot=even.gpus_for(task.to_dict(), slots, float(gpus)))
        return EvaluatorPool(task, backend="ray", workers=slots, limits=limits, settings=settings, log=print)
    # the pool deals the GPUs round-robin over its slots
    return EvaluatorPool(task, backend=backend, workers=slots, limits=limits,
                         gpus=[str(g) for g in range(gpus)] or None, log=print)


def measure(task: Task, backend: str, slots: int, evaluations: int, limits, exclude: tuple[str, ...] = ()) -> dict:
    """One warm pool: start-up, then ``evaluations`` proxies timed to the last result."""
    work = proxies(exclude)
    start = time.perf_counter()
    with pool_for(task, backend, slots, limits) as pool:
        if not pool.wait_ready(limits.startup_s):
            raise SystemExit(f"{backend} x{slots}: slots not ready within {limits.startup_s:g} s")
        ready_s = time.perf_counter() - start
        start = time.perf_counter()
        for i in range(evaluations):
            name, source = work[i % len(work)]
            pool.submit(pool.request(source, f"{i:03d}-{name}"))
        results = list(pool.results())
        elapsed = time.perf_counter() - start
        restarts = pool.restarts
    statuses = collections.Counter(r.status for r in results)
    failed = sorted({r.reason for r in results if r.status != "ok"})[:5]
    figure = {"slots": slots, "evaluations": len(results), "elapsed_s": elapsed,
              "evaluations_per_minute": 60.0 * len(results) / elapsed, "warm_up_s": ready_s,
              "statuses": dict(statuses), "restarts": restarts, "failure_reasons": failed,
              "median_eval_s": sorted(r.timings.get("roundtrip_s", 0.0) for r in results)[len(results) // 2],
              # where the time goes: a few expensive proxies (HAWQ-V2's per-layer Hutchinson traces) bound
              # how far slots can help, so each evaluation's round trip is kept
              "roundtrip_s": {r.id: round(r.timings.get("roundtrip_s", 0.0), 3) for r in results}}
    print(f"{backend:8s} {slots} slot(s): {figure['evaluations_per_minute']:7.2f} evaluations/min "
          f"({len(results)} in {elapsed:.1f} s, warm-up {ready_s:.1f} s, {dict(statuses)}); slowest: "
          + ", ".join(f"{k} {v:.1f} s" for k, v in sorted(figure["roundtrip_s"].items(), key=lambda kv: -kv[1])[:4]),
          flush=True)
    return figure


def write(args, task: Task, cluster: dict, figures: dict[str, list[dict]]) -> None:
    """Merge this run's figures so far into ``args.out`` under its key."""
    from benchmarks.quantizer import machine

    run = {"machine": {**machine(args.device), "label": args.label, "ray_cluster": cluster},
           "note": args.note, "task": task.to_dict(), "evaluations": args.evaluations, "figures": figures,
           "speedup_vs_1_slot": {b: {str(f["slots"]): f["evaluations_per_minute"] / rows[0]["evaluations_per_minute"]
                                     for f in rows} for b, rows in figures.items()},
           "how_to_read": "evaluations_per_minute: proxies judged per minute of a warm pool, all submitted at once; "
                          "warm-up (Ray actors placed, task loaded, ground truth) is reported apart, not timed in."}
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    results[f"{args.label}_{args.model}_{args.dataset}_{args.device}"] = run
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mobilenetv2")
    parser.add_argument("--dataset", default="cifar10")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--eval-limit", type=int, default=1000, help="search-split images per evaluation")
    parser.add_argument("--slots", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--evaluations", type=int, default=40)
    parser.add_argument("--backends", nargs="+", default=["ray", "process"], choices=["ray", "process"])
    parser.add_argument("--exclude", nargs="*", default=[], choices=sorted(BASELINES),
                        help="baselines left out of the work (hawq_v2: three of its evaluations bound the makespan)")
    parser.add_argument("--label", default="gpu", help="names the machine in the results key (gpu, cpu-smoke)")
    parser.add_argument("--note", default="", help="what the figures are (and are not), kept with them")
    parser.add_argument("--out", type=Path, default=PROJECT / "benchmarks" / "results" / "ray.json")
    args = parser.parse_args()

    import ray

    from sandbox.protocol import Limits

    task = Task(model=args.model, dataset=args.dataset, data_root=args.data_root, device=args.device,
                eval_limit=args.eval_limit)
    limits = Limits(timeout_s=600, startup_s=240)  # a slot that cannot start says so inside a 10-minute device call
    ray.init(address="local", include_dashboard=False, log_to_driver=False)  # once: every Ray pool joins it
    figures: dict[str, list[dict]] = {}
    try:
        cluster = ray.cluster_resources()
        # slot counts outer, backends inner, the file rewritten after each: a call cut short by its
        # time limit still leaves every pair of figures it finished
        for slots in args.slots:
            for backend in args.backends:
                figures.setdefault(backend, []).append(measure(task, backend, slots, args.evaluations, limits,
                                                                    tuple(args.exclude)))
                write(args, task, cluster, figures)
    finally:
        ray.shutdown()
    print(f"written to {os.path.relpath(args.out)}")


if __name__ == "__main__":
    main()
