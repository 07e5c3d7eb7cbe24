"""``python -m sandbox.leaderboard``: every proxy side by side, proxy files judged in the sandbox.

    python -m sandbox.leaderboard --model mobilenetv2 --dataset cifar10 --data-root DIR \\
        --budget 3avg,4avg,5avg [--proxy FILE ...] [--json OUT] [--device cuda] [--sandbox auto]

The rows are ``mpq.leaderboard.run``'s: the project's baselines are scored in
this process; every ``--proxy`` file (LLM-written code such as
``runs/ID/best_proxy.py``) goes through the static gate and an isolated
evaluator slot (``sandbox.pool``), exactly as in a search, and only its scores
(numbers) come back; its rows are then built from them like any baseline's. A
file the gate rejects, or that fails, times out or dies, gives error rows.
A plain-text table goes to stdout; ``--json`` writes everything, with the
machine it ran on. Bad input: one line on stderr, exit code 2.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import sys
from pathlib import Path
from typing import Iterator

from mpq.fitness import CONFIG_SAMPLES
from mpq.leaderboard import INPUT_ERRORS, LeaderboardConfig, ScoreFn, log, run
from mpq.leaderboard_format import format_table, write_report
from mpq.proxies import BASELINES
from mpq.proxy import ProxyError
from mpq.reconstruct import DEFAULT_ITERS
from mpq.task import Task, parse_bits
from sandbox.pool import BACKEND_NAMES, EvaluatorPool, PoolError, interrupt_on_sigterm
from sandbox.protocol import Limits


def sandbox_scorer(backend: str, limits: Limits):
    """A ``mpq.leaderboard.UserScorer``: one evaluator slot judges every proxy file."""

    @contextlib.contextmanager
    def open_scorer(task: Task, cache_dir: Path | None) -> Iterator[ScoreFn]:
        with EvaluatorPool(task, backend=backend, workers=1, limits=limits, cache_dir=cache_dir,
                           gpus=["all"] if task.device.startswith("cuda") else None, log=log) as pool:
            def score(name: str, source: str) -> tuple[list[float], float]:
                result = pool.evaluate(source, request_id=name)
                if not result.ok:
                    raise ProxyError(f"{result.status}: {result.reason}", result.traceback_tail)
                return list(result.scores), float(result.timings.get("score_s", math.nan))
            yield score

    return open_scorer


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit code 2 (argparse prints the usage too)
        self.exit(2, f"error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m sandbox.leaderboard", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="mobilenetv2")
    p.add_argument("--dataset", default="cifar10-mini")
    p.add_argument("--data-root", help="folder of the data set (not needed for cifar10-mini / embedded)")
    p.add_argument("--weights", help="checkpoint path or 'torchvision' (default: the project's checkpoint)")
    p.add_argument("--budget", default="3avg", help="one or more budgets, comma separated: 3avg,4avg | 1.5MB | 8x")
    p.add_argument("--proxy", action="append", default=[], metavar="FILE",
                   help="proxy file, judged in the sandbox (repeatable)")
    p.add_argument("--baselines", default=",".join(BASELINES),
                   help="comma-separated baselines to include ('' for none)")
    p.add_argument("--bits", default=",".join(map(str, Task.bits)),
                   help="candidate weight bits, comma separated (default: %(default)s; OMPQ / EMQ: 2,3,4,8)")
    p.add_argument("--act-bits", type=int, default=8)
    p.add_argument("--calib-size", type=int, default=16)
    p.add_argument("--eval-limit", type=int, help="search-split images used (default: all)")
    p.add_argument("--test-limit", type=int, help="held-out test images used (default: all)")
    p.add_argument("--config-samples", type=int, default=CONFIG_SAMPLES,
                   help="measured random bit configurations for the config Kendall tau")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    p.add_argument("--cache-dir", help="ground-truth cache (default $TAP_MPQ_CACHE or ~/.cache/tap-mpq)")
    p.add_argument("--sandbox", choices=BACKEND_NAMES, default="auto", help="backend for --proxy files")
    p.add_argument("--timeout", type=float, default=Limits.timeout_s,
                   help="seconds one --proxy file may score (default: %(default)s)")
    p.add_argument("--final-ptq", choices=("rtn", "reconstruct"), default="rtn",
                   help="reconstruct: add top-1 after block reconstruction to every row (mpq.reconstruct)")
    p.add_argument("--calib-final", type=int, default=1024, help="calibration images of the reconstruction")
    p.add_argument("--recon-iters", type=int, default=DEFAULT_ITERS,
                   help="reconstruction steps per block (default: %(default)s)")
    p.add_argument("--recon-seeds", default="0", help="calibration seeds, comma separated (mean and spread)")
    p.add_argument("--calib-seeds", default="",
                   help="RTN top-1 again with the calibration images of these seeds, allocations unchanged "
                        "(comma separated; mean and spread per row)")
    p.add_argument("--json", dest="json_out", metavar="OUT", help="write the full report as JSON")
    return p


def config_from_args(args: argparse.Namespace) -> LeaderboardConfig:
    """The frozen leaderboard configuration of parsed arguments."""
    return LeaderboardConfig(
        model=args.model, dataset=args.dataset, data_root=args.data_root, weights=args.weights,
        budgets=tuple(b.strip() for b in args.budget.split(",") if b.strip()), proxies=tuple(args.proxy),
        baselines=tuple(b.strip() for b in args.baselines.split(",") if b.strip()),
        bits=parse_bits(args.bits), act_bits=args.act_bits,
        calib_size=args.calib_size, eval_limit=args.eval_limit, test_limit=args.test_limit,
        config_samples=args.config_samples, seed=args.seed,
        device=args.device, cache_dir=args.cache_dir, final_ptq=args.final_ptq, calib_final=args.calib_final,
        recon_iters=args.recon_iters, recon_seeds=tuple(int(s) for s in args.recon_seeds.split(",") if s),
        calib_seeds=tuple(int(s) for s in args.calib_seeds.split(",") if s.strip()))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.timeout > 0:
        print(f"error: --timeout must be positive, got {args.timeout}", file=sys.stderr)
        return 2
    limits = dataclasses.replace(Limits(), timeout_s=args.timeout)
    interrupt_on_sigterm()
    try:
        report = run(config_from_args(args), sandbox_scorer(args.sandbox, limits))
    except (*INPUT_ERRORS, PoolError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the slot is closed
        print("interrupted", file=sys.stderr)
        return 130
    print(format_table(report))
    if args.json_out:
        log(f"wrote {write_report(report, args.json_out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
