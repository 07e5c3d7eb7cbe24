"""The experiment report's PNG plots (matplotlib, Agg), each drawn from the committed JSON only.

Every function returns the written path, or None when it has nothing to draw.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from benchmarks.experiment_data import Figures, budgets_of, heldout_rows, is_human, stat  # noqa: E402


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_fitness(figures: Figures, path: Path) -> Path | None:
    """Best-so-far phi per generation for every search, with the best human phi on its split."""
    if not figures.searches:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    for run_id, s in sorted(figures.searches.items()):
        gens = [g for g in s["generations"] if g.get("best_so_far")]
        line, = ax.plot([g["generation"] for g in gens], [g["best_so_far"]["phi"] for g in gens], "o-", label=run_id)
        human = (s.get("best_human") or {}).get("leaderboard")
        if human:
            ax.axhline(human["phi"], color=line.get_color(), ls=":", lw=1)
    ax.set_xlabel("generation")
    ax.set_ylabel("best phi so far (dotted: best human, same split)")
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_templates(figures: Figures, path: Path) -> Path | None:
    """Template probabilities used in each generation, one panel per paper / dpo search."""
    runs = [(r, s) for r, s in sorted(figures.searches.items())
            if s["config"]["controller"] in ("paper", "dpo") and s["generations"]]
    if not runs:
        return None
    fig, axes = plt.subplots(1, len(runs), figsize=(3.2 * len(runs), 3), sharey=True, squeeze=False)
    for ax, (run_id, s) in zip(axes[0], runs):
        gens = s["generations"]
        for template in sorted(gens[0]["probs_used"]):
            ax.plot([g["generation"] for g in gens], [g["probs_used"].get(template) for g in gens], "o-",
                    label=template)
        ax.set_title(f"{run_id} ({s['config']['controller']})", fontsize=8)
        ax.set_xlabel("generation")
    axes[0][0].set_ylabel("probability used")
    axes[0][-1].legend(fontsize=7)
    return _save(fig, path)


def plot_heldout(figures: Figures, model: str, path: Path) -> Path | None:
    """Test top-1 against budget, RTN (mean over calibration seeds) and after reconstruction (mean
    over reconstruction seeds), error bars = std; discovered proxies solid, human dashed."""
    rows = heldout_rows(figures, model)
    if not rows:
        return None
    budgets = budgets_of(rows)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharex=True)
    for ax, mode, title in ((axes[0], "rtn", "round-to-nearest"), (axes[1], "recon", "after reconstruction")):
        for name in sorted({r["proxy"] for r in rows}):
            points = [(i, stat(r, mode)) for i, b in enumerate(budgets) for r in rows
                      if r["proxy"] == name and r["budget"] == b]
            points = [(i, s) for i, s in points if s is not None]
            if not points:
                continue
            ax.errorbar([i for i, _ in points], [100 * s[0] for _, s in points], yerr=[100 * s[1] for _, s in points],
                        ls="--" if is_human(name) else "-", lw=1 if is_human(name) else 2, marker="o", ms=3,
                        capsize=2, label=name)
        ax.set_title(f"{model}: {title}", fontsize=9)
        ax.set_xticks(range(len(budgets)), budgets)
        ax.set_xlabel("budget")
        ax.set_ylabel("test top-1 (%)")
    axes[1].legend(fontsize=6, ncol=2)
    return _save(fig, path)
