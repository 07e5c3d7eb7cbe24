"""``python -m benchmarks.experiment collect RUN_ID...``: one search's figures, from its database.

Writes ``benchmarks/results/experiment/search_<ID>.json`` (runs/ is not committed, so the
report is built from these) and copies the best discovered proxy to
``benchmarks/results/experiment/proxies/<ID>.py`` for the held-out evaluation:

- the run's configuration (seed, controller, seed population, budget, model, data set);
- per generation: the best fitness among its new candidates and the best so far (phi,
  rho_sens, acc_quant), and the template probabilities the controller used for it;
- per template: candidates, drafts, valid (status ok after the critic's repairs), first-pass
  valid, critic repairs, duplicates (same AST as an earlier evaluated proxy);
- wall time split into LLM / evaluation / both / idle-orchestration (union of the busy
  intervals in the database, ``benchmarks.default_run``);
- the best proxy overall and the best discovered one (not a human seed), code and reasoning,
  and whether its allocation equals a human baseline's; the best human proxy's fitness on the
  same search split (from this run's human seeds or the committed leaderboards).

An unfinished run is collected as it stands (``finished: false``). The database is read from a
private snapshot (graph.store.snapshot_copy), so a search still running is never disturbed.
"""
from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

from benchmarks.default_run import busy_spans, candidate_outcomes, progress_of, union_seconds
from graph.controller import initial_weights, probabilities
from graph.store import RunStore, db_path, snapshot_copy
from mpq.proxies import BASELINES

ROOT = Path(__file__).resolve().parent.parent
LEADERBOARDS = ("leaderboard_{model}_{dataset}.json", "reconstruction_leaderboard_{model}_{dataset}.json")
"""Committed leaderboards holding the human baselines' phi on a search split, in order of preference."""


class CollectError(ValueError):
    """A run that cannot be collected; one line for the user."""


def collect_runs(run_ids: list[str], runs_dir: Path, results: Path) -> list[Path]:
    written = []
    for run_id in run_ids:
        db = db_path(runs_dir, run_id)
        if not db.is_file():
            raise CollectError(f"no run database at {db}")
        summary = collect(run_id, db)
        written.append(write_outputs(summary, results))
        state = "finished" if summary["finished"] else f"NOT finished ({summary['status']})"
        best = summary["best_discovered"]
        print(f"{run_id}: {state}, {summary['progress']['generations_done']} generations, best discovered phi "
              f"{best['phi'] if best else None} -> {written[-1]}")
    return written


def collect(run_id: str, db: Path) -> dict:
    """Everything the report needs about one run (JSON-able)."""
    with snapshot_copy(db) as copy:
        store = RunStore.open(copy)
        try:
            run = store.run_row()
            generations = store.rows("generations", order_by="generation")
            controller = store.rows("controller", order_by="generation")
            proxies = {p["id"]: p for p in store.rows("proxies")}
            evaluations = store.rows("evaluations")
        finally:
            store.close()
        config = run.get("config") or {}
        task = config.get("task", {})
        summary = {
            "run_id": run_id, "collected_at": time.time(), "status": run.get("status"),
            "finished": run.get("status") == "finished",
            "collected_on": {"platform": platform.platform(), "cpu_count": os.cpu_count()},
            "config": run_config(run, config),
            "progress": progress_of(copy),
            "generations": generation_rows(generations, controller),
            "templates": template_counts(copy, proxies, evaluations),
            "time": time_split(run, copy, evaluations),
        }
    ranked = ranked_candidates(evaluations, proxies, generations)
    summary["best_overall"] = ranked[0] if ranked else None
    summary["best_discovered"] = next((r for r in ranked if r["operator"] != "human"), None)
    humans = [r for r in ranked if r["operator"] == "human"]
    summary["best_human"] = {"in_run": humans[0] if humans else None, "leaderboard": leaderboard_human(task)}
    if summary["best_discovered"]:
        summary["best_discovered"]["same_bits_as_human"] = same_bits_as_human(summary["best_discovered"], task)
    # When the winner only re-derives a human allocation (exp-paper-s0: SNIP), the best proxy whose
    # allocation is new is what the search itself contributed: held out too, as <ID>-novel.
    summary["best_novel"] = None
    if summary["best_discovered"] and summary["best_discovered"]["same_bits_as_human"]:
        summary["best_novel"] = next((r for r in ranked if r["operator"] != "human" and r.get("bits")
                                      and not same_bits_as_human(r, task)), None)
    summary["default_run_summary"] = default_run_summary(run_id)
    return summary


def run_config(run: dict, config: dict) -> dict:
    task, search = config.get("task", {}), config.get("search", {})
    return {"seed": run.get("seed"), "controller": run.get("controller"),
            "seed_population": search.get("seed_population", "llm"), "budget": task.get("budget"),
            "model": run.get("model"), "dataset": run.get("dataset"), "eval_limit": task.get("eval_limit"),
            "calib_size": task.get("calib_size"), "task_seed": task.get("seed"), "bits": task.get("bits"),
            "act_bits": task.get("act_bits", 8), "fitness_ptq": task.get("fitness_ptq", "rtn"),
            "fitness_recon_iters": task.get("fitness_recon_iters"), "fitness_calib": task.get("fitness_calib"),
            "llm": run.get("llm"), "prompts_dir": run.get("prompts_dir"), "generations": run.get("generations"),
            "population": run.get("population"), "git_rev": run.get("git_rev"), "final": config.get("final")}


def generation_rows(generations: list[dict], controller: list[dict]) -> list[dict]:
    """Per generation: best of its new candidates, best so far (the population's head), and the
    template probabilities used to plan it (the controller row of the generation before; uniform for 0)."""
    after = {c["generation"]: c for c in controller}
    rows = []
    for g in generations:
        gen = g["generation"]
        head = next((p for p in g.get("population") or [] if p.get("phi") is not None), None)
        used = after[gen - 1]["probs"] if gen - 1 in after else probabilities(initial_weights())
        rows.append({
            "generation": gen, "candidates": g["candidates"], "ok": g["ok"], "best_phi_new": g["best_phi"],
            "mean_phi_new": g["mean_phi"],
            "best_so_far": {k: head.get(k) for k in ("id", "operator", "phi", "rho_sens", "acc_quant")} if head else None,
            "probs_used": used, "probs_after": after.get(gen, {}).get("probs"),
            "controller_kind": after.get(gen, {}).get("kind"), "outcomes": after.get(gen, {}).get("outcomes")})
    return rows


def template_counts(db: Path, proxies: dict[str, dict], evaluations: list[dict]) -> dict:
    """``default_run.candidate_outcomes`` (candidates, ok = valid after the critic, first pass) plus
    drafts, critic repairs and duplicates per template."""
    per = candidate_outcomes(db)
    template_of = {p["candidate"]: p["template"] for p in proxies.values() if p["attempt"] == 0}
    for row in per.values():
        row.update({"drafts": 0, "repairs": 0, "duplicates": 0})
    for p in proxies.values():
        template = template_of.get(p["candidate"], p["template"])
        if template in per:
            per[template]["drafts" if p["attempt"] == 0 else "repairs"] += 1
    for e in evaluations:
        template = template_of.get(e["candidate"])
        if e.get("reused_from") and template in per:
            per[template]["duplicates"] += 1
    return per


def time_split(run: dict, db: Path, evaluations: list[dict]) -> dict:
    """Wall time and its split; wall = the run's own (summed over resumed sessions) when finished,
    else the span from its creation to its last recorded event."""
    spans = busy_spans(db)
    llm_s, eval_s = union_seconds(spans["llm"]), union_seconds(spans["eval"])
    busy = union_seconds(spans["llm"] + spans["eval"])
    ends = [b for _, b in spans["llm"] + spans["eval"]] + [e["finished"] for e in evaluations if e.get("finished")]
    if run.get("wall_s"):
        wall, source = run["wall_s"], "runs.wall_s"
    else:
        wall, source = (max(ends) - run["created"]) if ends else 0.0, "created to last event (unfinished)"
    return {"wall_s": wall, "wall_source": source, "llm_s": llm_s, "evaluation_s": eval_s,
            "llm_and_evaluation_overlap_s": llm_s + eval_s - busy, "idle_orchestration_s": max(wall - busy, 0.0),
            "llm_busy_sum_s": run.get("llm_s"), "eval_busy_sum_s": run.get("eval_s")}


def ranked_candidates(evaluations: list[dict], proxies: dict[str, dict], generations: list[dict]) -> list[dict]:
    """Every candidate's ok evaluation, best first: phi, then the final population's order (the
    run's own tie-break, what best_proxy.py shows), then the later one."""
    order = {p["id"]: i for i, p in enumerate((generations[-1].get("population") or []) if generations else [])}
    best: dict[str, dict] = {}
    for e in evaluations:
        if e["status"] != "ok" or e.get("phi") is None:
            continue
        if e["candidate"] not in best or e["phi"] > best[e["candidate"]]["phi"]:
            best[e["candidate"]] = e
    ranked = sorted(best.values(), key=lambda e: (-e["phi"], order.get(e["candidate"], len(order)),
                                                  -(e.get("finished") or 0)))
    out = []
    for e in ranked:
        p = proxies.get(e["proxy_id"], {})
        out.append({"candidate": e["candidate"], "proxy_id": e["proxy_id"], "generation": e["generation"],
                    "operator": p.get("operator"), "template": p.get("template"), "phi": e["phi"],
                    "rho_sens": e["rho_sens"], "acc_quant": e["acc_quant"], "avg_bits": e["avg_bits"],
                    "size_mb": e["size_mb"], "bits": e.get("bits"), "reused_from": e.get("reused_from"),
                    "code": p.get("code"), "reasoning": p.get("reasoning")})
    return out


def _leaderboard_rows(task: dict) -> tuple[str, dict, list[dict]] | None:
    """(file name, its config, its human rows at the task's budget) of the first committed leaderboard with
    the task's search split (same eval_limit, calibration size, seed and activation bits)."""
    for name, report in _leaderboards(task.get("model"), task.get("dataset")):
        cfg = report.get("config", {})
        if (cfg.get("eval_limit"), cfg.get("calib_size"), cfg.get("seed"), cfg.get("act_bits", 8)) != (
                task.get("eval_limit"), task.get("calib_size"), task.get("seed"), task.get("act_bits", 8)):
            continue
        # human baselines only: a leaderboard may also hold discovered proxies' rows
        rows = [r for r in report.get("rows", []) if r.get("budget") == task.get("budget") and "error" not in r
                and r.get("proxy") in BASELINES]
        if rows:
            return name, cfg, rows
    return None


def _leaderboards(model: str | None, dataset: str | None):
    """(name, report) of the committed leaderboards of a model and data set, in order of preference;
    then the held-out runs' per-model reports (the A4 run's is the only leaderboard at 4-bit activations)."""
    results = ROOT / "benchmarks/results"
    for pattern in LEADERBOARDS:
        path = results / pattern.format(model=model, dataset=dataset)
        if path.is_file():
            yield path.name, json.loads(path.read_text())
    for path in sorted((results / "experiment").glob("heldout*.json")):
        held = json.loads(path.read_text())
        report = held.get("models", {}).get(model, {}).get("rtn", {}).get("report")
        if report and report.get("config", {}).get("dataset") == dataset:
            yield f"experiment/{path.name}", report


def leaderboard_human(task: dict) -> dict | None:
    """The best human baseline's phi (and parts) at the task's budget on the same search split; None
    for a search whose fitness is measured after reconstruction (the leaderboards' phi is RTN's)."""
    if task.get("fitness_ptq", "rtn") != "rtn":
        return None
    found = _leaderboard_rows(task)
    if found is None:
        return None
    name, _, rows = found
    best = max(rows, key=lambda r: r["phi"])
    return {"proxy": best["proxy"], "phi": best["phi"], "rho_sens": best["rho_sens"],
            "acc_quant": best["top1_search"], "source": name,
            "all": {r["proxy"]: r["phi"] for r in rows}}


def same_bits_as_human(best: dict, task: dict) -> list[str]:
    """Human baselines whose allocation at this budget is exactly the discovered proxy's."""
    found = _leaderboard_rows(task)
    if found is None or not best.get("bits"):
        return []
    return sorted(r["proxy"] for r in found[2] if r.get("bits") == best["bits"])


def default_run_summary(run_id: str) -> dict | None:
    """``benchmarks.default_run``'s summary of this run, if one was written (process wall, load)."""
    for path in sorted((ROOT / "benchmarks/results").glob("default_run*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if data.get("run_id") == run_id:
            return {"file": path.name, "wall_s": data.get("wall_s"), "machine": data.get("machine"),
                    "finished": data.get("finished", True)}
    return None


def _write_proxy(folder: Path, name: str, best: dict, summary: dict) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    kind = "Best discovered proxy" if name == summary["run_id"] else "Best proxy with an allocation of its own"
    reasoning = (best.get("reasoning") or "").replace('"""', "'''").strip()
    header = (f'"""{kind} of search {summary["run_id"]}: {best["candidate"]} ({best["operator"]}), '
              f'phi={best["phi"]:.4f}, rho_sens={best["rho_sens"]:.4f}, acc_quant={best["acc_quant"]:.4f}'
              f'{"" if summary["finished"] else " (run unfinished)"}.\n\n{reasoning}\n"""\n')
    (folder / f"{name}.py").write_text(header + best["code"].rstrip() + "\n", encoding="utf-8")
    return f"proxies/{name}.py"


def write_outputs(summary: dict, results: Path) -> Path:
    """search_<ID>.json, proxies/<ID>.py (the best discovered proxy, its reasoning as docstring) and,
    when that one's allocation is a human baseline's, proxies/<ID>-novel.py (the best new allocation)."""
    results.mkdir(parents=True, exist_ok=True)
    for key, name in (("best_discovered", summary["run_id"]), ("best_novel", f"{summary['run_id']}-novel")):
        best = summary.get(key)
        if best and best.get("code"):
            summary[f"{key}_file"] = _write_proxy(results / "proxies", name, best, summary)
    summary["proxy_file"] = summary.get("best_discovered_file")
    out = results / f"search_{summary['run_id']}.json"
    out.write_text(json.dumps(summary, indent=1) + "\n")
    return out
