"""The experiment of issue 17: do discovered proxies beat human ones on CIFAR-10, and does the
win survive reconstruction?

    python -m benchmarks.experiment collect RUN_ID...   # CPU: a search's figures -> results/experiment/search_<ID>.json
    python -m benchmarks.experiment heldout --device cuda --out $OUT/heldout.json [...]   # GPU machine
    python -m benchmarks.experiment report               # CPU: benchmarks/results/experiment.md + PNGs

``collect`` reads ``runs/<ID>/run.db`` (finished or not) and copies the best discovered proxy to
``benchmarks/results/experiment/proxies/<ID>.py``; ``heldout`` (benchmarks/experiment_heldout.py)
scores those files and the human baselines on the test split, round-to-nearest and reconstructed;
``report`` (benchmarks/experiment_report.py) builds the report from the committed JSON alone.
Each part imports only what it needs: ``heldout`` runs where there is no langgraph.
Bad input: one line on stderr, exit code 2.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks/results/experiment"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit code 2
        self.exit(2, f"error: {message} (see --help)\n")


def _csv(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in _csv(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m benchmarks.experiment", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    c = sub.add_parser("collect", help="a search's figures from its run database")
    c.add_argument("run_ids", nargs="+", metavar="RUN_ID")
    c.add_argument("--runs-dir", default=str(ROOT / "runs"))
    c.add_argument("--results", default=str(RESULTS), help="where search_<ID>.json and proxies/ go")
    h = sub.add_parser("heldout", help="held-out evaluation of every proxy (GPU machine)")
    h.add_argument("--out", required=True, help="JSON written after every step (e.g. $OUT/heldout.json)")
    h.add_argument("--resume-from", help="an earlier heldout JSON: only what it lacks is done")
    h.add_argument("--models", type=_csv, default=("mobilenetv2", "resnet18"))
    h.add_argument("--dataset", default="cifar10-mini")
    h.add_argument("--budgets", type=_csv, default=("2.5avg", "3avg", "3.5avg", "4avg"))
    h.add_argument("--proxies-dir", default=str(RESULTS / "proxies"))
    h.add_argument("--baselines", type=_csv, default=None, help="human baselines (default: all eight)")
    h.add_argument("--act-bits", type=int, default=8, help="activation bits (4: the exp-a4 setting)")
    h.add_argument("--calib-seeds", type=_ints, default=(0, 1, 2), help="RTN calibration seeds")
    h.add_argument("--recon-seeds", type=_ints, default=(0, 1, 2), help="reconstruction calibration seeds")
    h.add_argument("--recon-iters", type=int, default=310, help="steps per block (310: reconstruction.md)")
    h.add_argument("--calib-final", type=int, default=1024, help="reconstruction calibration images")
    h.add_argument("--chunk", type=int, default=56, help="variants reconstructed in one stacked pass")
    h.add_argument("--only-rtn", action="store_true")
    h.add_argument("--device", default="cpu")
    h.add_argument("--sandbox", default="process", help="backend for the proxy files (process on the GPU machine)")
    h.add_argument("--timeout", type=float, default=300.0, help="seconds one proxy file may score")
    h.add_argument("--eval-limit", type=int)
    h.add_argument("--test-limit", type=int)
    h.add_argument("--cache-dir")
    h.add_argument("--time-limit-s", type=float, default=540.0,
                   help="no reconstruction chunk is started that would end after this (a call has 600 s)")
    r = sub.add_parser("report", help="benchmarks/results/experiment.md from the committed JSON")
    r.add_argument("--results", default=str(RESULTS))
    r.add_argument("--out", default=str(ROOT / "benchmarks/results/experiment.md"))
    return p


def heldout_config(args: argparse.Namespace):
    from benchmarks.experiment_heldout import HUMAN_BASELINES, HeldoutConfig, HeldoutError

    for flag, value in (("--recon-iters", args.recon_iters), ("--calib-final", args.calib_final),
                        ("--chunk", args.chunk), ("--eval-limit", args.eval_limit or 1),
                        ("--test-limit", args.test_limit or 1)):
        if value < 1:
            raise HeldoutError(f"{flag} must be at least 1, got {value}")
    if not 2 <= args.act_bits <= 16:
        raise HeldoutError(f"--act-bits must be between 2 and 16, got {args.act_bits}")
    if not args.models or not args.budgets:
        raise HeldoutError("--models and --budgets need at least one value each")
    return HeldoutConfig(
        out=args.out, resume_from=args.resume_from, models=args.models, dataset=args.dataset, budgets=args.budgets,
        proxies_dir=args.proxies_dir, baselines=args.baselines if args.baselines is not None else HUMAN_BASELINES,
        act_bits=args.act_bits, calib_seeds=args.calib_seeds, recon_seeds=args.recon_seeds, recon_iters=args.recon_iters,
        calib_final=args.calib_final, chunk=args.chunk, only_rtn=args.only_rtn, device=args.device,
        sandbox=args.sandbox, timeout_s=args.timeout, eval_limit=args.eval_limit, test_limit=args.test_limit,
        cache_dir=args.cache_dir, time_limit_s=args.time_limit_s)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "collect":
            from benchmarks.experiment_collect import CollectError, collect_runs
            try:
                collect_runs(args.run_ids, Path(args.runs_dir), Path(args.results))
            except CollectError as error:
                raise ValueError(str(error)) from None
        elif args.command == "heldout":
            from benchmarks.experiment_heldout import run_heldout
            from mpq.leaderboard import INPUT_ERRORS
            from sandbox.pool import PoolError
            try:
                state = run_heldout(heldout_config(args))
            except (*INPUT_ERRORS, PoolError) as error:
                raise ValueError(str(error)) from None
            print(f"held-out evaluation {state['status']}: {args.out}")
        else:
            from benchmarks.experiment_report import write_report
            print(f"wrote {write_report(Path(args.results), Path(args.out))}")
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
