"""What the store and the state hold of a candidate: ids, rows, records, summaries.

Pure functions, shared by the nodes (graph.nodes), the report and the replay.
"""
from __future__ import annotations

import math
from typing import Any

from agents.context import EvalFailure, Parent
from agents.drafts import ProxyDraft
from agents.llm import LLMCallRecord
from graph.state import Attempt, CandidateSpec, ProxyRecord


def proxy_id(spec: CandidateSpec, attempt: int) -> str:
    """``g2-c5`` for the operator's draft, ``g2-c5.1`` for the first repair."""
    return spec["id"] if attempt == 0 else f"{spec['id']}.{attempt}"


def parent_of(record: ProxyRecord) -> Parent:
    """A finished proxy as the agents show it (parent or library entry)."""
    return Parent(id=record["id"], code=record["code"], reasoning=record["reasoning"],
                  phi=record["phi"], rho_sens=record["rho_sens"], acc_quant=record["acc_quant"])


def proxy_row(spec: CandidateSpec, attempt: int, draft: ProxyDraft) -> dict:
    """The ``proxies`` row of a draft (``template`` = the operator planned, ``operator`` = what drafted it)."""
    return {"id": proxy_id(spec, attempt), "candidate": spec["id"], "generation": spec["generation"],
            "slot": spec["slot"], "attempt": attempt, "operator": draft.operator, "template": spec["operator"],
            "parents": list(draft.parents), "code": draft.code, "reasoning": draft.reasoning,
            "ast_hash": draft.ast_hash}


def call_row(record: LLMCallRecord) -> dict:
    """The ``llm_calls`` row of one call (its proxy id is added by the store)."""
    return {"agent": record.agent, "template": record.template, "prompt": record.prompt,
            "response": record.response, "tokens_in": record.tokens_in, "tokens_out": record.tokens_out,
            "latency_s": record.latency_s, "error": record.error}


EVAL_COLUMNS = ("proxy_id", "candidate", "generation", "ast_hash", "status", "phi", "rho_sens", "acc_quant",
                "avg_bits", "size_mb", "bops", "bits", "scores", "timings", "reason", "traceback_tail",
                "reused_from", "wall_s")


def evaluation_row(result: dict) -> dict:
    """The ``evaluations`` row of a sandbox result (the wire format's fields plus ids)."""
    return {k: result.get(k) for k in EVAL_COLUMNS}


def error_text(result: dict) -> str:
    """What the critic is shown of a failed result: reason and traceback tail ('' when ok)."""
    if result["status"] == "ok":
        return ""
    return str(EvalFailure(result.get("reason") or result["status"], result.get("traceback_tail") or ""))


def final_record(spec: CandidateSpec, attempt: Attempt, result: dict) -> ProxyRecord:
    """A finished candidate from its last attempt and that attempt's evaluation result."""
    ok = result["status"] == "ok" and result.get("phi") is not None
    return ProxyRecord(
        id=spec["id"], generation=spec["generation"], slot=spec["slot"], operator=spec["operator"],
        parents=list(spec["parents"]), reasoning=attempt.get("reasoning", ""), code=attempt.get("code", ""),
        ast_hash=attempt.get("ast_hash", ""), status=result["status"],
        phi=float(result["phi"]) if ok else -math.inf,
        rho_sens=result.get("rho_sens") if ok else None, acc_quant=result.get("acc_quant") if ok else None,
        avg_bits=result.get("avg_bits") if ok else None, size_mb=result.get("size_mb") if ok else None,
        bits=dict(result.get("bits") or {}) if ok else {}, repairs=attempt["attempt"],
        error=error_text(result))


def failed_record(spec: CandidateSpec, attempt: Attempt, status: str, error: str, repairs: int) -> ProxyRecord:
    """A candidate that ended without an evaluation worth keeping (draft error, repairs used up)."""
    return final_record(spec, {**attempt, "attempt": repairs}, {"status": status, "reason": error})


def summary(record: ProxyRecord, code: bool = False) -> dict[str, Any]:
    """The compact row the TUI, the generations table and the report show."""
    out = {k: record.get(k) for k in ("id", "operator", "status", "rho_sens", "acc_quant", "avg_bits")}
    out["phi"] = num(record["phi"])
    if code:
        out["code"] = record["code"]
    return out


def num(value: float | None) -> float | None:
    """JSON-safe fitness: -inf / None -> None."""
    return value if value is not None and math.isfinite(value) else None
