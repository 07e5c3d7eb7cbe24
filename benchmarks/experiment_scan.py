"""Where does allocation still matter once the final model is reconstructed? (issue 17)

Reads the human baselines' leaderboards of ``benchmarks/gpu_heldout_and_scan.sh``
(``benchmarks/results/experiment/scan/<model>_<setting>.json``: RTN over 3 calibration
draws, BRECQ/AdaRound with one seed) and writes, per model, setting and budget, the
spread of held-out top-1 under both final steps, the best - median gap after
reconstruction (the room a proxy has to win) and the Spearman correlation of the two
rankings, to ``experiment/scan_summary.{json,md}``.

    python -m benchmarks.experiment_scan
"""
from __future__ import annotations

import json
import statistics
from pathlib import Path

from scipy.stats import spearmanr

SCAN = Path(__file__).parent / "results" / "experiment" / "scan"


def summarize(path: Path) -> list[dict]:
    board = json.loads(path.read_text())
    task = board["task"]
    fp = next(r["top1_test"] for r in board["reference"] if r["name"] == "FP")
    rows = []
    for budget in dict.fromkeys(r["budget"] for r in board["rows"]):
        mine = [r for r in board["rows"] if r["budget"] == budget]
        rtn = [r["top1_test_calib_mean"] for r in mine]
        recon = [r["top1_test_reconstruct"] for r in mine]
        best = max(range(len(mine)), key=recon.__getitem__)
        rows.append({
            "model": task["model"], "bits": task["bits"], "act_bits": task["act_bits"], "budget": budget,
            "fp": fp, "rtn_min": min(rtn), "rtn_max": max(rtn), "recon_min": min(recon), "recon_max": max(recon),
            "recon_best_minus_median": max(recon) - statistics.median(recon),
            "recon_best": mine[best]["proxy"], "spearman_rtn_recon": spearmanr(rtn, recon).statistic,
            "proxies": len(mine), "source": path.name,
        })
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| model | bits | A | budget | RTN top-1 | recon top-1 | recon best - median | best after recon "
             "| Spearman RTN vs recon |", "|" + "---|" * 9]
    for r in sorted(rows, key=lambda r: -r["recon_best_minus_median"]):
        lines.append(f"| {r['model']} | {','.join(map(str, r['bits']))} | {r['act_bits']} | {r['budget']} "
                     f"| {100 * r['rtn_min']:.1f}-{100 * r['rtn_max']:.1f} "
                     f"| {100 * r['recon_min']:.1f}-{100 * r['recon_max']:.1f} "
                     f"| {100 * r['recon_best_minus_median']:.2f} | {r['recon_best']} "
                     f"| {r['spearman_rtn_recon']:+.2f} |")
    return "\n".join(lines)


def main() -> None:
    rows = [row for path in sorted(SCAN.glob("*.json")) for row in summarize(path)]
    out = SCAN.parent
    (out / "scan_summary.json").write_text(json.dumps(rows, indent=2) + "\n")
    text = markdown(rows)
    (out / "scan_summary.md").write_text(
        "The seven cheap human baselines (uniform, random, weight_norm, snip, tap_formula, ompq, emq) on "
        "cifar10-mini (CIFAR-10's 10,000 test images), one H100: RTN = mean over 3 calibration draws of "
        "16 images; recon = BRECQ/AdaRound, 310 steps per block, 1,024 images, one seed "
        "(benchmarks/gpu_heldout_and_scan.sh; `python -m benchmarks.experiment_scan`).\n\n" + text + "\n")
    print(text)


if __name__ == "__main__":
    main()
