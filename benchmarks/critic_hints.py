"""Would candidate critic hints help? Replayed failures, with the project's hints and with the candidates too.

The candidates (``--candidates``, default ``benchmarks/reference/critic_hints_candidate.md``, the
format of ``prompts/hints.md``) are hints for failures the critic is shown only as a rule name or
a parser message: the gate's ``dunder`` and ``import`` rules, a module without ``score``, code
that does not parse. This benchmark takes the drafts of ``benchmarks.local_llm`` runs that ended
on a failure a candidate matches (with their last code) and asks the real critic
(``agents.critic.repair``, the default model on the local server) to repair each one with the
project's hints ("before") and with the candidates added ("after"), in that order per case, each
repair judged in the real sandbox; fixed = evaluated with status ``ok``.

    python -m benchmarks.critic_hints [--files local_llm_1.5b_compact.json ...] [--samples 1]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import tempfile
import time
from pathlib import Path

from agents.prompts import parse_error_hints
from benchmarks.local_llm import layer_table, machine, model_path
from benchmarks.local_llm_report import RESULTS

PROJECT = Path(__file__).resolve().parent.parent
CANDIDATES = PROJECT / "benchmarks" / "reference" / "critic_hints_candidate.md"
DEFAULT_FILES = ("local_llm_1.5b_compact.json", "local_llm_0.5b_compact.json")


def cases(files: list[str], patterns: list[str]) -> list[dict]:
    """Failed drafts whose last failure one of ``patterns`` matches, and which left code."""
    found = []
    for name in files:
        for row in json.loads((RESULTS / name).read_text())["drafts"]:
            reason = row.get("reason") or ""
            if not row.get("valid") and row.get("code") and any(re.search(p, reason) for p in patterns):
                found.append({"file": name, "template": row["template"], "i": row["i"], "reason": reason,
                              "code": row["code"]})
    return found


def repaired(llm, prompts, ctx, pool, case: dict, request_id: str) -> dict:
    """One critic repair of ``case`` with ``prompts``' hints, judged in the sandbox."""
    from agents.context import EvalFailure
    from agents.critic import repair
    from agents.drafts import DraftError
    from agents.llm import LLMCallError

    start = time.perf_counter()
    try:
        draft, _ = repair(llm, prompts, ctx, case["code"], EvalFailure(case["reason"], ""))
    except (DraftError, LLMCallError) as err:
        status = "call" if isinstance(err, LLMCallError) else "parse"
        return {"fixed": False, "status": status, "reason": str(err)[:200],
                "seconds": round(time.perf_counter() - start, 1)}
    result = pool.evaluate(draft.code, request_id)
    return {"fixed": result.ok, "status": result.status, "reason": result.reason[:200],
            "seconds": round(time.perf_counter() - start, 1)}


def main(argv: list[str] | None = None) -> int:
    from agents.context import DraftContext, describe_task
    from agents.llm import LLMSettings, make_llm
    from agents.local_server import LocalLLMServer
    from agents.prompts import PromptSet
    from mpq.task import Task
    from sandbox.pool import EvaluatorPool

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", nargs="+", default=list(DEFAULT_FILES))
    parser.add_argument("--samples", type=int, default=1, help="repairs per case and hint set")
    parser.add_argument("--prompts", default="compact")
    parser.add_argument("--candidates", type=Path, default=CANDIDATES, help="hint items to try (hints.md format)")
    parser.add_argument("--out", type=Path, default=RESULTS / "critic_hints.json")
    args = parser.parse_args(argv)

    before = PromptSet.load(args.prompts)
    candidates = parse_error_hints(args.candidates.read_text(), str(args.candidates))
    after = dataclasses.replace(before, error_hints=before.error_hints + candidates)
    task = Task()
    ctx = DraftContext(task=describe_task(task), layers=layer_table(task))
    work, rows = cases(args.files, [p for p, _ in candidates]), []
    print(f"{len(work)} cases x 2 hint sets x {args.samples}", flush=True)
    with EvaluatorPool(task, workers=1) as pool, tempfile.TemporaryDirectory() as logs:
        pool.wait_ready()
        path = model_path(None)
        with LocalLLMServer(model_path=path, log_dir=logs) as server:
            llm = make_llm(LLMSettings(spec="local", base_url=server.base_url, local_model=str(path), retries=0))
            for n, case in enumerate(work):
                for sample in range(args.samples):
                    for label, prompts in (("before", before), ("after", after)):
                        # failure: what the case ended on; reason (from repaired): what the repair ended on
                        row = {**{k: case[k] for k in ("file", "template", "i")}, "failure": case["reason"],
                               "hints": label, "sample": sample,
                               **repaired(llm, prompts, ctx, pool, case, f"{n}-{label}-{sample}")}
                        rows.append(row)
                        print(f"{time.strftime('%H:%M:%S')} case {n} {label:6s} fixed={row['fixed']!s:5s} "
                              f"{row['status']} {row['seconds']:.0f}s {row['reason'][:70]}", flush=True)
                        write(args, path, rows)
    return 0


def write(args, path: Path, rows: list[dict]) -> None:
    summary = {label: {"repairs": sum(r["hints"] == label for r in rows),
                       "fixed": sum(r["hints"] == label and r["fixed"] for r in rows)} for label in ("before", "after")}
    args.out.write_text(json.dumps({"machine": machine(), "model": path.stem, "prompts": args.prompts,
                                    "candidates": os.path.relpath(args.candidates.resolve(), PROJECT), "summary": summary, "rows": rows}, indent=1))


if __name__ == "__main__":
    raise SystemExit(main())
