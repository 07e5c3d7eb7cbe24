"""A finished run's outputs in ``runs/<run-id>/``:

* ``best_proxy.py`` -- the best proxy's code, its reasoning as a docstring;
* ``bits.json``     -- layer -> bits of its allocation, size, average bits, BOPs,
  and the held-out test accuracy of the model quantized that way;
* ``report.md``     -- settings, the result, a per-generation table and three
  PNG plots: fitness per generation, template probabilities, bits per layer.

Everything is read from the run's database, so a report can be rebuilt from
any run (``python -m graph.runs show`` uses the same tables).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from graph.store import RunStore  # noqa: E402


def write_outputs(run_dir: Path, store: RunStore, best: dict | None, final: dict) -> dict:
    """Write the three outputs (and the PNGs); return their paths."""
    run_dir = Path(run_dir)
    paths = {}
    if best is not None:
        paths["best_proxy"] = _write_best_proxy(run_dir / "best_proxy.py", best)
        paths["bits"] = _write_bits(run_dir / "bits.json", best, final)
    plots = {
        "fitness": plot_fitness(store, run_dir / "fitness.png"),
        "templates": plot_templates(store, run_dir / "templates.png"),
    }
    if best is not None and best.get("bits"):
        plots["bits"] = plot_bits(best, run_dir / "bits.png")
    paths["report"] = _write_report(run_dir / "report.md", store, best, final, plots)
    return {k: str(v) for k, v in paths.items()}


def _write_best_proxy(path: Path, best: dict) -> Path:
    reasoning = (best.get("reasoning") or "").replace('"""', "'''").strip()
    header = (f'"""Best proxy of the run: {best["id"]} ({best["operator"]}), phi={best["phi"]:.4f}, '
              f'rho_sens={_f(best.get("rho_sens"))}, acc_quant={_f(best.get("acc_quant"))}.\n\n{reasoning}\n"""\n')
    path.write_text(header + best["code"].rstrip() + "\n", encoding="utf-8")
    return path


def _write_bits(path: Path, best: dict, final: dict) -> Path:
    data = {"proxy": best["id"], "bits": best.get("bits", {}),
            **{k: final.get(k) for k in ("size_mb", "avg_bits", "bops", "test_acc", "test_loss", "fp_test_acc",
                                         "search_acc", "budget")}}
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    return path


def plot_fitness(store: RunStore, path: Path) -> Path:
    """Best and mean phi per generation, plus every candidate as a dot."""
    gens = store.rows("generations", order_by="generation")
    evals = store.rows("evaluations", "status = 'ok'")
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.scatter([e["generation"] for e in evals], [e["phi"] for e in evals], s=12, alpha=0.4, label="candidates")
    ax.plot([g["generation"] for g in gens], [_nan(g["best_phi"]) for g in gens], "o-", label="best")
    ax.plot([g["generation"] for g in gens], [_nan(g["mean_phi"]) for g in gens], "s--", label="mean")
    ax.set_xlabel("generation")
    ax.set_ylabel("fitness phi")
    ax.legend()
    return _save(fig, path)


def plot_templates(store: RunStore, path: Path) -> Path:
    """Template probabilities after each generation (controller table)."""
    rows = store.rows("controller", order_by="generation")
    fig, ax = plt.subplots(figsize=(6, 3.5))
    templates = list(rows[0]["probs"]) if rows else []
    for t in templates:
        ax.plot([r["generation"] for r in rows], [r["probs"][t] for r in rows], "o-", label=t)
    ax.set_xlabel("after generation")
    ax.set_ylabel("probability")
    ax.set_ylim(0, 1)
    if templates:
        ax.legend()
    return _save(fig, path)


def plot_bits(best: dict, path: Path) -> Path:
    """The best proxy's bit-width per layer, in forward order."""
    bits = best["bits"]
    fig, ax = plt.subplots(figsize=(max(6, len(bits) * 0.18), 3.5))
    ax.bar(range(len(bits)), list(bits.values()))
    ax.set_xlabel("layer (forward order)")
    ax.set_ylabel("weight bits")
    return _save(fig, path)


def final_model_lines(export: dict | None, cfg: dict, run_id: str = "RUN_ID") -> list[str]:
    """The report's account of the exported model: how it was quantized (and why round-to-nearest,
    when it was), its top-1 in PyTorch and onnxruntime, and its file sizes next to the budget."""
    if not export:
        return []
    settings = cfg.get("final", {})
    if export["mode"] == "reconstruct":
        how = (f"block reconstruction (BRECQ with AdaRound rounding, {settings.get('iters')} steps per block) "
               f"on {export['calib_images']} calibration images, {export['seconds']:.0f} s")
    else:
        why = ("on a CPU, block reconstruction of this model takes hours (benchmarks/results/"
               f"reconstruction_cpu.json); on a GPU: `python -m mpq.export {run_id} --final-ptq reconstruct "
               "--device cuda`" if cfg["task"].get("device", "cpu") == "cpu" else "as asked (--final-ptq rtn)")
        how = f"round-to-nearest on {export['calib_images']} calibration images ({why})"
    onnx = " and `quantized.onnx` (QuantizeLinear / DequantizeLinear)" if "top1_onnxruntime" in export else ""
    lines = ["", "## Final model", "", f"Quantized with {how}; `quantized.pt` (integer weights, per-channel "
             f"scales, bit map){onnx}.", "",
             "| | top-1 | images |", "|---|---|---|",
             f"| PyTorch | {_f(export.get('top1_torch'))} | {export.get('test_images')} |"]
    if "top1_onnxruntime" in export:
        lines.append(f"| onnxruntime (PyTorch on the same images: {_f(export['top1_torch_checked'])}) | "
                     f"{_f(export['top1_onnxruntime'])} | {export['check_images']} |")
    sizes = export.get("sizes", {})
    rows = [(name, sizes.get(key)) for name, key in (("budget (weights at their bits)", "budget_bytes"),
            ("packed weights + per-channel scales", "packed_weights_bytes"), ("quantized.pt", "checkpoint_bytes"),
            ("quantized.onnx", "onnx_bytes")) if sizes.get(key) is not None]
    if rows:
        lines += ["", "| size | bytes |", "|---|---|"] + [f"| {name} | {value:,} |" for name, value in rows]
    return lines


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _write_report(path: Path, store: RunStore, best: dict | None, final: dict, plots: dict) -> Path:
    run = store.run_row()
    cfg = run["config"]
    lines = [f"# Run {run['id']}", "",
             f"- model **{run['model']}** on **{run['dataset']}**, budget {cfg['task']['budget']}, "
             f"bits {cfg['task']['bits']}, A{cfg['task']['act_bits']}",
             f"- {run['generations']} generations x {run['population']} proxies, controller {run['controller']}, "
             f"seed {run['seed']}",
             f"- LLM `{run['llm']}`, prompts `{run['prompts_dir']}` (hash {run['prompts_hash']}), "
             f"git {run['git_rev']}"]
    if run.get("parent_run"):
        lines.append(f"- branched from run {run['parent_run']} at generation {run['parent_generation']}")
    lines += ["", "## Result", ""]
    if best is None:
        lines.append("No proxy passed evaluation.")
    else:
        lines += [f"Best proxy **{best['id']}** ({best['operator']}): phi {best['phi']:.4f}, "
                  f"rho_sens {_f(best.get('rho_sens'))}, search top-1 {_f(best.get('acc_quant'))}.", "",
                  "| held-out test split | top-1 |", "|---|---|",
                  f"| best proxy's allocation ({_f(final.get('avg_bits'), 2)} avg bits, "
                  f"{_f(final.get('size_mb'), 3)} MB) | {_f(final.get('test_acc'))} |",
                  f"| full precision{' (recorded in the checkpoint)' if final.get('fp_test_acc_source') == 'checkpoint' else ''} "
                  f"| {_f(final.get('fp_test_acc'))} |", "",
                  "Code: `best_proxy.py`; allocation: `bits.json`."]
        lines += final_model_lines(final.get("final_model"), cfg, run["id"])
    lines += ["", "## Generations", "", "| generation | candidates | ok | best phi | mean phi | best |",
              "|---|---|---|---|---|---|"]
    for g in store.rows("generations", order_by="generation"):
        lines.append(f"| {g['generation']} | {g['candidates']} | {g['ok']} | {_f(g['best_phi'])} | "
                     f"{_f(g['mean_phi'])} | {g['best_id']} |")
    lines += [""] + [f"![{name}]({Path(p).name})" for name, p in plots.items()] + [""]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def _f(value, digits: int = 4) -> str:
    return "-" if value is None or (isinstance(value, float) and not math.isfinite(value)) else f"{value:.{digits}f}"


def _nan(value):
    return float("nan") if value is None else value
