"""What a fresh `make run` costs and yields: the default search, timed end to end (issue 13).

    python -m benchmarks.default_run [--run-id ID] [--resume] [--out benchmarks/results/default_run.json]
        [-- extra graph.run arguments, e.g. --seed-population human]

Runs ``python -m graph.run`` with the embedded defaults (the same as ``make run``,
without the TUI) as a child process, then reads the run's summary and its
database. Written: ``wall_s`` and its split into LLM (at least one LLM call in
flight), evaluation (at least one sandbox evaluation in flight), both at once,
and idle (neither: set-up, orchestration, the final step); per template the
share of candidates that ended with an evaluated fitness (after the critic's
repairs) and the first-pass share; the best fitness against the best human
proxy's on the same search split; the load average, since the two cores may be
shared. ``--resume`` continues an interrupted run (figures then cover the
resumed part only, and say so). ``--summarize`` writes what an unfinished run
has done so far (from its database alone: LLM calls, candidates, elapsed time)
without running anything.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sqlite3
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

from mpq.proxies import BASELINES

ROOT = Path(__file__).resolve().parent.parent
HUMAN_LEADERBOARD = ROOT / "benchmarks/results/leaderboard_mobilenetv2_cifar10-mini.json"


def union_seconds(spans: list[tuple[float, float]]) -> float:
    """Length of the union of [start, end] intervals."""
    total, end = 0.0, float("-inf")
    for a, b in sorted(spans):
        if b <= end:
            continue
        total += b - max(a, end)
        end = b
    return total


def busy_spans(db: Path) -> dict[str, list[tuple[float, float]]]:
    """Busy intervals from the run's database (``graph.run --json`` drops its in-memory spans):
    an LLM call ends at ``created`` after ``latency_s``; an evaluation at ``finished`` after ``wall_s``."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    llm = conn.execute("SELECT created - latency_s, created FROM llm_calls WHERE latency_s IS NOT NULL").fetchall()
    evaluation = conn.execute("SELECT finished - wall_s, finished FROM evaluations "
                              "WHERE finished IS NOT NULL AND wall_s > 0").fetchall()
    conn.close()
    return {"llm": llm, "eval": evaluation}


def candidate_outcomes(db: Path) -> dict:
    """Per template: candidates, how many ended with status ok, and how many on the first try."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    rows = conn.execute(
        "SELECT p.candidate, p.template, p.attempt, e.status, e.phi FROM proxies p "
        "LEFT JOIN evaluations e ON e.proxy_id = p.id").fetchall()
    planned = conn.execute("SELECT plan FROM generations").fetchall()
    conn.close()
    templates: dict[str, str] = {}
    for (plan,) in planned:
        for item in json.loads(plan):
            templates[item["id"]] = item["operator"]
    ok, first = set(), set()
    for candidate, template, attempt, status, _phi in rows:
        templates.setdefault(candidate, template)
        if status == "ok":
            ok.add(candidate)
            if attempt == 0:
                first.add(candidate)
    per: dict[str, dict] = defaultdict(lambda: {"candidates": 0, "ok": 0, "first_pass_ok": 0})
    for candidate, template in templates.items():
        per[template]["candidates"] += 1
        per[template]["ok"] += candidate in ok
        per[template]["first_pass_ok"] += candidate in first
    for row in per.values():
        row["valid_rate"] = row["ok"] / row["candidates"]
        row["first_pass_rate"] = row["first_pass_ok"] / row["candidates"]
    return dict(per)


def progress_of(db: Path) -> dict:
    """What a run (finished or not) has done, from its database alone."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    first, last, calls, latency, failed = conn.execute(
        "SELECT MIN(created), MAX(created), COUNT(*), AVG(latency_s), "
        "SUM(CASE WHEN error IS NOT NULL AND error != '' THEN 1 ELSE 0 END) FROM llm_calls").fetchone()
    evaluations, best = conn.execute(
        "SELECT COUNT(*), MAX(CASE WHEN status = 'ok' THEN phi END) FROM evaluations").fetchone()
    generations = conn.execute("SELECT COUNT(*) FROM generations").fetchone()[0]
    conn.close()
    return {"generations_done": generations, "llm_calls": calls, "llm_calls_failed": failed,
            "llm_latency_mean_s": latency, "evaluations": evaluations, "best_phi": best,
            "seconds_first_to_last_llm_call": (last - first) if first is not None else None}


def best_human_phi() -> dict | None:
    if not HUMAN_LEADERBOARD.is_file():
        return None
    report = json.loads(HUMAN_LEADERBOARD.read_text())
    rows = [r for r in report.get("rows", []) if r.get("budget") == "3avg" and r.get("phi") is not None
            and r.get("proxy") in BASELINES]  # the leaderboard also holds discovered proxies
    if not rows:
        return None
    best = max(rows, key=lambda r: r["phi"])
    return {"name": best.get("proxy"), "phi": best["phi"], "top1_search": best.get("top1_search"),
            "source": HUMAN_LEADERBOARD.name}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.default_run", description=__doc__.splitlines()[0])
    parser.add_argument("--run-id", default=time.strftime("default-%Y%m%d-%H%M%S"))
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--runs-dir", default="runs")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/default_run.json"))
    parser.add_argument("--summarize", action="store_true", help="only describe the run's progress so far")
    parser.add_argument("extra", nargs="*", help="more graph.run arguments (after --)")
    args = parser.parse_args(argv)
    if args.summarize:
        db = ROOT / args.runs_dir / args.run_id / "run.db"
        if not db.is_file():
            print(f"error: no run database at {db}", file=sys.stderr)
            return 2
        result = {"machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                              "load_avg_now": os.getloadavg()},
                  "run_id": args.run_id, "finished": False, "progress": progress_of(db),
                  "templates": candidate_outcomes(db), "best_human": best_human_phi()}
        Path(args.out).write_text(json.dumps(result, indent=1))
        print(json.dumps(result, indent=1))
        return 0
    command = [sys.executable, "-m", "graph.run", "--no-tui", "--json", "--runs-dir", args.runs_dir]
    command += ["--resume", args.run_id] if args.resume else ["--run-id", args.run_id]
    command += args.extra
    load_before = os.getloadavg()
    start, started_at = time.perf_counter(), time.time()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        print(done.stderr[-3000:], file=sys.stderr)
        print(f"error: graph.run exited with {done.returncode}", file=sys.stderr)
        return 2
    summary = json.loads(done.stdout[done.stdout.index("{"):])
    db = ROOT / args.runs_dir / args.run_id / "run.db"
    # this process's life only: a resumed run's earlier lives are not in ``wall`` (else idle < 0)
    spans = {k: [(max(a, started_at), b) for a, b in v if b >= started_at] for k, v in busy_spans(db).items()}
    llm, evaluation = spans["llm"], spans["eval"]
    llm_s, eval_s = union_seconds(llm), union_seconds(evaluation)
    busy_s = union_seconds(llm + evaluation)
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    best_phi = conn.execute("SELECT MAX(phi) FROM evaluations WHERE status = 'ok'").fetchone()[0]
    conn.close()
    result = {
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                    "load_avg_before": load_before, "load_avg_after": os.getloadavg()},
        "command": " ".join(command[1:]), "resumed": args.resume, "run_id": args.run_id,
        "wall_s": wall, "process_timings": summary.get("timings"),
        "split_s": {"llm": llm_s, "evaluation": eval_s, "llm_and_evaluation_overlap": llm_s + eval_s - busy_s,
                    "idle": wall - busy_s},
        "templates": candidate_outcomes(db), "best_phi": best_phi, "best_human": best_human_phi(),
        "final": {k: v for k, v in summary.get("final", {}).items()
                  if k in ("proxy", "test_acc", "fp_test_acc", "fp_test_acc_source", "avg_bits", "size_mb", "final_model")},
    }
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps({k: result[k] for k in ("wall_s", "split_s", "templates", "best_phi", "best_human")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
