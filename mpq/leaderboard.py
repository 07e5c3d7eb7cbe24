"""Every proxy side by side on one model, one data set and one or more budgets: the rows.

The command is ``python -m sandbox.leaderboard`` (it runs proxy files in the
sandbox); this module builds the report and ``mpq.leaderboard_format`` prints
it. One ``Evaluator`` (model, data, features, ground truth loaded once) judges
every baseline of ``mpq.proxies`` (in this process: the project's own code)
and every proxy file (scored by the injected ``UserScorer``, never here). Each
proxy is scored once (its scores do not depend on the budget); then at each
budget its scores are allocated, the model quantized (activations
``act_bits``) and evaluated on the search split and on the held-out test split.
Per proxy and budget:

- rho_sens: Spearman of the scores against the measured per-layer sensitivity;
- cfg_tau: Kendall tau of the proxy's predicted ranking of the benchmark's
  measured bit configurations (EMQ / OMPQ protocol, mpq.truth);
- top-1 on the search split (the fitness's acc_quant) and on the test split;
- phi (paper Eq. 5), average bits, size, and the time of each step.

Reference rows: FP (weights and activations FP), uniform 8 and 4 bits (A8).
The inference bound is the throughput of plain FP inference (BN folded) on the
search split on this machine: no proxy evaluation can pass the search split
faster. Only torch / numpy / scipy are needed (it runs on the GPU machine as is).
"""
from __future__ import annotations

import dataclasses
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ContextManager, Sequence

import torch

from mpq.allocate import AllocationError, allocate
from mpq.budget import parse_budget
from mpq.data import DATASET_NAMES, DataError, calibration_batch, load_splits
from mpq.fitness import CONFIG_SAMPLES, Evaluator
from mpq.models import MODEL_NAMES, ModelError, load_model
from mpq.proxies import BASELINES, baseline_source
from mpq.proxy import ProxyError, validate_scores
from mpq.quant import evaluate
from mpq.reconstruct import DEFAULT_ITERS
from mpq.task import Task

REFERENCE_BITS = (8, 4)


class LeaderboardError(Exception):
    """Bad input for the leaderboard; one line for the user."""


INPUT_ERRORS = (LeaderboardError, ValueError, AllocationError, DataError, ModelError)
"""What bad input raises; the command lines turn these into one line and exit code 2."""

ScoreFn = Callable[[str, str], tuple[list[float], float]]
"""(name, source) -> (scores, seconds); ProxyError when the proxy fails."""
UserScorer = Callable[[Task, "Path | None"], ContextManager[ScoreFn]]
"""Opens a ScoreFn for proxy files on (task, cache dir): ``sandbox.leaderboard``
passes one that judges each file in an isolated evaluator slot."""


@dataclass(frozen=True)
class LeaderboardConfig:
    """Everything one leaderboard run needs (built from the command line)."""

    model: str = "mobilenetv2"
    dataset: str = "cifar10-mini"
    data_root: str | None = None
    weights: str | None = None
    budgets: tuple[str, ...] = ("3avg",)
    proxies: tuple[str, ...] = ()
    """Extra proxy files (paths), shown after the baselines under their file name."""
    baselines: tuple[str, ...] = tuple(BASELINES)
    bits: tuple[int, ...] = Task.bits
    """Candidate weight bits of every allocation (the paper's 2,4,8; OMPQ / EMQ use 2,3,4,8)."""
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
    final_ptq: str = "rtn"
    """``reconstruct`` adds ``top1_test_reconstruct`` (mpq.ptq_leaderboard) to every row."""
    calib_final: int = 1024
    recon_iters: int = DEFAULT_ITERS
    recon_seeds: tuple[int, ...] = (0,)
    calib_seeds: tuple[int, ...] = ()
    """RTN test top-1 of every row again with the calibration batch of each of these seeds, the
    allocations unchanged (``top1_test_calib*``, mpq.leaderboard_calib); () = not measured."""


# --------------------------------------------------------------------------- input checks

def check_config(cfg: LeaderboardConfig) -> tuple[dict[str, str], dict[str, str]]:
    """Validate what can be checked before loading anything.

    Returns ({baseline: source}, {proxy file name: source}); the files are only read."""
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
    baselines = {}
    for name in cfg.baselines:
        if name not in BASELINES:
            raise LeaderboardError(f"unknown baseline '{name}'; valid: {', '.join(BASELINES)}")
        baselines[name] = baseline_source(name)
    files = {}
    for path in cfg.proxies:
        file = Path(path)
        if not file.is_file():
            raise LeaderboardError(f"proxy file {path} not found")
        name = file.stem if file.stem not in baselines and file.stem not in files else str(file)
        try:
            files[name] = file.read_text()
        except (OSError, UnicodeDecodeError) as error:
            raise LeaderboardError(f"cannot read proxy file {path}: {error}") from None
    if not baselines and not files:
        raise LeaderboardError("nothing to score: no baselines and no --proxy files")
    return baselines, files


def build_evaluator(task: Task, test_limit: int | None, cache_dir: Path | None,
                    config_samples: int = CONFIG_SAMPLES) -> Evaluator:
    """The task's Evaluator (as ``Evaluator(task)`` builds it), with the test split capped."""
    splits = load_splits(task.dataset, task.data_root, cache_dir=cache_dir, seed=task.seed)
    model = load_model(task.model, splits.spec, task.weights)
    calib_images, calib_labels = calibration_batch(splits, task.calib_size, task.seed, task.device)
    search, test = splits.val.head(task.eval_limit), splits.test.spread(test_limit)
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
    """Where figures were measured: platform, Python, CPUs, torch and its threads, GPU name."""
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
    """FP, uniform 8-bit and uniform 4-bit (activations ``act_bits``): top-1 / loss on both splits."""
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


def proxy_rows(evaluator: Evaluator, name: str, score: ScoreFn, source: str, budgets: Sequence[str],
               bound: dict) -> list[dict]:
    """One row per budget for one proxy; a failing proxy gives error rows, never a crash."""
    try:
        scores, score_s = score(name, source)
        scores = validate_scores(scores, len(evaluator.layers))
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
    """A progress(done, total) callback printing about 20 lines on stderr."""
    def report(done: int, total: int) -> None:
        if done == total or done % max(total // 20, 1) == 0:
            print(f"  {label}: {done}/{total}", file=sys.stderr, flush=True)
    return report


def run(cfg: LeaderboardConfig, user_scorer: UserScorer | None = None) -> dict:
    """The whole leaderboard as one JSON-able dict (raises known errors for bad input).

    Baselines are scored here (``Evaluator.proxy_scores``); proxy files only by
    ``user_scorer``, opened once the ground truth is cached (its slot reuses it)."""
    baselines, files = check_config(cfg)
    if files and user_scorer is None:
        raise LeaderboardError("proxy files run only in the sandbox: python -m sandbox.leaderboard --proxy FILE")
    task = Task(model=cfg.model, dataset=cfg.dataset, data_root=cfg.data_root, weights=cfg.weights,
                budget=cfg.budgets[0], bits=cfg.bits, act_bits=cfg.act_bits, calib_size=cfg.calib_size, seed=cfg.seed,
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
    rows = _all_rows(evaluator, baselines, files, user_scorer, cache_dir, cfg.budgets, bound)
    truth = evaluator.truth
    report = {
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
    if cfg.calib_seeds:
        _calib_seed_columns(report, cfg)
    if cfg.final_ptq == "reconstruct":
        _reconstruct_column(report, cfg)
    return report


def _model_and_test(cfg: LeaderboardConfig):
    """The splits, the model on ``cfg.device`` and the (capped) test images and labels: what the
    calibration-seed and reconstruction columns both re-measure on."""
    splits = load_splits(cfg.dataset, cfg.data_root, cache_dir=cfg.cache_dir, seed=cfg.seed)
    model = load_model(cfg.model, splits.spec, cfg.weights).to(cfg.device)
    test = splits.test.spread(cfg.test_limit)
    return splits, model, test.normalized(cfg.device), test.labels.to(cfg.device)


def _calib_seed_columns(report: dict, cfg: LeaderboardConfig) -> None:
    """RTN top-1 of every row under each calibration seed's images (mpq.leaderboard_calib)."""
    from mpq.leaderboard_calib import attach_calib_columns, calib_seed_top1

    log(f"round-to-nearest with the calibration images of seeds {', '.join(map(str, cfg.calib_seeds))}")
    splits, model, test_images, test_labels = _model_and_test(cfg)
    calib = {s: calibration_batch(splits, cfg.calib_size, s, cfg.device)[0] for s in cfg.calib_seeds}
    rows = [r for r in report["rows"] if "error" not in r]
    measured = calib_seed_top1(model, calib, rows, test_images, test_labels, cfg.act_bits)
    attach_calib_columns(rows, measured)
    report["calib_seeds"] = {"seeds": list(cfg.calib_seeds), "calib_images": cfg.calib_size}


def _reconstruct_column(report: dict, cfg: LeaderboardConfig) -> None:
    """Top-1 after reconstruction for every row (the final step of a run, mpq.reconstruct)."""
    from mpq.ptq_leaderboard import add_reconstruct_column
    from mpq.reconstruct import ReconConfig

    log(f"reconstructing every allocation ({cfg.recon_iters} steps per block, {cfg.calib_final} images)")
    splits, model, test_images, test_labels = _model_and_test(cfg)
    calib = {s: calibration_batch(splits, cfg.calib_final, s, cfg.device)[0] for s in cfg.recon_seeds}
    add_reconstruct_column(report, model, calib, test_images, test_labels,
                           ReconConfig(iters=cfg.recon_iters, act_bits=cfg.act_bits))


def _all_rows(evaluator: Evaluator, baselines: dict[str, str], files: dict[str, str],
              user_scorer: UserScorer | None, cache_dir: Path | None, budgets: Sequence[str], bound: dict) -> list[dict]:
    """The baselines' rows (scored here), then the proxy files' (scored by ``user_scorer``)."""
    rows = []
    total = len(baselines) + len(files)
    for i, (name, source) in enumerate(baselines.items(), 1):
        log(f"[{i}/{total}] {name}")
        rows.extend(proxy_rows(evaluator, name, _trusted(evaluator), source, budgets, bound))
    if files:
        with user_scorer(evaluator.task, cache_dir) as score_file:
            for i, (name, source) in enumerate(files.items(), len(baselines) + 1):
                log(f"[{i}/{total}] {name} (sandboxed)")
                rows.extend(proxy_rows(evaluator, name, score_file, source, budgets, bound))
    return rows


def _trusted(evaluator: Evaluator) -> ScoreFn:
    """The baselines' scorer: the project's own code, run in this process."""
    return lambda name, source: evaluator.proxy_scores(source)


def log(message: str) -> None:
    """One progress line on stderr, flushed at once (stdout keeps the report)."""
    print(message, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    """``python -m mpq.leaderboard`` moved: proxy files must not run in this process."""
    print("error: the leaderboard is now python -m sandbox.leaderboard (same flags; "
          "--proxy files run in the sandbox)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
