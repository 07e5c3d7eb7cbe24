"""``python -m graph.runs``: look at stored runs without running anything.

    python -m graph.runs list                      [--runs-dir runs]
    python -m graph.runs show RUN_ID
    python -m graph.runs replay RUN_ID [--generation G] [--no-tui] [--delay S]

``replay`` rebuilds the events of a run from its database (no LLM, no
evaluation) and shows them in the same view as a live run. Every read goes
through a private copy of the database, so looking never changes a run.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Iterator

from rich.console import Console
from rich.table import Table

from graph.store import DB_NAME, RunNotFound, RunStore, require_run, snapshot_copy
from graph.tui import fmt, make_sink


def read_run(runs_dir: str | Path, run_id: str) -> dict:
    """Everything stored about a run, as plain rows (run, generations, controller, proxies, evaluations)."""
    with snapshot_copy(require_run(runs_dir, run_id)) as copy:
        store = RunStore.open(copy)
        try:
            return {"run": store.run_row(),
                    "generations": store.rows("generations", order_by="generation"),
                    "controller": store.rows("controller", order_by="generation"),
                    "proxies": store.rows("proxies", order_by="generation, slot, attempt"),
                    "evaluations": store.rows("evaluations", order_by="finished")}
        finally:
            store.close()


def list_runs(runs_dir: str | Path) -> list[dict]:
    out = []
    for path in sorted(Path(runs_dir).glob(f"*/{DB_NAME}")):
        try:
            data = read_run(runs_dir, path.parent.name)
        except (RunNotFound, Exception):  # a half-written folder is listed as unreadable, not fatal
            out.append({"id": path.parent.name, "status": "unreadable"})
            continue
        run, gens = data["run"], data["generations"]
        best = max((g["best_phi"] for g in gens if g["best_phi"] is not None), default=None)
        out.append({"id": run["id"], "status": run["status"], "model": run["model"], "llm": run["llm"],
                    "generations": f"{len(gens)}/{run['generations']}", "population": run["population"],
                    "controller": run["controller"], "best_phi": best,
                    "parent": f"{run['parent_run']}@{run['parent_generation']}" if run.get("parent_run") else ""})
    return out


def replay_events(data: dict, generation: int | None = None) -> Iterator[dict]:
    """The events a live run emitted, rebuilt from its tables, generation by generation."""
    run = data["run"]
    yield {"event": "run", "run_id": run["id"], "model": run["model"], "llm": run["llm"],
           "generations": run["generations"], "population": run["population"]}
    probs = {r["generation"]: r["probs"] for r in data["controller"]}
    code = {p["id"]: p["code"] for p in data["proxies"]}
    for gen in data["generations"]:
        g = gen["generation"]
        if generation is not None and g != generation:
            continue
        yield {"event": "generation", "generation": g, "operators": gen["plan"] or []}
        evals = [e for e in data["evaluations"] if e["generation"] == g]
        last, reason = {}, {}
        for e in evals:
            last[e["candidate"]] = e["proxy_id"]
        for e in evals:
            attempt = _attempt(e["proxy_id"])
            if attempt:
                yield {"event": "repair", "id": e["candidate"], "attempt": attempt,
                       "error": reason.get(e["candidate"], "")}
            reason[e["candidate"]] = (e["reason"] or "").splitlines()[0] if e["reason"] else ""
            yield {"event": "eval_done", "id": e["candidate"], "attempt": attempt, "status": e["status"],
                   "phi": e["phi"], "rho_sens": e["rho_sens"], "acc_quant": e["acc_quant"],
                   "error": (e["reason"] or "").splitlines()[0] if e["reason"] else "",
                   "reused": bool(e["reused_from"]), "final": last[e["candidate"]] == e["proxy_id"]}
        best = next((dict(p) for p in gen["population"] if p["id"] == gen["best_id"]), None)
        if best is not None:
            best["code"] = code.get(best["id"], "")
        yield {"event": "select", "generation": g, "probs": probs.get(g, {}), "population": gen["population"],
               "best": best}


def _attempt(proxy_id: str) -> int:
    head, _, tail = proxy_id.rpartition(".")
    return int(tail) if head and tail.isdigit() else 0


def show(data: dict, console: Console) -> None:
    run, cfg = data["run"], data["run"]["config"]
    console.print(f"[bold]run {run['id']}[/]  status {run['status']}  model {run['model']} on {run['dataset']}  "
                  f"LLM {run['llm']}  controller {run['controller']}  seed {run['seed']}")
    console.print(f"budget {cfg['task']['budget']}  {run['generations']} generations x {run['population']}  "
                  f"prompts {run['prompts_dir']} ({run['prompts_hash']})  git {run['git_rev']}"
                  + (f"  parent {run['parent_run']}@{run['parent_generation']}" if run.get("parent_run") else ""))
    table = Table(title="generations")
    for col in ("generation", "candidates", "ok", "best phi", "mean phi", "best", "p(init/mut/cross)"):
        table.add_column(col)
    probs = {r["generation"]: r["probs"] for r in data["controller"]}
    for g in data["generations"]:
        p = probs.get(g["generation"], {})
        table.add_row(str(g["generation"]), str(g["candidates"]), str(g["ok"]), fmt(g["best_phi"], 4),
                      fmt(g["mean_phi"], 4), str(g["best_id"]), " / ".join(f"{v:.2f}" for v in p.values()))
    console.print(table)
    if data["generations"]:
        best_id = data["generations"][-1]["best_id"]
        best = next((p for p in reversed(data["proxies"]) if p["candidate"] == best_id), None)
        if best:
            console.print(f"[bold]best proxy {best_id}[/] ({best['template']})")
            console.print(best["code"], markup=False, highlight=False)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m graph.runs", description="List, show and replay stored runs.")
    p.add_argument("--runs-dir", default="runs")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="all runs in the runs folder")
    s = sub.add_parser("show", help="one run: settings, per-generation table, best proxy")
    s.add_argument("run_id")
    r = sub.add_parser("replay", help="the run generation by generation, from the database")
    r.add_argument("run_id")
    r.add_argument("--generation", type=int, help="only this generation (0-based)")
    r.add_argument("--no-tui", action="store_true")
    r.add_argument("--delay", type=float, default=None, help="seconds between events (default: 0.05 in the TUI)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = Console(highlight=False, soft_wrap=True)
    try:
        if args.command == "list":
            table = Table(title=f"runs in {args.runs_dir}")
            rows = list_runs(args.runs_dir)
            for col in ("id", "status", "model", "llm", "generations", "population", "controller", "best_phi",
                        "parent"):
                table.add_column(col)
            for r in rows:
                table.add_row(*[fmt(r.get(c), 4) if c == "best_phi" else str(r.get(c, "")) for c in
                                ("id", "status", "model", "llm", "generations", "population", "controller",
                                 "best_phi", "parent")])
            out.print(table)
            return 0
        data = read_run(args.runs_dir, args.run_id)
    except RunNotFound as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.command == "show":
        show(data, out)
        return 0
    gens = {g["generation"] for g in data["generations"]}
    if args.generation is not None and args.generation not in gens:
        print(f"error: run {args.run_id} has no finished generation {args.generation}", file=sys.stderr)
        return 2
    with make_sink(not args.no_tui) as sink:
        delay = args.delay if args.delay is not None else (0.05 if not args.no_tui else 0.0)
        for event in replay_events(data, args.generation):
            sink.emit(event)
            time.sleep(delay)
    return 0


if __name__ == "__main__":
    sys.exit(main())
