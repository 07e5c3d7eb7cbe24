"""What the reconstruct fitness (``--fitness-ptq reconstruct``, mpq.fitness_ptq) costs against RTN.

One candidate evaluation (the sandbox worker's path: ``Evaluator.fitness_of_scores``, scores
given, so the proxy's own time is left out) of one human allocation (default OMPQ, the
default task: mobilenetv2, cifar10-mini, 3 average bits) is timed

1. with round-to-nearest (the paper's fitness);
2. with a short block reconstruction at each ``--settings ITERS:CALIB`` (measured, fresh
   cache, so every reconstruction really runs);
3. at each ``--estimate ITERS:CALIB`` estimated from timed steps (``mpq.reconstruct.estimate_seconds``:
   setup + ITERS x one step of every block) plus the measured evaluation pass; the
   measured settings are estimated the same way, to show how far the estimate is off.

From these, a 5 x 8 search's evaluation time on this machine (``search_5x8``): at most one
reconstruction per candidate (40), and as many as the measured default search
(``--run-db``) needed (candidates judged, minus same-code reuse and same-allocation cache hits).
``--ranking ITERS:CALIB`` adds the 8 human baselines' acc_quant under both fitnesses on the
search split (all 8 reconstructed in one stacked pass, ``mpq.ptq_leaderboard``, as a generation
could be) and their Kendall tau / Spearman.

Results merge into ``--out`` (default benchmarks/results/recon_fitness.json) under the
device's key (``cpu`` / ``cuda``), so the CPU and GPU runs sit side by side.

    OMP_NUM_THREADS=1 nice -n 19 python -m benchmarks.recon_fitness --settings 2:32,10:64 --estimate 100:256,200:256,100:1024
    python -m benchmarks.recon_fitness --device cuda --settings 100:256,200:256,100:1024 \\
        --estimate 500:1024 --ranking 100:256 --time-budget-s 150                      # GPU machine
"""
from __future__ import annotations

import argparse
import json
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.quantizer import machine
from mpq.fitness import Evaluator, rank_correlation
from mpq.proxies import BASELINES, baseline_source
from mpq.ptq_leaderboard import Allocation, reconstruct_allocations
from mpq.reconstruct import ReconConfig, Variant, estimate_seconds
from mpq.task import Task

CANDIDATES = 40
"""A 5 x 8 search judges at most 40 candidates: at most 40 reconstructions (a repair that fails
never reaches the fitness; one that succeeds is that candidate's only reconstruction)."""
MEASURED_RUN = {"run": "default-measure-2 (benchmarks/results/default_run.json)", "evaluations": 39, "ok": 28,
                "ok_not_reused": 22, "distinct_allocations": 12}
"""The default 5 x 8 search measured here (runs/default-measure-2/run.db), used where the DB is absent."""


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def parse_settings(text: str) -> list[tuple[int, int]]:
    out = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        iters, _, calib = part.partition(":")
        try:
            out.append((int(iters), int(calib)))
        except ValueError:
            raise SystemExit(f"error: bad setting {part!r}: expected ITERS:CALIB, e.g. 100:256") from None
    return out


def run_counts(db_path: str | None) -> dict:
    """How many reconstructions the measured default search would have needed."""
    if not db_path or not Path(db_path).exists():
        return dict(MEASURED_RUN)
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    rows = db.execute("select status, reused_from, bits from evaluations").fetchall()
    fresh = [bits for status, reused, bits in rows if status == "ok" and reused is None]
    return {"run": db_path, "evaluations": len(rows), "ok": sum(r[0] == "ok" for r in rows),
            "ok_not_reused": len(fresh), "distinct_allocations": len(set(fresh))}


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed_fitness(evaluator: Evaluator, scores: list[float], repeats: int = 1) -> dict:
    """Seconds of one fitness evaluation of ``scores`` (the best of ``repeats``) and what it gave."""
    best = None
    for _ in range(repeats):
        sync(evaluator.task.device)
        start = time.perf_counter()
        result = evaluator.fitness_of_scores(scores)
        sync(evaluator.task.device)
        seconds = time.perf_counter() - start
        if best is None or seconds < best["seconds"]:
            best = {"seconds": seconds, "acc_quant": result.acc_quant, "phi": result.phi,
                    "timings": result.timings}
    return best


def recon_task(base: Task, iters: int, calib: int) -> Task:
    return Task(**{**base.to_dict(), "bits": base.bits, "fitness_ptq": "reconstruct",
                   "fitness_recon_iters": iters, "fitness_calib": calib})


def estimate(evaluator: Evaluator, bits: dict[str, int], iters: int, calib: int, eval_s: float) -> dict:
    """Setup + iters x step (timed steps, no optimisation) + the measured evaluation pass."""
    parts = evaluator.accuracy.parts
    config = ReconConfig(iters=iters, act_bits=evaluator.task.act_bits, seed=evaluator.task.seed)
    e = estimate_seconds(parts.model, [Variant(bits, parts.calibration(calib))], config)
    return {"iters": iters, "calib": calib, "setup_s": e["setup_s"], "step_s": e["step_s"],
            "eval_s": eval_s, "estimated_s": e["estimated_s"] + eval_s}


def ranking(evaluator: Evaluator, iters: int, calib: int) -> dict:
    """The 8 human baselines' acc_quant under RTN and after reconstruction (one stacked pass)."""
    rows = {}
    for name in BASELINES:
        scores, score_s = evaluator.proxy_scores(baseline_source(name))
        fit = evaluator.fitness_of_scores(scores)
        rows[name] = {"bits": fit.bits, "acc_rtn": fit.acc_quant, "score_s": score_s}
        log(f"  {name}: rtn {fit.acc_quant:.4f}")
    parts = evaluator.accuracy.parts
    config = ReconConfig(iters=iters, act_bits=evaluator.task.act_bits, seed=evaluator.task.seed)
    measured = reconstruct_allocations(parts.model, [Allocation(n, r["bits"]) for n, r in rows.items()],
                                       {0: parts.calibration(calib)}, evaluator.search_images,
                                       evaluator.search_labels, config)
    for name, r in rows.items():
        r["acc_reconstruct"] = measured["results"][name]["mean"]
        del r["bits"]
    rtn = [r["acc_rtn"] for r in rows.values()]
    recon = [r["acc_reconstruct"] for r in rows.values()]
    return {"iters": iters, "calib": calib, "rows": rows, "kendall_tau": rank_correlation(rtn, recon, "kendall"),
            "spearman": rank_correlation(rtn, recon), "stacked_seconds": measured["seconds"],
            "variants": measured["variants"], "seconds_per_variant": measured["seconds_per_variant"]}


def search_estimate(rtn_s: float, per_setting: dict[str, float], counts: dict) -> dict:
    """Evaluation seconds of a 5 x 8 search: RTN for every judged candidate; reconstruction at most
    once per candidate (40), or as often as the measured search would have needed."""
    out = {"rtn_s": counts["ok_not_reused"] * rtn_s, "rtn_upper_40_s": CANDIDATES * rtn_s, "counts": counts,
           "reconstruct": {}}
    for key, seconds in per_setting.items():
        # a repeated allocation is a cache hit (mpq.fitness_ptq): only distinct ones are reconstructed
        out["reconstruct"][key] = {"upper_40_s": CANDIDATES * seconds,
                                   "measured_run_s": counts["distinct_allocations"] * seconds}
    return out


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.recon_fitness", description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--model", default="mobilenetv2")
    p.add_argument("--dataset", default="cifar10-mini")
    p.add_argument("--budget", default="3avg")
    p.add_argument("--proxy", default="ompq", choices=list(BASELINES), help="the allocation timed")
    p.add_argument("--settings", default="2:32,10:64", help="measured ITERS:CALIB, comma-separated")
    p.add_argument("--estimate", default="100:256,200:256,100:1024", help="estimated ITERS:CALIB")
    p.add_argument("--ranking", help="ITERS:CALIB: the 8 baselines' RTN vs reconstructed acc_quant")
    p.add_argument("--run-db", default="runs/default-measure-2/run.db", help="a measured 5x8 search's run.db")
    p.add_argument("--time-budget-s", type=float, default=None, help="start nothing new after this many seconds")
    p.add_argument("--out", default="benchmarks/results/recon_fitness.json")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    torch.set_num_threads(torch.get_num_threads() if args.device.startswith("cuda") else 1)
    start = time.perf_counter()
    over = lambda: args.time_budget_s is not None and time.perf_counter() - start > args.time_budget_s  # noqa: E731
    cache = Path(tempfile.mkdtemp(prefix="recon-fitness-"))  # fresh: every reconstruction runs
    base = Task(model=args.model, dataset=args.dataset, budget=args.budget, device=args.device)
    rtn = Evaluator(base, cache_dir=cache)
    scores, _ = rtn.proxy_scores(baseline_source(args.proxy))
    result = {"machine": machine(args.device), "code": code_version(), "task": base.to_dict(), "proxy": args.proxy,
              "search_images": int(rtn.search_images.shape[0]), "rtn": timed_fitness(rtn, scores, repeats=3),
              "reconstruct": {}, "estimates": {}}
    bits = rtn.fitness_of_scores(scores).bits
    log(f"rtn: {result['rtn']['seconds']:.2f} s, acc_quant {result['rtn']['acc_quant']:.4f}")

    def save() -> None:  # after every part: a run cut short by its time limit keeps what it measured
        per_setting = {k: r["seconds"] for k, r in result["reconstruct"].items()}
        per_setting.update({f"{k} (estimated)": e["estimated_s"] for k, e in result["estimates"].items()
                            if k not in per_setting})
        result["search_5x8"] = search_estimate(result["rtn"]["seconds"], per_setting, run_counts(args.run_db))
        result["wall_s"] = time.perf_counter() - start
        write(Path(args.out), "cuda" if args.device.startswith("cuda") else "cpu", result)

    for iters, calib in filter(lambda _: not over(), parse_settings(args.settings)):
        r = result["reconstruct"][f"{iters}:{calib}"] = measure_setting(rtn, base, scores, bits, iters, calib, cache)
        save()
    eval_s = next((r["timings"]["eval_s"] for r in result["reconstruct"].values()), result["rtn"]["timings"]["eval_s"])
    for iters, calib in filter(lambda _: not over(), parse_settings(args.estimate)):
        result["estimates"][f"{iters}:{calib}"] = e = estimate(rtn, bits, iters, calib, eval_s)
        log(f"estimate {iters}:{calib}: {e['estimated_s']:.1f} s (step {e['step_s'] * 1e3:.1f} ms)")
    save()
    if args.ranking and not over():
        iters, calib = parse_settings(args.ranking)[0]
        r = result["ranking"] = ranking(rtn, iters, calib)
        single = result["reconstruct"].get(f"{iters}:{calib}")  # the same allocation alone vs stacked with 7 others
        r["timed_proxy_single_vs_stacked"] = [single and single["acc_quant"], r["rows"][args.proxy]["acc_reconstruct"]]
        log(f"ranking {iters}:{calib}: Kendall tau {r['kendall_tau']:.3f}")
        save()
    print(json.dumps({k: result[k] for k in ("rtn", "reconstruct", "estimates", "search_5x8")}, indent=1,
                     default=str))
    return 0


def measure_setting(rtn: Evaluator, base: Task, scores: list[float], bits: dict[str, int], iters: int, calib: int,
                    cache: Path) -> dict:
    """One evaluation with the reconstruct fitness at (iters, calib), and its estimate from timed steps."""
    r = timed_fitness(Evaluator(recon_task(base, iters, calib), cache_dir=cache), scores)
    r["estimate"] = estimate(rtn, bits, iters, calib, r["timings"]["eval_s"])
    log(f"reconstruct {iters}:{calib}: {r['seconds']:.2f} s (estimated {r['estimate']['estimated_s']:.2f}), "
        f"acc_quant {r['acc_quant']:.4f}")
    return r


def code_version() -> dict:
    """The commit, and whether the reconstruction's files differ from it (they are being tuned:
    acc_quant after reconstruction moves with them)."""
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], capture_output=True, text=True, timeout=10,
                                  cwd=Path(__file__).resolve().parent).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return "unknown"
    return {"commit": git("rev-parse", "--short", "HEAD") or "unknown",
            "reconstruct_modified": bool(git("status", "--short", "--", "../mpq/reconstruct.py", "../mpq/ptq_stack.py"))}


def summary(r: dict) -> dict:
    """One device's headline figures: seconds and acc_quant per evaluation, a 5 x 8 search in hours."""
    search = r.get("search_5x8", {})
    return {"machine": r["machine"].get("gpu") or f"{r['machine']['cpu_count']}-core CPU, load "
                                                  f"{r['machine']['load_avg_1m']:.1f}",
            "rtn": {"seconds": r["rtn"]["seconds"], "acc_quant": r["rtn"]["acc_quant"]},
            "reconstruct": {k: {"seconds": v["seconds"], "acc_quant": v["acc_quant"]}
                            for k, v in r["reconstruct"].items()},
            "estimated_seconds": {k: v["estimated_s"] for k, v in r["estimates"].items()},
            "search_5x8_hours": {"rtn": {"upper_40": CANDIDATES * r["rtn"]["seconds"] / 3600,
                                         "measured_run": search.get("rtn_s", 0) / 3600},
                                 **{k: {"upper_40": v["upper_40_s"] / 3600, "measured_run": v["measured_run_s"] / 3600}
                                    for k, v in search.get("reconstruct", {}).items()}},
            "ranking_kendall_tau": r.get("ranking", {}).get("kendall_tau")}


def write(path: Path, key: str, result: dict) -> None:
    """Merge this device's figures into the file (the other device's stay)."""
    data = json.loads(path.read_text()) if path.exists() else {}
    data[key] = result
    data["summary"] = {k: summary(v) for k, v in data.items() if k in ("cpu", "cuda")}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, default=str) + "\n")
    log(f"wrote {path} [{key}]")


if __name__ == "__main__":
    sys.exit(main())
