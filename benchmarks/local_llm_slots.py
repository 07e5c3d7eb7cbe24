"""Server slots (llama.cpp continuous batching) on this machine: drafts per minute.

    python -m benchmarks.local_llm_slots [--slots 1,2,4] [--drafts 8] [--llm-model NAME] [--prompts compact]

For each slot count N the local server is started with N slots and one
generation's init drafts (``--drafts``, one idea family each, as the graph
asks them) are sent N at a time through the real proposer; the figure is
drafts per minute of wall time, with the share that parses and passes the
sandbox's static gate (no evaluation: this measures the LLM only). Settings
alternate round by round (1, 2, 4, 1, 2, 4, ...) so that the machine's
changing load hits them alike; the 1-minute load average is recorded per
round. Results: benchmarks/results/local_llm_slots.json.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks.local_llm import RESULTS, layer_table, machine, metrics, model_path, short_name

OUT = RESULTS / "local_llm_slots.json"


def one_round(llm, prompts, ctx, drafts: int, slots: int) -> dict:
    """``drafts`` init drafts, ``slots`` in flight at once; wall time and gate-valid share."""
    from agents.drafts import DraftError
    from agents.llm import LLMCallError
    from agents.proposer import propose
    from sandbox.gate import GateRejection, check_source

    families = prompts.idea_families

    def one(i: int) -> dict:
        try:
            proxy, record = propose(llm, prompts, ctx, idea=families[i % len(families)])
        except (DraftError, LLMCallError) as err:
            rec = getattr(err, "record", None)
            return {"gate_ok": False, "tokens_out": rec.tokens_out if rec else 0}
        try:
            check_source(proxy.code)
            ok = True
        except GateRejection:
            ok = False
        return {"gate_ok": ok, "tokens_out": record.tokens_out or 0}

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=slots) as pool:
        rows = list(pool.map(one, range(drafts)))
    wall = time.perf_counter() - start
    return {"slots": slots, "drafts": drafts, "wall_s": round(wall, 1),
            "drafts_per_min": round(drafts / wall * 60, 2),
            "gate_ok": sum(r["gate_ok"] for r in rows), "tokens_out": sum(r["tokens_out"] for r in rows),
            "load_1m": round(os.getloadavg()[0], 2)}


def main(argv: list[str] | None = None) -> int:
    from agents.context import DraftContext, describe_task
    from agents.llm import LLMSettings, make_llm
    from agents.local_server import LocalLLMServer
    from agents.prompts import PromptSet
    from mpq.task import Task

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--slots", default="1,2,4")
    p.add_argument("--drafts", type=int, default=8, help="init drafts per round (default 8: one generation)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--llm-model", default=None)
    p.add_argument("--prompts", default="compact")
    p.add_argument("--max-tokens", type=int, default=700)
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    slot_counts = [int(s) for s in args.slots.split(",") if s]
    task = Task()
    prompts = PromptSet.load(args.prompts)
    ctx = DraftContext(task=describe_task(task), layers=layer_table(task))
    path = model_path(args.llm_model)
    results = json.loads(args.out.read_text()) if args.out.exists() else {"rounds": []}
    results.update(machine=machine(), model=path.stem, prompts=args.prompts, max_tokens=args.max_tokens)
    for _ in range(args.rounds):
        for slots in slot_counts:
            with tempfile.TemporaryDirectory() as logs, LocalLLMServer(model_path=path, log_dir=logs, slots=slots) as server:
                llm = make_llm(LLMSettings(spec="local", base_url=server.base_url, local_model=str(path),
                                           timeout_s=1800, retries=0, max_tokens=args.max_tokens))
                base = metrics(server.base_url)
                row = one_round(llm, prompts, ctx, args.drafts, slots)
                now = metrics(server.base_url)
                row["generation_tokens_per_s"] = round(
                    (now["tokens_predicted_total"] - base["tokens_predicted_total"])
                    / max(now["tokens_predicted_seconds_total"] - base["tokens_predicted_seconds_total"], 1e-9), 1)
            row.update(model=short_name(path.stem), prompts=args.prompts)
            results["rounds"].append(row)
            print(json.dumps(row), flush=True)
            args.out.write_text(json.dumps(results, indent=1))
    summary = {}
    for slots in slot_counts:
        sel = [r for r in results["rounds"] if r["slots"] == slots and r.get("model") == short_name(path.stem)]
        summary[str(slots)] = {"rounds": len(sel), "drafts_per_min": round(sum(r["drafts"] for r in sel) / sum(r["wall_s"] for r in sel) * 60, 2),
                               "gate_ok_rate": round(sum(r["gate_ok"] for r in sel) / sum(r["drafts"] for r in sel), 3),
                               "load_1m_mean": round(sum(r["load_1m"] for r in sel) / len(sel), 2)}
    results.setdefault("summary", {})[short_name(path.stem)] = summary
    args.out.write_text(json.dumps(results, indent=1))
    print(json.dumps(results["summary"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
