"""The graph's nodes. Each is thin: one call into agents/, the sandbox or the
controller math, a store write, and a state update.

``controller`` plans a generation and sends one :class:`graph.state.Attempt`
per candidate (``Send``) to the ``candidate`` subgraph (graph.build), which
runs that candidate's pipeline on its own: ``proposer | mutator | crossover``
-> ``evaluate`` (-> ``critic`` -> ``evaluate``, at most R times) -> done.
Each Send'd subgraph runs its own super-steps, so a draft is evaluated as soon
as it exists while the LLM writes the next one (issue 13: evaluation used to
wait for the generation's last draft); ``select`` runs once every candidate
of the generation is done.

Idempotency (what makes ``--resume`` after kill -9 exact): every draft and
every evaluation is written to the store under a deterministic id before the
node returns. A node that LangGraph re-runs after a crash first looks its id
up and reuses what it finds, so no LLM call or evaluation that reached the
database is made twice. A proxy whose AST hash was evaluated before reuses
that result too (marked ``reused_from``): identical proxies are judged once.
"""
from __future__ import annotations

import ast
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from langchain_core.language_models import BaseChatModel
from langgraph.graph import END
from langgraph.runtime import Runtime
from langgraph.types import Command, Send

from agents.context import DraftContext, EvalFailure
from agents.critic import next_failure, repair_step
from agents.crossover import crossover as crossover_agent
from agents.dedupe import ast_hash
from agents.drafts import DraftError, ProxyDraft
from agents.llm import LLMCallError
from agents.mutator import mutate
from agents.prompts import PromptSet
from agents.proposer import propose
from graph.config import RunConfig
from graph.controller import Outcome, update
from graph.plan import plan_generation
from graph.records import (
    call_row,
    error_text,
    evaluation_row,
    failed_record,
    final_record,
    num,
    parent_of,
    proxy_id,
    proxy_row,
    summary,
)
from graph.state import (
    Attempt,
    CandidateSpec,
    ProxyRecord,
    SearchState,
    context_library,
    generation_done,
    replace_population,
)
from graph.store import RunStore
from mpq.proxies import BASELINES, baseline_source

DONE = END
"""Where a candidate's pipeline goes when its record is final (the subgraph's end)."""
DRAFT_NODES = {"init": "proposer", "mutation": "mutator", "crossover": "crossover", "human": "human"}
"""The subgraph's first node for each operator."""

Evaluate = Callable[[str, str], dict]
"""(proxy id, source) -> the sandbox's EvaluationResult as a dict (the wire format)."""


@dataclass
class Clock:
    """Where the run's time goes: summed seconds and the busy intervals (perf_counter)
    of the LLM and of the sandbox slots, from all threads."""

    llm_s: float = 0.0
    eval_s: float = 0.0
    wait_s: float = 0.0
    final_s: float = 0.0
    spans: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, what: str, seconds: float) -> None:
        with self._lock:
            setattr(self, what, getattr(self, what) + seconds)

    def span(self, what: str, start: float, end: float) -> None:
        with self._lock:
            self.spans.setdefault(what, []).append((start, end))


@dataclass
class Context:
    """What the nodes need that is not state: never checkpointed."""

    config: RunConfig
    llm: BaseChatModel
    prompts: PromptSet
    evaluate: Evaluate
    store: RunStore
    draft_context: DraftContext
    clock: Clock = field(default_factory=Clock)
    finalize: Callable[[SearchState, "Context"], dict] | None = None
    llm_slots: threading.Semaphore = field(default_factory=lambda: threading.Semaphore(64))
    """Calls in flight at once. The embedded local server answers one request at a time:
    queueing in the graph (not in the server) keeps each call's client timeout for its own work."""


# -- controller ------------------------------------------------------------------
def controller(state: SearchState, runtime: Runtime[Context]) -> dict:
    """Plan the generation (graph.plan): seeds or drafts, operators drawn from p, parents from the
    library, one idea family per init draft."""
    ctx = runtime.context
    search = ctx.config.search
    candidates = plan_generation(state, search.population, ctx.config.seed, search.seed_population,
                                 ctx.prompts.idea_families, tuple(BASELINES))
    runtime.stream_writer({"event": "generation", "generation": state["generation"],
                           "operators": [{"id": c["id"], "operator": c["operator"]} for c in candidates]})
    return {"candidates": candidates}


def fan_out(state: SearchState) -> list[Send]:
    """One Send per candidate to the ``candidate`` subgraph: its spec, parents and the library."""
    by_id = {r["id"]: r for r in state.get("archive", [])}
    return [Send("candidate", Attempt(spec=spec, attempt=0, parents=[by_id[p] for p in spec["parents"]],
                                      library=state.get("library", [])))
            for spec in state["candidates"]]


def first_node(attempt: Attempt) -> str:
    """The subgraph's entry: the node of the candidate's operator."""
    return DRAFT_NODES[attempt["spec"]["operator"]]


# -- drafting --------------------------------------------------------------------
def proposer(attempt: Attempt, runtime: Runtime[Context]) -> Command:
    idea = attempt["spec"].get("idea") or None
    return _draft(attempt, runtime, lambda ctx, dctx, parents: propose(ctx.llm, ctx.prompts, dctx, idea=idea))


def mutator(attempt: Attempt, runtime: Runtime[Context]) -> Command:
    return _draft(attempt, runtime, lambda ctx, dctx, parents: mutate(ctx.llm, ctx.prompts, dctx, parents[0]))


def crossover(attempt: Attempt, runtime: Runtime[Context]) -> Command:
    return _draft(attempt, runtime,
                  lambda ctx, dctx, parents: crossover_agent(ctx.llm, ctx.prompts, dctx, parents[0], parents[1]))


def human(attempt: Attempt, runtime: Runtime[Context]) -> Command:
    """A human baseline (mpq.proxies) as a candidate: its own source, no LLM, then the same
    evaluate path as every draft (never repaired: the critic does not edit human proxies)."""
    ctx, spec = runtime.context, attempt["spec"]
    stored = ctx.store.get("proxies", spec["id"])
    if stored is None:
        code = baseline_source(spec["baseline"])
        docstring = (ast.get_docstring(ast.parse(code)) or "").strip()
        stored = {**proxy_row(spec, 0, ProxyDraft(docstring.split("\n\n")[0], code, "human", (), ast_hash(code))),
                  "reasoning": f"human baseline {spec['baseline']}: {docstring.splitlines()[0] if docstring else ''}"}
        ctx.store.record_proxy(stored, [])
    runtime.stream_writer({"event": "draft", "id": spec["id"], "operator": "human"})
    return Command(update={"attempt": 0, "code": stored["code"], "reasoning": stored["reasoning"],
                           "ast_hash": stored["ast_hash"]}, goto="evaluate")


def _draft(attempt: Attempt, runtime: Runtime[Context], agent: Callable) -> Command:
    ctx, spec = runtime.context, attempt["spec"]
    pid = proxy_id(spec, 0)
    stored = ctx.store.get("proxies", pid)
    if stored is None:
        dctx = _draft_context(ctx, attempt.get("library", []))
        parents = [parent_of(p) for p in attempt.get("parents", [])]
        outcome = _call_agent(runtime, spec, lambda: agent(ctx, dctx, parents))
        if isinstance(outcome, NoDraft):  # no usable proxy: the candidate fails here
            ctx.store.record_llm_calls(pid, outcome.calls)
            runtime.stream_writer({"event": "draft_error", "id": spec["id"], "error": outcome.reason})
            if outcome.code and ctx.config.search.repairs > 0:  # broken code is the critic's job
                return Command(update={"attempt": 0, "code": outcome.code, "reasoning": "",
                                       "ast_hash": ast_hash(outcome.code), "error": outcome.reason}, goto="critic")
            return _finish(runtime, failed_record(spec, attempt, "draft_error", outcome.reason, 0))
        draft, record = outcome
        stored = proxy_row(spec, 0, draft)
        ctx.store.record_proxy(stored, [call_row(record)])
    runtime.stream_writer({"event": "draft", "id": spec["id"], "operator": spec["operator"]})
    return Command(update={"attempt": 0, "code": stored["code"], "reasoning": stored["reasoning"],
                           "ast_hash": stored["ast_hash"]}, goto="evaluate")


def _finish(runtime: Runtime[Context], record: ProxyRecord) -> Command:
    """The candidate's final record into the archive; its pipeline ends."""
    runtime.stream_writer({"event": "candidate_done", "id": record["id"], "status": record["status"],
                           "phi": num(record["phi"])})
    return Command(update={"archive": [record]}, goto=DONE)


@dataclass(frozen=True)
class NoDraft:
    """An agent call that produced no usable proxy: why, and the LLM calls it made."""

    reason: str
    calls: list[dict]
    code: str | None = None
    """Code the response did hold (e.g. it does not parse): the critic may fix it."""


def _call_agent(runtime: Runtime[Context], spec: CandidateSpec, call: Callable) -> Any:
    """The agent's result, or a NoDraft saying why it produced none; the call's time goes to
    the clock and to the view (``llm_call`` events feed the expected time to finish)."""
    ctx = runtime.context
    with ctx.llm_slots:
        start = time.perf_counter()
        try:
            return call()
        except (DraftError, LLMCallError) as err:
            record = getattr(err, "record", None)
            return NoDraft(getattr(err, "reason", None) or str(err), [call_row(record)] if record else [],
                           getattr(err, "code", None))
        finally:
            end = time.perf_counter()
            ctx.clock.add("llm_s", end - start)
            ctx.clock.span("llm", start, end)
            runtime.stream_writer({"event": "llm_call", "id": spec["id"], "seconds": end - start})


def _draft_context(ctx: Context, library: list[ProxyRecord]) -> DraftContext:
    from dataclasses import replace

    return replace(ctx.draft_context, library=tuple(parent_of(p) for p in library))


# -- evaluation and repair -------------------------------------------------------------
def evaluate(attempt: Attempt, runtime: Runtime[Context]) -> Command:
    """Sandbox one attempt (or reuse its stored / same-hash result); ok or out of repairs -> done,
    failed -> critic."""
    ctx, spec, n = runtime.context, attempt["spec"], attempt["attempt"]
    pid = proxy_id(spec, n)
    result = ctx.store.get("evaluations", pid)
    reused, inside = result is not None, 0.0
    if result is None:
        earlier = ctx.store.evaluation_by_hash(attempt["ast_hash"])
        if earlier is not None:
            result = {**earlier, "reused_from": earlier["proxy_id"], "wall_s": 0.0}
        else:
            runtime.stream_writer({"event": "eval_start", "id": spec["id"], "attempt": n})
            start = time.perf_counter()
            result = ctx.evaluate(pid, attempt["code"])
            result["wall_s"] = time.perf_counter() - start
            # Time in the slot vs. waiting for one (a slot warming up, or all busy).
            inside = min((result.get("timings") or {}).get("roundtrip_s", result["wall_s"]), result["wall_s"])
            ctx.clock.add("eval_s", inside)
            ctx.clock.add("wait_s", result["wall_s"] - inside)
            ctx.clock.span("eval", start + result["wall_s"] - inside, start + result["wall_s"])
        result = {**result, "proxy_id": pid, "candidate": spec["id"], "generation": spec["generation"],
                  "ast_hash": attempt["ast_hash"]}
        ctx.store.record_evaluation(evaluation_row(result))
    reused = reused or bool(result.get("reused_from"))
    ok = result["status"] == "ok"
    final = ok or n >= ctx.config.search.repairs or spec["operator"] == "human"
    error = error_text(result)
    runtime.stream_writer({"event": "eval_done", "id": spec["id"], "attempt": n, "status": result["status"],
                           "phi": result.get("phi"), "rho_sens": result.get("rho_sens"),
                           "acc_quant": result.get("acc_quant"), "error": error.splitlines()[0] if error else "",
                           "reused": reused, "final": final, "eval_s": inside})
    if final:
        return _finish(runtime, final_record(spec, attempt, result))
    return Command(update={"error": error}, goto="critic")


def critic(attempt: Attempt, runtime: Runtime[Context]) -> Command:
    """One repair step (agents.critic.repair_step, the one repair policy); a usable repair is the
    next attempt, anything else counts as a try and goes back to the critic while tries are left."""
    ctx, spec = runtime.context, attempt["spec"]
    n = attempt["attempt"] + 1
    pid = proxy_id(spec, n)
    runtime.stream_writer({"event": "repair", "id": spec["id"], "attempt": n,
                           "error": attempt["error"].splitlines()[0] if attempt["error"] else ""})
    stored = ctx.store.get("proxies", pid)
    if stored is None:
        dctx = _draft_context(ctx, attempt.get("library", []))
        step = _call_agent(runtime, spec, lambda: repair_step(ctx.llm, ctx.prompts, dctx, attempt["code"],
                                                              EvalFailure(attempt["error"])))
        if step.draft is None:  # not evaluated; the critic sees its own broken code, or the old code again
            ctx.store.record_llm_calls(pid, [call_row(r) for r in step.records])
            error = str(next_failure(step, attempt["code"], EvalFailure(attempt["error"])))
            if n >= ctx.config.search.repairs:
                return _finish(runtime, failed_record(spec, attempt, "error", error, n))
            return Command(update={"attempt": n, "code": step.code, "ast_hash": ast_hash(step.code), "error": error},
                           goto="critic")
        stored = proxy_row(spec, n, step.draft)
        ctx.store.record_proxy(stored, [call_row(r) for r in step.records])
    return Command(update={"attempt": n, "code": stored["code"], "reasoning": stored["reasoning"],
                           "ast_hash": stored["ast_hash"]}, goto="evaluate")


# -- selection -----------------------------------------------------------------------
def select(state: SearchState, runtime: Runtime[Context]) -> dict:
    """When the generation's last candidate is in: population, library, controller, persist.

    Every candidate's subgraph has ended when this node runs (they are one
    super-step of the outer graph); the check guards a hand-edited state
    (``update_state``).
    """
    if not generation_done(state):
        return {}
    ctx, gen = runtime.context, state["generation"]
    search = ctx.config.search
    new = [r for r in state["archive"] if r["generation"] == gen]
    population = replace_population(state.get("population", []), new, search.population)
    library = context_library(state["archive"])
    outcomes = [Outcome(r["operator"], r["phi"]) for r in sorted(new, key=lambda r: r["slot"])]
    weights, probs = update(state["probs"], outcomes, search.controller)
    best = population[0] if population and math.isfinite(population[0]["phi"]) else state.get("best")
    finite = [r["phi"] for r in new if math.isfinite(r["phi"])]
    ctx.store.record_controller({"generation": gen, "kind": search.controller.kind, "weights": weights,
                                 "probs": probs, "outcomes": [[o.template, num(o.fitness)] for o in outcomes]})
    ctx.store.record_generation({
        "generation": gen, "candidates": len(new), "ok": len(finite),
        "best_phi": max(finite) if finite else None, "mean_phi": sum(finite) / len(finite) if finite else None,
        "best_id": best["id"] if best else None, "population": [summary(r) for r in population],
        "plan": [{"id": c["id"], "operator": c["operator"]} for c in state["candidates"]]})
    runtime.stream_writer({"event": "select", "generation": gen, "probs": probs,
                           "population": [summary(r) for r in population],
                           "best": summary(best, code=True) if best else None})
    return {"population": population, "library": library, "weights": weights, "probs": probs,
            "best": best, "generation": gen + 1, "candidates": []}


def after_select(state: SearchState, runtime: Runtime[Context]) -> list[str] | str:
    """Wait (no next node) while candidates are in flight; then next generation or finalize."""
    if not generation_done(state):
        return []
    return "finalize" if state["generation"] >= runtime.context.config.search.generations else "controller"


def finalize(state: SearchState, runtime: Runtime[Context]) -> dict:
    """Best proxy -> its allocation -> the quantized model on the held-out test split -> report."""
    ctx = runtime.context
    start = time.perf_counter()
    final = ctx.finalize(state, ctx) if ctx.finalize else {}
    ctx.clock.add("final_s", time.perf_counter() - start)
    runtime.stream_writer({"event": "finalize", **{k: final.get(k) for k in ("test_acc", "avg_bits", "run_dir")}})
    return {"final": final}
