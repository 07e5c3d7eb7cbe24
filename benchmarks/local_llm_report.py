"""The local LLM benchmark's table: every run in one file, fitness on the default task.

    python -m benchmarks.local_llm_report                  # results/local_llm.json + a markdown table
    python -m benchmarks.local_llm_report --rescore [--model M --dataset D --budget B]

Each run of ``benchmarks.local_llm`` (one model x prompt set) writes
``results/local_llm_<model>_<prompts>.json``. This module summarises them
(valid rates are after the critic's repairs, ``first_pass`` before any), and
with ``--rescore`` evaluates every valid draft's final code and the human
baselines again, in the sandbox, on another task (default: mpq.task.Task's,
i.e. the search's default task), so that drafts written while that task was
not yet chosen are judged on it without asking the LLM again. The fitness of
the valid unique drafts on that task is then reported as ``default_task_*``.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import replace
from pathlib import Path

TEMPLATES = ("init", "mutation", "crossover", "critic")
RESULTS = Path(__file__).parent / "results"
TABLE = RESULTS / "local_llm.json"
RUN_FILE = re.compile(r"local_llm_(\d+(?:\.\d+)?b)_(\w+)\.json")


def short_name(name: str | None, default: str = "0.5b") -> str:
    """'0.5b' / '1.5b' for the packaged models (their name or GGUF path), else the file stem."""
    if not name:
        return default
    stem = Path(name).name.removesuffix(".gguf")  # not .stem: "qwen2.5-coder-0.5b-..." has dots
    m = re.search(r"(\d+(?:\.\d+)?b)-", stem)
    return m.group(1) if m else stem


def task_key(task: dict) -> str:
    return f"{task['model']}/{task['dataset']}/{task['budget']}"


def summarise(results: dict) -> dict:
    """Per-template and overall rates, speed, fitness and load of one run."""
    rows, known = results["drafts"], set(results.get("known_hashes", []))
    per = {}
    for t in TEMPLATES:
        sel = [r for r in rows if r["template"] == t]
        if sel:
            per[t] = {"drafts": len(sel), "first_pass_rate": _rate(sel, "first_pass"), "valid_rate": _rate(sel, "valid"),
                      "seconds_per_draft": _mean(sel, "seconds"),
                      "final_failures": {s: sum(r["stage"] == s for r in sel) for s in sorted({r["stage"] for r in sel} - {"ok"})}}
    valid = [r for r in rows if r["valid"]]
    unique = unique_valid(rows, known)
    wall_min = sum(r["seconds"] for r in rows) / 60
    llm_min = sum(r["llm_s"] for r in rows) / 60
    phis = [r["phi"] for r in valid if r.get("phi") is not None]
    uphis = [r["phi"] for r in unique if r.get("phi") is not None]
    loads = [r["load_1m"] for r in rows if "load_1m" in r]
    m = results.get("metrics", {})
    return {
        "templates": per, "drafts": len(rows),
        "first_pass_rate": _rate(rows, "first_pass"), "valid_rate": _rate(rows, "valid"),
        "min_template_valid_rate": min((v["valid_rate"] for v in per.values()), default=None),
        "valid_unique": len(unique), "duplicates_of_known_or_earlier": len(valid) - len(unique),
        "valid_unique_per_min": round(len(unique) / wall_min, 3) if wall_min else None,
        "valid_unique_per_llm_min": round(len(unique) / llm_min, 3) if llm_min else None,
        "seconds_per_draft": _mean(rows, "seconds"), "llm_s_per_draft": _mean(rows, "llm_s"),
        "eval_s_per_draft": _mean(rows, "eval_s"), "llm_calls_per_draft": _mean(rows, "llm_calls"),
        "fitness_valid_mean": round(sum(phis) / len(phis), 4) if phis else None,
        "fitness_valid_best": round(max(phis), 4) if phis else None,
        "fitness_unique_mean": round(sum(uphis) / len(uphis), 4) if uphis else None,
        "fitness_best_human": round(max((h["phi"] for h in results.get("humans", {}).values() if h.get("phi") is not None), default=float("nan")), 4),
        "mean_tokens_in": _mean(rows, "tokens_in"), "mean_tokens_out": _mean(rows, "tokens_out"),
        "prompt_tokens_per_s": round(m["prompt_tokens_total"] / m["prompt_seconds_total"], 1) if m.get("prompt_seconds_total") else None,
        "generation_tokens_per_s": round(m["tokens_predicted_total"] / m["tokens_predicted_seconds_total"], 1) if m.get("tokens_predicted_seconds_total") else None,
        "load_1m": {"min": min(loads), "mean": round(sum(loads) / len(loads), 2), "max": max(loads)} if loads else None,
    }


def _rate(rows: list[dict], key: str) -> float | None:
    return round(sum(bool(r.get(key)) for r in rows) / len(rows), 3) if rows else None


def _mean(rows: list[dict], key: str) -> float | None:
    vals = [r[key] for r in rows if r.get(key) is not None]
    return round(sum(vals) / len(vals), 1) if vals else None


def unique_valid(rows: list[dict], known: set[str]) -> list[dict]:
    """Valid rows whose proxy is neither a known one (baselines, prompt examples) nor an earlier draft's."""
    out, seen = [], set(known)
    for r in rows:
        if r["valid"] and r["ast_hash"] not in seen:
            out.append(r)
            seen.add(r["ast_hash"])
    return out


def default_task_fitness(results: dict, key: str) -> dict:
    """Fitness on a rescored task of the valid unique drafts, vs the human baselines there."""
    unique = unique_valid(results["drafts"], set(results.get("known_hashes", [])))
    scored = [r["rescored"][key] for r in unique if key in r.get("rescored", {})]
    phis = [s["phi"] for s in scored if s["status"] == "ok"]
    humans = results.get("humans_rescored", {}).get(key, {})
    human_phis = sorted(h["phi"] for h in humans.values() if h.get("phi") is not None)
    return {"task": key, "valid_unique": len(unique), "rescored": len(scored), "ok": len(phis),
            "fitness_mean": round(sum(phis) / len(phis), 4) if phis else None,
            "fitness_best": round(max(phis), 4) if phis else None,
            "acc_quant_best": max((s["acc_quant"] for s in scored if s["status"] == "ok"), default=None),
            "human_fitness_best": round(human_phis[-1], 4) if human_phis else None,
            "human_fitness_median": round(human_phis[len(human_phis) // 2], 4) if human_phis else None,
            "beats_best_human": sum(p > human_phis[-1] for p in phis) if human_phis else None}


def rescore(task, paths: list[Path]) -> None:
    """Evaluate the valid drafts and the baselines of each run file on ``task`` (resumable)."""
    from benchmarks.local_llm import HUMAN_PARENTS
    from mpq.proxies import baseline_source
    from sandbox.pool import EvaluatorPool

    key = task_key(task.to_dict())
    with EvaluatorPool(task, workers=1) as pool:
        pool.wait_ready()
        humans = {name: _scored(pool.evaluate(baseline_source(name), f"human-{name}")) for name in HUMAN_PARENTS}
        for path in paths:
            results = json.loads(path.read_text())
            results.setdefault("humans_rescored", {})[key] = humans
            for r in unique_valid(results["drafts"], set(results.get("known_hashes", []))):
                if key not in r.setdefault("rescored", {}):
                    r["rescored"][key] = _scored(pool.evaluate(r["code"], f"rescore-{r['template']}-{r['i']}"))
                    print(f"{path.name} {r['template']} #{r['i']}: {r['rescored'][key]}", flush=True)
                    path.write_text(json.dumps(results, indent=1))
            path.write_text(json.dumps(results, indent=1))


def _scored(result) -> dict:
    return {"status": result.status, "phi": result.phi, "rho_sens": result.rho_sens,
            "acc_quant": result.acc_quant, "reason": result.reason[:200]}


def run_files() -> list[Path]:
    return [p for p in sorted(RESULTS.glob("local_llm_*.json")) if RUN_FILE.fullmatch(p.name)]


def in_searches(folder: Path = RESULTS / "experiment") -> dict:
    """The default model's candidates in the experiment's full searches (``search_<ID>.json``, written
    by ``benchmarks.experiment collect``), per template: a far larger sample of the default model x
    prompt set than a benchmark run, drafted under the search's real load. ``valid_rate`` = status ok
    after the critic, ``first_pass_rate`` = ok before any repair, as in the runs above."""
    from agents.local_model import DEFAULT_MODEL

    per: dict[str, dict] = {}
    runs = []
    for path in sorted(folder.glob("search_*.json")):
        data = json.loads(path.read_text())
        cfg = data.get("config", {})
        if cfg.get("llm") != "local":
            continue
        runs.append({"run_id": data["run_id"], "prompts": Path(cfg.get("prompts_dir") or "").name,
                     "finished": data.get("finished")})
        for template, row in data.get("templates", {}).items():
            if template not in TEMPLATES:  # 'human': a seed population's baselines, not drafts
                continue
            total = per.setdefault(template, {"candidates": 0, "ok": 0, "first_pass_ok": 0})
            for key in total:
                total[key] += row.get(key, 0)
    for row in per.values():
        row["valid_rate"] = round(row["ok"] / row["candidates"], 3) if row["candidates"] else None
        row["first_pass_rate"] = round(row["first_pass_ok"] / row["candidates"], 3) if row["candidates"] else None
    candidates = sum(r["candidates"] for r in per.values())
    return {"model": DEFAULT_MODEL.name, "runs": runs, "templates": per, "candidates": candidates,
            "valid_rate": round(sum(r["ok"] for r in per.values()) / candidates, 3) if candidates else None,
            "first_pass_rate": round(sum(r["first_pass_ok"] for r in per.values()) / candidates, 3)
            if candidates else None}


def table(default_key: str) -> dict:
    """Every run file (local_llm_<model>_<prompts>.json) in one table: local_llm.json."""
    from benchmarks.local_llm import __doc__ as bench_doc

    runs = {}
    for path in run_files():
        data = json.loads(path.read_text())
        if data.get("drafts"):
            runs[path.stem] = {"file": path.name, "model": data["model"]["name"], "prompts": data["prompts"],
                               "task": data["task"], "sampling": data["sampling"], "humans": data.get("humans"),
                               "machine": data.get("machine"), "summary": summarise(data),
                               "default_task": default_task_fitness(data, default_key)}
    report = {"benchmark": "local_llm", "how_to_read": bench_doc.split("\n\n")[1] + "\n\n" + __doc__.split("\n\n")[1],
              "default_task": default_key, "runs": runs, "in_searches": in_searches(),
              "legacy": "local_llm_v1_gate_only_*.json: earlier runs that judged the gate only (valid = parses and passes the gate)"}
    TABLE.write_text(json.dumps(report, indent=1))
    head = ("| model | prompts | drafts | first pass | valid (init / mut / cross / critic) | valid unique / min "
            "| s / draft | fitness mean / best (best human), drafting task | fitness mean / best (best human), default task | load 1m |")
    print(head + "\n" + "|---" * (head.count("|") - 1) + "|")
    for run in runs.values():
        s, t, d = run["summary"], run["summary"]["templates"], run["default_task"]
        per = " / ".join(f"{t[k]['valid_rate']:.2f}" if k in t else "-" for k in TEMPLATES)
        print(f"| {short_name(run['model'])} | {Path(run['prompts']).name} | {s['drafts']} | {s['first_pass_rate']} | "
              f"{s['valid_rate']} ({per}) | {s['valid_unique_per_min']} | {s['seconds_per_draft']} | "
              f"{s['fitness_valid_mean']} / {s['fitness_valid_best']} ({s['fitness_best_human']}) | "
              f"{d['fitness_mean']} / {d['fitness_best']} ({d['human_fitness_best']}) | {s['load_1m']} |")
    s = report["in_searches"]
    if s["candidates"]:
        per = ", ".join(f"{k} {v['valid_rate']:.2f} ({v['candidates']})" for k, v in s["templates"].items())
        print(f"\nin {len(s['runs'])} searches ({short_name(s['model'])}, prompts "
              f"{', '.join(sorted({r['prompts'] for r in s['runs']}))}): {s['candidates']} candidates, valid after "
              f"the critic {s['valid_rate']} (first pass {s['first_pass_rate']}); per template: {per}")
    return report


def _run_file(path: Path) -> Path:
    """A run file as given, or by its name in the results folder (``local_llm_0.5b_full.json``)."""
    return path if path.is_file() or path.parent != Path(".") else RESULTS / path.name


def main(argv: list[str] | None = None) -> int:
    from mpq.task import Task

    default = Task()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rescore", action="store_true", help="evaluate the valid drafts on the task first")
    p.add_argument("--files", nargs="*", type=Path, help="run files to rescore (default: all; a run still drafting must not be rescored)")
    p.add_argument("--model", default=default.model)
    p.add_argument("--dataset", default=default.dataset)
    p.add_argument("--data-root", default=default.data_root)
    p.add_argument("--budget", default=default.budget)
    p.add_argument("--eval-limit", type=int, default=default.eval_limit)
    args = p.parse_args(argv)
    task = replace(default, model=args.model, dataset=args.dataset, data_root=args.data_root,
                   budget=args.budget, eval_limit=args.eval_limit)
    if args.rescore:
        files = [_run_file(f) for f in args.files] if args.files else run_files()
        missing = [str(f) for f in files if not f.is_file()]
        if missing:  # before the pool starts (minutes on a busy machine)
            print(f"error: no such run file: {', '.join(missing)} (names are looked up in {RESULTS} too)",
                  file=sys.stderr)
            return 2
        rescore(task, files)
    table(task_key(task.to_dict()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
