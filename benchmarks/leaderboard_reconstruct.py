"""The CIFAR-10 leaderboards with their reconstruction column, taken from the experiment's held-out run.

    python -m benchmarks.leaderboard_reconstruct [--heldout benchmarks/results/experiment/heldout.json]

The held-out run (``benchmarks.experiment heldout``, one H100) is ``mpq.leaderboard.run`` on
cifar10-mini for every human baseline and every discovered proxy (judged in the sandbox), with the
round-to-nearest top-1 under 3 calibration seeds and, for every allocation, the top-1 after block
reconstruction (``mpq.ptq_leaderboard.reconstruct_allocations``, what ``--final-ptq reconstruct``
calls). Its per-model reports are therefore the leaderboards that

    python -m sandbox.leaderboard --model M --proxy ... --budget 2.5avg,3avg,3.5avg,4avg \\
        --calib-seeds 0,1,2 --final-ptq reconstruct --recon-iters 310 --device cuda

writes; this command stores them as ``leaderboard_<model>_cifar10-mini.json`` and prints the
README's table (also ``leaderboard_reconstruct.md``). No model is loaded.
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from mpq.leaderboard_format import write_report

RESULTS = Path(__file__).parent / "results"
BUDGETS = ("2.5avg", "3avg", "4avg")
NOTE = ("Rows and reconstruction column from benchmarks/results/experiment/heldout.json "
        "(benchmarks.leaderboard_reconstruct): RTN mean ± std over 3 calibration draws of 16 images, "
        "reconstruction mean ± std over 3 calibration seeds; hawq_v2 with per-layer Hutchinson probes.")


def leaderboards(heldout: dict) -> dict[str, dict]:
    """{model: leaderboard report with the reconstruction block}, from the held-out state."""
    boards = {}
    for model, section in heldout["models"].items():
        report = dict(section["rtn"]["report"])
        recon = section.get("recon", {})
        report["reconstruct"] = {"iters": recon.get("key", {}).get("iters"),
                                 "calib_images": recon.get("key", {}).get("calib_final"),
                                 "complete": recon.get("complete"), "chunks": recon.get("chunks", []),
                                 "machine": [c["machine"] for c in heldout.get("calls", [])
                                             if model in c.get("models", [])][-1:]}
        report["note"] = NOTE
        boards[model] = report
    return boards


def _cell(values: list[float]) -> str:
    if not values:
        return ""
    mean = 100 * statistics.fmean(values)
    return f"{mean:.1f}" if len(values) == 1 else f"{mean:.1f} ± {100 * statistics.stdev(values):.1f}"


def table(boards: dict[str, dict]) -> str:
    """Markdown: per model, every proxy's RTN top-1 (mean ± std over calibration seeds) and top-1 after
    reconstruction, per budget."""
    lines = []
    for model, report in boards.items():
        fp = next(r["top1_test"] for r in report["reference"] if r["name"] == "FP")
        lines += [f"**{model}** (FP {100 * fp:.1f}; RTN over {len(report['calib_seeds']['seeds'])} calibration "
                  f"seeds, reconstruction {report['reconstruct']['iters']} steps per block, "
                  f"{report['reconstruct']['calib_images']} images)", "",
                  "| proxy | " + " | ".join(f"RTN @{b} | recon @{b}" for b in BUDGETS) + " |",
                  "|---|" + "---|---|" * len(BUDGETS)]
        proxies = list(dict.fromkeys(r["proxy"] for r in report["rows"]))
        for proxy in proxies:
            cells = []
            for budget in BUDGETS:
                row = next((r for r in report["rows"] if r["proxy"] == proxy and r["budget"] == budget), {})
                cells.append(_cell(list(row.get("top1_test_calib", {}).values())) or "error")
                cells.append(_cell(list(row.get("top1_test_reconstruct_per_seed", {}).values())))
            lines.append(f"| {proxy} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.leaderboard_reconstruct",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--heldout", type=Path, default=RESULTS / "experiment" / "heldout.json")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if not args.heldout.is_file():
        parser.exit(2, f"error: no held-out results at {args.heldout}\n")
    boards = leaderboards(json.loads(args.heldout.read_text()))
    for model, report in boards.items():
        print(f"wrote {write_report(report, args.out_dir / f'leaderboard_{model}_cifar10-mini.json')}")
    text = table(boards)
    (args.out_dir / "leaderboard_reconstruct.md").write_text(f"# Leaderboards after reconstruction\n\n{NOTE}\n\n{text}")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
