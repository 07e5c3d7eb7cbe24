"""The leaderboard's report as a plain-text table and as a JSON file (no extra dependencies).

``mpq.leaderboard.run`` builds the report; the command ``python -m sandbox.leaderboard``
and ``benchmarks/leaderboard.py`` print and write it with these.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

COLUMNS = (("proxy", "{}", 12), ("rho_sens", "{:+.3f}", 8), ("cfg_tau", "{:+.3f}", 8),
           ("top1_search", "{:.2%}", 11), ("top1_test", "{:.2%}", 9), ("top1_recon", "{:.2%}", 10),
           ("phi", "{:.4f}", 7),
           ("avg_bits", "{:.2f}", 8), ("size_MB", "{:.3f}", 8), ("score_s", "{:.3f}", 8),
           ("alloc_s", "{:.3f}", 8), ("eval_s", "{:.3f}", 7), ("total_s", "{:.2f}", 8))
_KEYS = {"cfg_tau": "config_tau", "size_MB": "size_mb", "alloc_s": "allocate_s", "total_s": "evaluation_s",
         "top1_recon": "top1_test_reconstruct"}


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
    """``report`` as indented JSON at ``path`` (folders made); numpy scalars as numbers."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1, default=_json_default) + "\n")
    return out
