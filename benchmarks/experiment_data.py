"""The experiment's committed figures, loaded and summarised for the report (no plotting, no prose).

Inputs, all under ``benchmarks/results/experiment/``: ``search_<ID>.json`` (``collect``),
``heldout.json`` (``heldout`` on the GPU machine), ``heldout_a4.json`` (the same at 4-bit activations,
``heldout --act-bits 4``), ``proxies/<ID>.py``. Everything here is a
mechanical reading of those files: means, spreads, differences, rank correlations.
"""
from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field, replace
from pathlib import Path

from benchmarks.experiment_heldout import HUMAN_BASELINES

PAPER_GPU_HOURS_PER_SEARCH = 0.42
"""The TAP paper's cost of one search (arXiv 2512.07419), for the cost comparison."""


@dataclass
class Figures:
    searches: dict[str, dict] = field(default_factory=dict)
    heldout: dict | None = None
    heldout_a4: dict | None = None
    """``heldout_a4.json``: the held-out state at 4-bit activations (read through :func:`a4_view`)"""
    proxies: dict[str, str] = field(default_factory=dict)
    """{run id: proxy file text}"""


def load(results: Path) -> Figures:
    figures = Figures()
    for path in sorted(results.glob("search_*.json")):
        data = json.loads(path.read_text())
        figures.searches[data["run_id"]] = data
    for name, attr in (("heldout.json", "heldout"), ("heldout_a4.json", "heldout_a4")):
        if (results / name).is_file():
            setattr(figures, attr, json.loads((results / name).read_text()))
    for path in sorted((results / "proxies").glob("*.py")):
        figures.proxies[path.stem] = path.read_text()
    return figures


def not_held_out(figures: Figures) -> list[str]:
    """Discovered proxy files that no held-out run (8- or 4-bit activations) has judged (new, or changed since)."""
    import hashlib

    judged = [(h or {}).get("proxies", {}) for h in (figures.heldout, figures.heldout_a4)]
    return [name for name, text in figures.proxies.items()
            if all(j.get(name, {}).get("sha256") != hashlib.sha256(text.encode()).hexdigest() for j in judged)]


def a4_view(figures: Figures) -> Figures | None:
    """The figures with ``heldout_a4.json`` in the place of ``heldout.json``, so that every held-out
    helper (heldout_rows, heldout_models, ...) reads the 4-bit-activation run; None when it is missing."""
    return replace(figures, heldout=figures.heldout_a4) if figures.heldout_a4 else None


def a4_searches(figures: Figures) -> list[str]:
    """The searches run at 4-bit activations (``act_bits`` in their collected config; 8 when absent)."""
    return sorted(run_id for run_id, s in figures.searches.items() if s["config"].get("act_bits", 8) == 4)


# --------------------------------------------------------------------------- held-out rows

def heldout_rows(figures: Figures, model: str) -> list[dict]:
    """The held-out leaderboard rows of ``model`` (empty when not run)."""
    if not figures.heldout:
        return []
    section = figures.heldout.get("models", {}).get(model)
    return section["rtn"]["report"]["rows"] if section else []


def heldout_models(figures: Figures) -> list[str]:
    return list(figures.heldout.get("models", {})) if figures.heldout else []


def is_human(name: str) -> bool:
    return name in HUMAN_BASELINES


def budgets_of(rows: list[dict]) -> list[str]:
    return sorted({r["budget"] for r in rows}, key=lambda b: float(b.rstrip("avgMBx") or 0))


def stat(row: dict, mode: str) -> tuple[float, float, float] | None:
    """(mean, std, range) of a row's test top-1 over seeds: ``rtn`` over calibration seeds (the single
    seed-0 figure when no seeds were measured), ``recon`` over reconstruction seeds."""
    if "error" in row:
        return None
    if mode == "rtn":
        if "top1_test_calib_mean" in row:
            return (row["top1_test_calib_mean"], row["top1_test_calib_std"],
                    row["top1_test_calib_max"] - row["top1_test_calib_min"])
        return (row["top1_test"], 0.0, 0.0) if row.get("top1_test") is not None else None
    if "top1_test_reconstruct_mean" in row:
        return (row["top1_test_reconstruct_mean"], row["top1_test_reconstruct_std"],
                row.get("top1_test_reconstruct_max", row["top1_test_reconstruct_mean"])
                - row.get("top1_test_reconstruct_min", row["top1_test_reconstruct_mean"]))
    return None


def search_groups(figures: Figures) -> dict[str, list[str]]:
    """Searches that differ only in their seed: {"paper / llm / 3avg": [run ids]}."""
    groups: dict[str, list[str]] = {}
    for run_id, s in figures.searches.items():
        c = s["config"]
        groups.setdefault(f"{c['controller']} / {c['seed_population']} / {c['budget']}", []).append(run_id)
    return groups


def group_over_search_seeds(rows: list[dict], members: list[str], budget: str, mode: str) -> dict | None:
    """Mean and spread over the search seeds of a group's discovered proxies at ``budget``."""
    means = [stat(r, mode)[0] for r in rows
             if r["proxy"] in members and r["budget"] == budget and stat(r, mode) is not None]
    if len(means) < 2:
        return None
    return {"n": len(means), "mean": statistics.fmean(means), "std": statistics.stdev(means),
            "range": max(means) - min(means)}


# --------------------------------------------------------------------------- the mechanical answer

def compare_best(rows: list[dict], budget: str, mode: str, seeds: int = 2) -> dict | None:
    """Best discovered vs best human at ``budget`` (means over seeds) and the seeds' spread
    (``seeds``: how many were measured; with one there is no spread to compare with)."""
    measured = [(r["proxy"], stat(r, mode)) for r in rows if r["budget"] == budget]
    measured = [(name, s) for name, s in measured if s is not None]
    found = [(name, s) for name, s in measured if not is_human(name)]
    human = [(name, s) for name, s in measured if is_human(name)]
    if not found or not human:
        return None
    d_name, d = max(found, key=lambda x: x[1][0])
    h_name, h = max(human, key=lambda x: x[1][0])
    spread = max(d[2], h[2])
    diff = d[0] - h[0]
    return {"budget": budget, "mode": mode, "discovered": d_name, "discovered_mean": d[0], "human": h_name,
            "human_mean": h[0], "difference": diff, "spread": spread,
            "verdict": ("one seed: spread not measured" if seeds < 2
                        else "beyond the spread" if abs(diff) > spread else "within the spread"),
            "human_median": statistics.median(s[0] for _, s in human)}


def rank_agreement(rows: list[dict], budget: str) -> float | None:
    """Spearman between the proxies' RTN and reconstruction top-1 at ``budget``."""
    pairs = [(stat(r, "rtn"), stat(r, "recon")) for r in rows if r["budget"] == budget]
    pairs = [(a[0], b[0]) for a, b in pairs if a is not None and b is not None]
    if len(pairs) < 3:
        return None
    from scipy.stats import spearmanr

    return float(spearmanr([a for a, _ in pairs], [b for _, b in pairs]).statistic)


def heldout_gpu_seconds(figures: Figures) -> dict:
    """Seconds of every held-out call, A8 and A4 (by model and phase), and where they ran."""
    if not figures.heldout:
        return {}
    total, parts, machines = 0.0, {}, set()
    for prefix, record in (("", figures.heldout), ("A4 ", figures.heldout_a4 or {})):
        for call in record.get("calls", []):
            machines.add(call.get("machine", {}).get("gpu") or call.get("machine", {}).get("device", "?"))
            for key, seconds in call.get("seconds", {}).items():
                parts[prefix + key] = parts.get(prefix + key, 0.0) + seconds
            # a call cut by the device's limit has no wall_s: its phases saved so far stand in for it
            total += call.get("wall_s", sum(call.get("seconds", {}).values()))
    return {"total_s": total, "parts": parts, "machines": sorted(machines)}
