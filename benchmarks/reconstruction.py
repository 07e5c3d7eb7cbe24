"""Top-1 after block reconstruction (BRECQ / AdaRound, mpq.reconstruct) for the human baselines' allocations.

One call produces both figures of issue 15 per model:

1. the leaderboard (``mpq.leaderboard.run``: rho_sens, round-to-nearest top-1 with the
   search's 16 images, ...) at ``--budgets`` (default 2.5, 3 and 4 average bits);
2. every distinct allocation of it, plus uniform 2-bit with the first and last layer at
   8 bits, reconstructed (``--calib`` images, ``--iters`` steps per block) for calibration
   seed 0, and for seeds ``--seeds`` at ``--seed-budgets`` (and the W2 model), all stacked
   into one pass; top-1 on the test split;
3. optionally (``--single``) one allocation reconstructed alone, to time what one final
   model costs.

Writes, as it goes, ``<out>/leaderboard_<model>_<dataset>.json`` (the leaderboard rows
with ``top1_test_reconstruct``, ``_mean``, ``_std`` beside ``top1_test``) and
``<out>/reconstruction.json`` (tables in ``reconstruction_summary.md``; machine, settings, per allocation the seeds' top-1,
mean and spread, seconds, and the issue's targets checked).

    python -m benchmarks.reconstruction --data-root .data/cifar10 --device cuda --out benchmarks/results
    python -m benchmarks.reconstruction --dataset embedded --models mobilenetv2 --iters 20 --calib 64 \\
        --test-limit 200 --eval-limit 200 --config-samples 4 --out /tmp/r     # CPU smoke test
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

from benchmarks.quantizer import machine
from mpq.data import calibration_batch, load_splits
from mpq.leaderboard import LeaderboardConfig
from mpq.leaderboard import run as run_leaderboard
from mpq.leaderboard_format import write_report
from mpq.models import load_model
from mpq.proxies import BASELINES
from mpq.ptq_final import with_first_last
from mpq.ptq_leaderboard import Allocation, attach_to_rows, reconstruct_allocations
from mpq.quant import quantizable_layers
from mpq.reconstruct import ReconConfig, Variant, estimate_seconds, reconstruct

W2_LABEL = "uniform-w2-fl8"
# issue 15's targets: (model, what, threshold top-1)
TARGETS = {"mobilenetv2": {"every@3avg": 0.890, "best@2.5avg": 0.890, W2_LABEL: 0.80},
           "resnet18": {"best@3avg": 0.903, W2_LABEL: 0.87}}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def allocations_of(report: dict, names: list[str], seeds: tuple[int, ...], seed_budgets: set[str]) -> list[Allocation]:
    """One Allocation per leaderboard row (``proxy@budget``) and the uniform W2 first/last 8 model."""
    out = [Allocation(f"{row['proxy']}@{row['budget']}", row["bits"],
                      seeds if row["budget"] in seed_budgets else (0,))
           for row in report["rows"] if "error" not in row]
    out.append(Allocation(W2_LABEL, with_first_last({n: 2 for n in names}, names), seeds))
    return out


def check_targets(model: str, results: dict) -> dict:
    checks = {}
    for what, threshold in TARGETS.get(model, {}).items():
        if what.startswith(("every@", "best@")):
            rule, budget = what.split("@")
            means = [r["mean"] for label, r in results.items() if label.endswith(f"@{budget}")]
            if not means:
                continue
            value = min(means) if rule == "every" else max(means)
        elif what in results:
            value = results[what]["mean"]
        else:
            continue
        checks[what] = {"top1": value, "target": threshold, "met": value >= threshold}
    return checks


def bench_model(model_name: str, args, recon: ReconConfig, out: Path, summary: dict) -> None:
    device = args.device
    baselines = tuple(b for b in BASELINES if b not in args.skip)
    cfg = LeaderboardConfig(model=model_name, dataset=args.dataset, data_root=args.data_root,
                            budgets=tuple(args.budgets.split(",")), baselines=baselines, device=device,
                            eval_limit=args.eval_limit, test_limit=args.test_limit,
                            config_samples=args.config_samples)
    start = time.perf_counter()
    lb_path = out / f"leaderboard_{model_name}_{args.dataset}.json"
    reuse = _reused(args.reuse, lb_path.name)
    if reuse is not None:  # round-to-nearest rows measured before; only the asked budgets, no old recon figures
        report = json.loads(reuse.read_text())
        report["rows"] = [_without_reconstruct(r) for r in report["rows"] if r["budget"] in cfg.budgets]
        report.pop("reconstruct", None)
        log(f"{model_name}: round-to-nearest rows reused from {reuse}")
    else:
        report = run_leaderboard(cfg)
    leaderboard_s = time.perf_counter() - start
    log(f"{model_name}: leaderboard (round-to-nearest) {leaderboard_s:.1f} s")
    write_report(report, lb_path)

    splits = load_splits(args.dataset, args.data_root)
    model = load_model(model_name, splits.spec).to(device)
    calib = {s: calibration_batch(splits, args.calib, s, device)[0] for s in args.seed_list}
    test = splits.test.head(args.test_limit)
    test_x, test_y = test.normalized(device), test.labels.to(device)
    names = [n for n, _ in quantizable_layers(model, calib[0][:1])]
    allocations = allocations_of(report, names, args.seed_list, set(args.seed_budgets.split(",")))
    clock = time.perf_counter()
    measured = reconstruct_allocations(model, allocations, calib, test_x, test_y, recon, progress=lambda i, n, b: log(
        f"  block {i}/{n} {b}: {time.perf_counter() - clock:.1f} s"))
    log(f"{model_name}: {measured['variants']} variants reconstructed in {measured['seconds']:.1f} s")
    results = measured["results"]
    attach_to_rows(report["rows"], results, lambda row: f"{row['proxy']}@{row['budget']}")
    report["reconstruct"] = {"config": recon.to_dict(), "iters": measured["iters"], "calib_images": args.calib,
                             "seeds": list(args.seed_list), "seconds": measured["seconds"],
                             "variants": measured["variants"], "machine": machine(device)}
    write_report(report, lb_path)

    entry = {"fp_top1": report["reference"][0]["top1_test"], "test_images": len(test_y),
             "leaderboard_s": leaderboard_s, "reconstruct_s": measured["seconds"],
             "variants": measured["variants"], "seconds_per_variant": measured["seconds_per_variant"],
             "iters": measured["iters"], "step_s_all_variants": measured["step_s"],
             "blocks": measured["blocks"], "blocks_optimized": measured["blocks_optimized"],
             "allocations": {a.label: {**results[a.label], "avg_bits": _avg_bits(report, a)} for a in allocations},
             "rtn_top1": {f"{r['proxy']}@{r['budget']}": r.get("top1_test") for r in report["rows"]}}
    entry["targets"] = check_targets(model_name, results)
    summary["models"][model_name] = entry
    _write(out / "reconstruction.json", summary)
    if args.single:  # one allocation alone, as graph.run's final step reconstructs it
        alone = next(a for a in allocations if a.label == args.single)
        single_cfg = dataclasses.replace(recon, iters=measured["iters"], time_budget_s=None)
        if args.single_run:
            start = time.perf_counter()
            reconstruct(model, alone.bits, calib[0], single_cfg)
            _sync(device)
            entry["single"] = {"allocation": args.single, "iters": single_cfg.iters,
                               "seconds": time.perf_counter() - start}
        else:
            entry["single"] = {"allocation": args.single,
                               **estimate_seconds(model, [Variant(alone.bits, calib[0])], single_cfg)}
        log(f"{model_name}: one allocation alone: {entry['single']}")
        _write(out / "reconstruction.json", summary)


def _reused(folder: str | None, name: str) -> Path | None:
    """``folder/name`` or ``folder/reconstruction_name`` (as committed in benchmarks/results), if there."""
    if not folder:
        return None
    for candidate in (Path(folder) / name, Path(folder) / f"reconstruction_{name}"):
        if candidate.is_file():
            return candidate
    return None


def _without_reconstruct(row: dict) -> dict:
    return {k: v for k, v in row.items() if "reconstruct" not in k}


def _avg_bits(report: dict, allocation: Allocation) -> float | None:
    for row in report["rows"]:
        if f"{row['proxy']}@{row['budget']}" == allocation.label:
            return row.get("avg_bits")
    return None


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _write(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, default=str) + "\n")
    if path.name == "reconstruction.json":
        path.with_name("reconstruction_summary.md").write_text(summary_markdown(data))


def summary_markdown(summary: dict) -> str:
    """reconstruction.json as tables: per allocation RTN and reconstructed top-1 (mean +- std over seeds)."""
    r = summary["reconstruction"]
    lines = [f"# Reconstruction figures ({summary['machine'].get('gpu') or summary['machine'].get('processor')}, "
             f"{summary['dataset']}, {summary['calib_images']} calibration images, seeds {summary['seeds']})", "",
             f"lr {r['lr']}, lambda {r['reg_weight']}, batch {r['batch_size']}, clipping {r['clipping']}, "
             f"A{summary['act_bits']}", ""]
    for model, e in summary["models"].items():
        lines += [f"## {model} (FP {100 * e['fp_top1']:.2f}%; {e['variants']} variants, {e['iters']} steps per "
                  f"block, {e['reconstruct_s']:.0f} s)", "", "| allocation | avg bits | RTN | recon |", "|---|---|---|---|"]
        for label, a in e["allocations"].items():
            rtn = e["rtn_top1"].get(label)
            spread = f" ± {100 * a['std']:.1f} ({len(a['seeds'])} seeds)" if len(a["seeds"]) > 1 else ""
            bits = f"{a['avg_bits']:.2f}" if a.get("avg_bits") else ""
            lines.append(f"| {label} | {bits} | {'' if rtn is None else f'{100 * rtn:.1f}'} | "
                         f"{100 * a['mean']:.1f}{spread} |")
        lines += [""] + [f"- target {what}: {100 * t['top1']:.1f}% vs {100 * t['target']:.1f}% "
                         f"({'met' if t['met'] else 'NOT met'})" for what, t in e.get("targets", {}).items()] + [""]
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.reconstruction", description=__doc__.splitlines()[0])
    p.add_argument("--models", default="mobilenetv2,resnet18")
    p.add_argument("--dataset", default="cifar10")
    p.add_argument("--data-root")
    p.add_argument("--device", default="cpu")
    p.add_argument("--budgets", default="2.5avg,3avg,4avg")
    p.add_argument("--seed-budgets", default="2.5avg,3avg", help="budgets reconstructed with every --seeds")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--calib", type=int, default=1024)
    p.add_argument("--iters", type=int, default=ReconConfig.iters)
    p.add_argument("--batch-size", type=int, default=ReconConfig.batch_size)
    p.add_argument("--lr", type=float, default=ReconConfig.lr)
    p.add_argument("--reg-weight", type=float, default=ReconConfig.reg_weight)
    p.add_argument("--skip", default="", help="baselines left out (e.g. hawq_v2 while it is slow)")
    p.add_argument("--single", default="", help="also time this allocation alone, e.g. uniform@3avg "
                   "(estimated from timed steps; --single-run runs it)")
    p.add_argument("--single-run", action="store_true")
    p.add_argument("--time-budget", type=float, help="seconds of optimisation per model: fewer than --iters "
                   "steps (at least --min-iters) if the timed steps say it would take longer")
    p.add_argument("--min-iters", type=int, default=ReconConfig.min_iters)
    p.add_argument("--eval-limit", type=int)
    p.add_argument("--test-limit", type=int)
    p.add_argument("--config-samples", type=int, default=64)
    p.add_argument("--reuse", help="folder with [reconstruction_]leaderboard_<model>_<dataset>.json to reuse instead "
                   "of running the leaderboard (its rows at --budgets, without their reconstruction figures)")
    p.add_argument("--out", default="benchmarks/results")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.seed_list = tuple(int(s) for s in args.seeds.split(","))
    args.skip = tuple(s for s in args.skip.split(",") if s)
    if args.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    recon = ReconConfig(iters=args.iters, batch_size=args.batch_size, lr=args.lr, reg_weight=args.reg_weight,
                        time_budget_s=args.time_budget, min_iters=args.min_iters)
    out = Path(args.out)
    summary = {"machine": machine(args.device), "dataset": args.dataset, "calib_images": args.calib,
               "seeds": list(args.seed_list), "budgets": args.budgets.split(","), "skipped_baselines": list(args.skip),
               "reconstruction": recon.to_dict(), "act_bits": 8, "models": {}}
    for model_name in args.models.split(","):
        try:
            bench_model(model_name, args, recon, out, summary)
        except Exception as error:  # keep what the other model measures; the error is recorded
            log(f"{model_name}: FAILED: {type(error).__name__}: {error}")
            summary.setdefault("errors", {})[model_name] = f"{type(error).__name__}: {error}"
            _write(out / "reconstruction.json", summary)
    print(json.dumps({m: {"targets": e.get("targets"), "reconstruct_s": e.get("reconstruct_s")}
                      for m, e in summary["models"].items()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
