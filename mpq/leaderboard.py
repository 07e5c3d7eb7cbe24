"""Every proxy side by side on one model, one data set and one or more budgets.

    python -m mpq.leaderboard --model mobilenetv2 --dataset cifar10 --data-root DIR \\
        --budget 3avg,4avg,5avg [--proxy FILE ...] [--json OUT] [--device cuda]

One ``Evaluator`` (model, data, features, ground truth loaded once) judges every
baseline of ``mpq.proxies`` and every ``--proxy`` file. Each proxy is scored
once (its scores do not depend on the budget); then at each budget its scores
are allocated, the model quantized (activations ``--act-bits``) and evaluated on
the search split and on the held-out test split. Per proxy and budget:

- rho_sens: Spearman of the scores against the measured per-layer sensitivity;
- cfg_tau: Kendall tau of the proxy's predicted ranking of the benchmark's
  measured bit configurations (EMQ / OMPQ protocol, mpq.truth);
- top-1 on the search split (the fitness's acc_quant) and on the test split;
- phi (paper Eq. 5), average bits, size, and the time of each step.

Reference rows: FP (weights and activations FP), uniform 8 and 4 bits (A8).
The inference bound is the throughput of plain FP inference (BN folded) on the
search split on this machine: no proxy evaluation can pass the search split
faster. A plain-text table goes to stdout; ``--json`` writes everything, with
the machine it ran on. Bad input: one line on stderr, exit code 2.
Only torch / numpy / scipy are needed (it runs on the GPU machine as is).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from mpq.allocate import AllocationError, allocate
from mpq.budget import parse_budget
from mpq.data import DATASET_NAMES, DataError, calibration_batch, load_splits
from mpq.fitness import CONFIG_SAMPLES, Evaluator
from mpq.models import MODEL_NAMES, ModelError, load_model
from mpq.proxies import BASELINES, baseline_source
from mpq.proxy import ProxyError, load_proxy
from mpq.quant import evaluate
from mpq.task import Task

REFERENCE_BITS = (8, 4)


class LeaderboardError(Exception):
    """Bad input for the leaderboard; one line for the user."""


INPUT_ERRORS = (LeaderboardError, ValueError, AllocationError, DataError, ModelError)
"""What bad input raises; the command lines turn these into one line and exit code 2."""


@dataclass(frozen=True)
class LeaderboardConfig:
    """Everything one leaderboard run needs (built from the command line)."""

    model: str = "mobilenetv2"
    dataset: str = "embedded"
    data_root: str | None = None
    weights: str | None = None
    budgets: tuple[str, ...] = ("3avg",)
    proxies: tuple[str, ...] = ()
    """Extra proxy files (paths), shown after the baselines under their file name."""
    baselines: tuple[str, ...] = tuple(BASELINES)
    act_bits: int = 8
    calib_size: int = 16
    config_samples: int = CONFIG_SAMPLES
    """Measured random configurations for the config Kendall tau."""
    eval_limit: int | None = None
    """Search-split images (None = all)."""
    test_limit: int | None = None
    """Held-out test images (None = all)."""
    seed: int = 0
    device: str = "cpu"
    cache_dir: str | None = None


# --------------------------------------------------------------------------- input checks

def check_config(cfg: LeaderboardConfig) -> dict[str, str]:
    """Validate what can be checked before loading anything; returns {name: source}."""
    if cfg.model not in MODEL_NAMES:
        raise LeaderboardError(f"unknown model '{cfg.model}'; valid: {', '.join(MODEL_NAMES)}")
    if cfg.dataset not in DATASET_NAMES:
        raise LeaderboardError(f"unknown data set '{cfg.dataset}'; valid: {', '.join(DATASET_NAMES)}")
    if not cfg.budgets:
        raise LeaderboardError("no budget given: use --budget 3avg (or 3avg,4avg,5avg)")
    for budget in cfg.budgets:
        parse_budget(budget)  # ValueError with the accepted forms
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise LeaderboardError(f"--device {cfg.device}: no CUDA device on this machine")
    if cfg.config_samples < 2:
        raise LeaderboardError(f"--config-samples must be at least 2, got {cfg.config_samples}")
    for flag, value in (("--eval-limit", cfg.eval_limit), ("--test-limit", cfg.test_limit)):
        if value is not None and value < 1:
            raise LeaderboardError(f"{flag} must be a positive number of images, got {value}")
    sources = {}
    for name in cfg.baselines:
        if name not in BASELINES:
            raise LeaderboardError(f"unknown baseline '{name}'; valid: {', '.join(BASELINES)}")
        sources[name] = baseline_source(name)
    for path in cfg.proxies:
        file = Path(path)
        if not file.is_file():
            raise LeaderboardError(f"proxy file {path} not found")
        name = file.stem if file.stem not in sources else str(file)
        try:
            sources[name] = file.read_text()
        except (OSError, UnicodeDecodeError) as error:
            raise LeaderboardError(f"cannot read proxy file {path}: {error}") from None
    if not sources:
        raise LeaderboardError("nothing to score: no baselines and no --proxy files")
    return sources


def build_evaluator(task: Task, test_limit: int | None, cache_dir: Path | None,
                    config_samples: int = CONFIG_SAMPLES) -> Evaluator:
    """The task's Evaluator (as ``Evaluator(task)`` builds it), with the test split capped."""
    splits = load_splits(task.dataset, task.data_root, cache_dir=cache_dir, seed=task.seed)
    model = load_model(task.model, splits.spec, task.weights)
    calib_images, calib_labels = calibration_batch(splits, task.calib_size, task.seed, task.device)
    search, test = splits.val.head(task.eval_limit), splits.test.head(test_limit)
    return Evaluator.from_parts(task, model, calib_images, calib_labels,
                                search.normalized(task.device), search.labels.to(task.device),
                                test.normalized(task.device), test.labels.to(task.device),
                                cache_dir=cache_dir, progress=progress_printer("per-layer sensitivity"),
                                config_samples=config_samples)


def check_budgets(evaluator: Evaluator, budgets: Sequence[str]) -> None:
    """Every budget reachable on this model (AllocationError names the reachable range)."""
    for budget in budgets:
        allocate([1.0] * len(evaluator.layers), evaluator.params, budget, evaluator.task.bits,
                 min_bits=evaluator.min_bits)


# --------------------------------------------------------------------------- measuring

def machine_info(device: str) -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(), "cpu_count": os.cpu_count(),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "device": device}
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def inference_bound(evaluator: Evaluator, min_seconds: float = 2.0, max_repeats: int = 10) -> dict:
    """Images/s of plain FP inference (BN folded, no fake quantization) over the search split:
    the best of 2..``max_repeats`` passes (repeated until ``min_seconds`` in all; a GPU pass
    takes ~0.1 s, so one pass is too noisy)."""
    model = evaluator.quantizer.apply({}, act_quant=False)
    images, labels = evaluator.search_images, evaluator.search_labels
    device = evaluator.task.device
    evaluate(model, images, labels)  # warm-up (kernels, allocator, clocks)
    times: list[float] = []
    while len(times) < 2 or (len(times) < max_repeats and sum(times) < min_seconds):
        _sync(device)
        start = time.perf_counter()
        evaluate(model, images, labels)
        _sync(device)
        times.append(time.perf_counter() - start)
    best = min(times)
    return {"images": len(images), "seconds": best, "images_per_s": len(images) / best}


def reference_rows(evaluator: Evaluator) -> list[dict]:
    rows = []
    for label, bits in [("FP", None)] + [(f"uniform-{b}", b) for b in REFERENCE_BITS]:
        search = evaluator.evaluate_bits(bits, "search")
        test = evaluator.evaluate_bits(bits, "test")
        rows.append({"name": label, "weight_bits": 32 if bits is None else bits,
                     "act_bits": 32 if bits is None else evaluator.task.act_bits,
                     "top1_search": search.top1, "top1_test": test.top1,
                     "loss_search": search.loss, "loss_test": test.loss, "test_images": test.images})
    return rows


def with_budget(evaluator: Evaluator, budget: str) -> Evaluator:
    """Point the evaluator at another budget: the budget enters only the allocation, so
    model, features, ground truth and data are shared (a per-call budget argument of
    ``fitness_of_scores`` would make this unnecessary)."""
    evaluator.task = dataclasses.replace(evaluator.task, budget=budget)
    evaluator.budget = parse_budget(budget)
    return evaluator


def score_proxy(evaluator: Evaluator, source: str) -> tuple[list[float], float]:
    """A proxy's scores (through the real loader, on copies of the features) and their time."""
    scorer = load_proxy(source)
    layers = [f.copy() for f in evaluator.layers]
    device = evaluator.task.device
    _sync(device)
    start = time.perf_counter()
    scores = scorer(layers)
    _sync(device)
    return scores, time.perf_counter() - start


def proxy_rows(evaluator: Evaluator, name: str, source: str, budgets: Sequence[str], bound: dict) -> list[dict]:
    """One row per budget for one proxy; a failing proxy gives error rows, never a crash."""
    try:
        scores, score_s = score_proxy(evaluator, source)
        ranking = evaluator.config_ranking(scores)
    except ProxyError as error:
        return [{"proxy": name, "budget": b, "error": error.reason} for b in budgets]
    rows = []
    for budget in budgets:
        start = time.perf_counter()
        fit = with_budget(evaluator, budget).fitness_of_scores(scores, score_s=score_s)
        fitness_s = time.perf_counter() - start
        test = evaluator.evaluate_bits(fit.bits, "test")
        eval_s = fit.timings["eval_s"]
        rows.append({
            "proxy": name, "budget": budget, "rho_sens": fit.rho_sens, "config_tau": ranking.kendall_tau,
            "config_spearman": ranking.spearman, "top1_search": fit.acc_quant, "top1_test": test.top1,
            "phi": fit.phi, "avg_bits": fit.avg_bits, "size_mb": fit.size_mb, "bops": fit.bops,
            **fit.timings, "evaluation_s": score_s + fitness_s,
            "eval_vs_bound": eval_s * bound["images_per_s"] / max(len(evaluator.search_images), 1),
            "bits": fit.bits, "scores": scores})
    return rows


# --------------------------------------------------------------------------- running

def progress_printer(label: str):
    def report(done: int, total: int) -> None:
        if done == total or done % max(total // 20, 1) == 0:
            print(f"  {label}: {done}/{total}", file=sys.stderr, flush=True)
    return report


def run(cfg: LeaderboardConfig) -> dict:
    """The whole leaderboard as one JSON-able dict (raises known errors for bad input)."""
    sources = check_config(cfg)
    task = Task(model=cfg.model, dataset=cfg.dataset, data_root=cfg.data_root, weights=cfg.weights,
                budget=cfg.budgets[0], act_bits=cfg.act_bits, calib_size=cfg.calib_size, seed=cfg.seed,
                device=cfg.device, eval_limit=cfg.eval_limit)
    cache_dir = Path(cfg.cache_dir) if cfg.cache_dir else None
    log(f"loading {cfg.model} on {cfg.dataset}, features and ground truth (cached after the first run)")
    start = time.perf_counter()
    evaluator = build_evaluator(task, cfg.test_limit, cache_dir, cfg.config_samples)
    check_budgets(evaluator, cfg.budgets)
    setup_s = time.perf_counter() - start
    start = time.perf_counter()
    evaluator.progress = progress_printer("configuration benchmark")
    bench = evaluator.config_benchmark
    config_s = time.perf_counter() - start
    bound = inference_bound(evaluator)
    log(f"inference bound: {bound['images_per_s']:.0f} images/s (FP, {bound['images']} images)")
    references = reference_rows(evaluator)
    rows = []
    for i, (name, source) in enumerate(sources.items(), 1):
        log(f"[{i}/{len(sources)}] {name}")
        rows.extend(proxy_rows(evaluator, name, source, cfg.budgets, bound))
    truth = evaluator.truth
    return {
        "machine": machine_info(cfg.device),
        "config": dataclasses.asdict(cfg),
        "task": dataclasses.replace(task, budget=",".join(cfg.budgets)).to_dict(),
        "layers": len(evaluator.layers),
        "params": int(sum(evaluator.params)),
        "search_images": len(evaluator.search_images),
        "test_images": references[0]["test_images"],
        "setup_s": setup_s,
        "config_benchmark": {"configs": len(bench.configs), "seconds": config_s,
                             "top1_min": min(bench.top1), "top1_max": max(bench.top1)},
        "truth": {"bits": truth.bits, "fp_top1": truth.fp_top1, "sensitivity": truth.sensitivity},
        "inference_bound": bound,
        "reference": references,
        "rows": rows,
    }


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- output

COLUMNS = (("proxy", "{}", 12), ("rho_sens", "{:+.3f}", 8), ("cfg_tau", "{:+.3f}", 8),
           ("top1_search", "{:.2%}", 11), ("top1_test", "{:.2%}", 9), ("phi", "{:.4f}", 7),
           ("avg_bits", "{:.2f}", 8), ("size_MB", "{:.3f}", 8), ("score_s", "{:.3f}", 8),
           ("alloc_s", "{:.3f}", 8), ("eval_s", "{:.3f}", 7), ("total_s", "{:.2f}", 8))
_KEYS = {"cfg_tau": "config_tau", "size_MB": "size_mb", "alloc_s": "allocate_s", "total_s": "evaluation_s"}


def _cell(row: dict, column: str, fmt: str) -> str:
    value = row.get(_KEYS.get(column, column))
    if value is None:
        return "-"
    return fmt.format(value) if not isinstance(value, str) else value


def format_table(report: dict) -> str:
    """Plain-text tables (one per budget), no colours, no extra dependencies."""
    task, bound = report["task"], report["inference_bound"]
    lines = [f"{task['model']} on {task['dataset']}: {report['layers']} layers, {report['params']:,} weights; "
             f"search {report['search_images']} / test {report['test_images']} images; "
             f"bits {tuple(task['bits'])}, activations {task['act_bits']}-bit",
             f"inference bound (FP): {bound['images_per_s']:,.0f} images/s on {report['machine']['device']}; "
             f"setup (features + truth) {report['setup_s']:.1f} s, "
             f"config benchmark ({report['config_benchmark']['configs']} configs) "
             f"{report['config_benchmark']['seconds']:.1f} s", ""]
    lines.append(f"{'reference':<12} {'W/A bits':>8} {'top1_search':>11} {'top1_test':>9}")
    for ref in report["reference"]:
        lines.append(f"{ref['name']:<12} {ref['weight_bits']:>3}/{ref['act_bits']:<4} "
                     f"{ref['top1_search']:>11.2%} {ref['top1_test']:>9.2%}")
    header = " ".join(f"{name:<{width}}" if i == 0 else f"{name:>{width}}"
                      for i, (name, _, width) in enumerate(COLUMNS))
    for budget in report["config"]["budgets"]:
        lines += ["", f"budget {budget}", header]
        for row in (r for r in report["rows"] if r["budget"] == budget):
            if "error" in row:
                lines.append(f"{row['proxy']:<12} error: {row['error']}")
                continue
            lines.append(" ".join(f"{_cell(row, name, fmt):<{width}}" if i == 0 else
                                  f"{_cell(row, name, fmt):>{width}}"
                                  for i, (name, fmt, width) in enumerate(COLUMNS)))
    return "\n".join(lines)


def _json_default(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    raise TypeError(f"not JSON-able: {type(value).__name__}")


def write_report(report: dict, path: str | Path) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1, default=_json_default) + "\n")
    return out


# --------------------------------------------------------------------------- command line

class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit code 2 (argparse prints the usage too)
        self.exit(2, f"error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m mpq.leaderboard", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="mobilenetv2", help=f"one of {', '.join(MODEL_NAMES)}")
    p.add_argument("--dataset", default="embedded", help=f"one of {', '.join(DATASET_NAMES)}")
    p.add_argument("--data-root", help="folder of the data set (not needed for embedded)")
    p.add_argument("--weights", help="checkpoint path or 'torchvision' (default: the project's checkpoint)")
    p.add_argument("--budget", default="3avg", help="one or more budgets, comma separated: 3avg,4avg | 1.5MB | 8x")
    p.add_argument("--proxy", action="append", default=[], metavar="FILE", help="extra proxy file (repeatable)")
    p.add_argument("--baselines", default=",".join(BASELINES),
                   help="comma-separated baselines to include ('' for none)")
    p.add_argument("--act-bits", type=int, default=8)
    p.add_argument("--calib-size", type=int, default=16)
    p.add_argument("--eval-limit", type=int, help="search-split images used (default: all)")
    p.add_argument("--test-limit", type=int, help="held-out test images used (default: all)")
    p.add_argument("--config-samples", type=int, default=CONFIG_SAMPLES,
                   help="measured random bit configurations for the config Kendall tau")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    p.add_argument("--cache-dir", help="ground-truth cache (default $TAP_MPQ_CACHE or ~/.cache/tap-mpq)")
    p.add_argument("--json", dest="json_out", metavar="OUT", help="write the full report as JSON")
    return p


def config_from_args(args: argparse.Namespace) -> LeaderboardConfig:
    return LeaderboardConfig(
        model=args.model, dataset=args.dataset, data_root=args.data_root, weights=args.weights,
        budgets=tuple(b.strip() for b in args.budget.split(",") if b.strip()), proxies=tuple(args.proxy),
        baselines=tuple(b.strip() for b in args.baselines.split(",") if b.strip()), act_bits=args.act_bits,
        calib_size=args.calib_size, eval_limit=args.eval_limit, test_limit=args.test_limit,
        config_samples=args.config_samples, seed=args.seed,
        device=args.device, cache_dir=args.cache_dir)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        report = run(config_from_args(args))
    except INPUT_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(format_table(report))
    if args.json_out:
        log(f"wrote {write_report(report, args.json_out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
