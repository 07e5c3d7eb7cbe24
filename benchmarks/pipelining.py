"""Pipelining: is a draft evaluated while the LLM writes the next one? (issue 13, item 4)

    python -m benchmarks.pipelining --label after                       # this checkout
    git archive REV | tar -x -C /tmp/before
    python -m benchmarks.pipelining --label before --source /tmp/before  # an older graph/
    python -m benchmarks.pipelining --label real_after --sandbox process --llm-s 20   # real evaluations

Runs ``graph.run.execute`` on MobileNetV2 (``--dataset``, default embedded: the
final test is cheap, and setup and final are not counted) with the
demo scripted LLM (tests/data/scripted_llm.json, critic repairs included)
slowed to a fixed ``--llm-s`` per call and serialised like the one-request
local server, and an evaluator that takes a fixed ``--eval-s`` per evaluation
on ``--workers`` slots instead of the sandbox. Fixed delays isolate what the
graph's wiring does with the time; the real stages on this machine are
~40-100 s per local-LLM draft and ~8-11 s per sandbox evaluation
(benchmarks/results/local_llm.json, search_cpu.json). Figures go to
``benchmarks/results/pipelining.json`` under ``--label``, with the machine.
``--sandbox process`` evaluates in the real sandbox instead (``--eval-s`` is
then ignored; ``serial_s`` uses the measured evaluation time).
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "pipelining.json"
SCRIPT = ROOT / "tests" / "data" / "scripted_llm.json"


def slow_llm(seconds: float) -> None:
    """Every scripted call takes ``seconds``, one call at a time (like the local server's one slot)."""
    from agents.scripted import ScriptedChatModel

    generate, lock = ScriptedChatModel._generate, threading.Lock()

    def _generate(self, messages, stop=None, run_manager=None, **kwargs):  # langchain passes run_manager by name
        with lock:
            time.sleep(seconds)
            return generate(self, messages, stop=stop, run_manager=run_manager, **kwargs)

    ScriptedChatModel._generate = _generate


@contextlib.contextmanager
def timed_evaluator(seconds: float, workers: int):
    """(proxy id, source) -> an ``ok`` result after ``seconds``; ``workers`` at once."""
    slots = threading.Semaphore(workers)

    def evaluate(proxy_id: str, source: str) -> dict:
        with slots:
            time.sleep(seconds)
        phi = int(hashlib.sha256(source.encode()).hexdigest()[:6], 16) / 0xFFFFFF
        return {"proxy_id": proxy_id, "status": "ok", "phi": phi, "rho_sens": phi, "acc_quant": phi,
                "avg_bits": 3.0, "size_mb": 1.0, "bits": {}, "timings": {"roundtrip_s": seconds}}
    yield evaluate


def union(spans: list[tuple[float, float]]) -> list[tuple[float, float]]:
    merged: list[list[float]] = []
    for a, b in sorted(spans):
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    return [(a, b) for a, b in merged]


def overlap(x: list[tuple[float, float]], y: list[tuple[float, float]]) -> float:
    return sum(max(0.0, min(b, d) - max(a, c)) for a, b in union(x) for c, d in union(y))


def measure(args: argparse.Namespace) -> dict:
    try:
        from graph.cli import parse_run_args
    except ImportError:  # checkouts before the config split
        from graph.config import parse_run_args
    from graph.run import execute

    slow_llm(args.llm_s)
    with tempfile.TemporaryDirectory(prefix="tap-pipelining-") as runs:
        sandbox = ["--sandbox", args.sandbox] + (["--eval-limit", str(args.eval_limit)] if args.eval_limit else [])
        config = parse_run_args(["--llm", f"scripted:{SCRIPT}", "--population", str(args.population),
                                 "--generations", str(args.generations), "--workers", str(args.workers),
                                 "--runs-dir", runs, "--run-id", "bench", "--no-tui", "--dataset", args.dataset,
                                 *(sandbox if args.sandbox else [])])
        result = execute(config, evaluator=None if args.sandbox else timed_evaluator(args.eval_s, args.workers))
    t, spans = result["timings"], result["spans"]
    search_s = t["wall_s"] - t["setup_s"] - t["final_s"]
    llm, ev = spans.get("llm", []), spans.get("eval", [])
    eval_s = sum(b - a for a, b in ev)  # slot time summed over evaluations
    return {"search_s": round(search_s, 2), "wall_s": round(t["wall_s"], 2), "llm_calls": len(llm),
            "evaluations": len(ev), "llm_busy_s": round(sum(b - a for a, b in union(llm)), 2),
            "eval_busy_s": round(sum(b - a for a, b in union(ev)), 2),
            "overlap_s": round(overlap(llm, ev), 2),
            "serial_s": round(len(llm) * args.llm_s + eval_s / args.workers, 2)}


def machine() -> dict:
    return {"platform": platform.platform(), "cpu_count": os.cpu_count(), "python": platform.python_version(),
            "load_average": [round(x, 2) for x in os.getloadavg()]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.pipelining", description=__doc__.split("\n")[0])
    p.add_argument("--label", required=True, help="key in the results file, e.g. before / after")
    p.add_argument("--source", help="import graph/ and agents/ from this checkout (default: this one)")
    p.add_argument("--llm-s", type=float, default=4.0, help="seconds per LLM call (default: %(default)s)")
    p.add_argument("--eval-s", type=float, default=2.0, help="seconds per evaluation (default: %(default)s)")
    p.add_argument("--population", type=int, default=4)
    p.add_argument("--generations", type=int, default=2)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--dataset", default="embedded", help="default: %(default)s")
    p.add_argument("--sandbox", help="real evaluations in this sandbox backend (graph.run checks the name)")
    p.add_argument("--eval-limit", type=int, help="with --sandbox: search-split images per evaluation")
    args = p.parse_args(argv)
    if args.source:
        sys.path.insert(0, str(Path(args.source).resolve()))
    figures = measure(args)
    keys = ("llm_s", "eval_s", "population", "generations", "workers", "sandbox", "eval_limit", "dataset")
    row = {"settings": {k: getattr(args, k) for k in keys},
           "source": args.source or "this checkout", **figures, "machine": machine()}
    print(json.dumps(row, indent=1))
    data = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {"benchmark": "pipelining", "runs": {}}
    data["doc"] = __doc__.split("\n\n")[2].replace("\n", " ")
    data["runs"][args.label] = row
    RESULTS.write_text(json.dumps(data, indent=1) + "\n")
    print(f"-> {RESULTS}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
