"""The leaderboards of issue 8: every baseline proxy on MobileNetV2 and ResNet18
at 3, 4 and 5 average weight bits (A8), with FP / uniform-8 / uniform-4 rows,
per-proxy evaluation time and the FP inference bound, one JSON per model:
``benchmarks/results/leaderboard_<model>_<dataset>.json``.

    python3 -m benchmarks.leaderboard --dataset embedded                      # CPU figures
    python3 -m benchmarks.leaderboard --dataset cifar10 --data-root .data/cifar10 --device cuda

A thin loop over ``mpq.leaderboard.run`` (same numbers as the CLI); needs only
torch / numpy / scipy, so it runs unchanged on the GPU machine.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mpq.leaderboard import INPUT_ERRORS, LeaderboardConfig, run
from mpq.leaderboard_format import format_table, write_report

RESULTS = Path(__file__).parent / "results"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m benchmarks.leaderboard", description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="embedded")
    p.add_argument("--data-root")
    p.add_argument("--models", default="mobilenetv2,resnet18", help="comma separated")
    p.add_argument("--budgets", default="3avg,4avg,5avg", help="comma separated")
    p.add_argument("--device", default="cpu")
    p.add_argument("--eval-limit", type=int, help="search-split images (default: all)")
    p.add_argument("--cache-dir")
    p.add_argument("--out-dir", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    for model in (m.strip() for m in args.models.split(",") if m.strip()):
        cfg = LeaderboardConfig(model=model, dataset=args.dataset, data_root=args.data_root,
                                budgets=tuple(b.strip() for b in args.budgets.split(",") if b.strip()),
                                device=args.device, eval_limit=args.eval_limit, cache_dir=args.cache_dir)
        try:
            report = run(cfg)
        except INPUT_ERRORS as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        print(format_table(report), flush=True)
        out = write_report(report, args.out_dir / f"leaderboard_{model}_{args.dataset}.json")
        print(f"wrote {out}\n", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
