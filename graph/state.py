"""The search state: what LangGraph checkpoints after every super-step.

Only plain data lives here (TypedDicts of str/int/float/list/dict), so every
checkpoint is a faithful, serialisable snapshot. The LLM, the sandbox pool and
the store handle travel in the runtime context (graph.nodes.Context), never in
the state.

Also here: the pure functions that turn results into the next population and
context library (paper Sec. 3: top N of old + new, ties to the newer proxy;
the library holds the top 10% so far).
"""
from __future__ import annotations

import math
import operator
from typing import Annotated, NotRequired, TypedDict

LIBRARY_FRACTION = 0.10
"""Share of all finished proxies shown to mutation / crossover (paper: top 10%)."""


class CandidateSpec(TypedDict):
    """One candidate the controller planned: which operator, which parents."""

    id: str  # "g2-c5": generation 2, slot 5 (deterministic, so resume finds it again)
    generation: int
    slot: int
    operator: str  # init | mutation | crossover (the template drawn) | human (a seed of generation 0)
    parents: list[str]  # candidate ids of the parents (empty for init)
    idea: NotRequired[str]  # init: the idea family the draft is asked to follow (graph.plan)
    baseline: NotRequired[str]  # human: the mpq.proxies baseline it is


class Attempt(TypedDict, total=False):
    """One candidate's pipeline state (the ``candidate`` subgraph): draft -> evaluate
    (-> critic -> evaluate). In: spec, parents, library; out: its final record in ``archive``."""

    spec: CandidateSpec
    parents: list["ProxyRecord"]  # the parents' records, for mutation / crossover
    library: list["ProxyRecord"]  # the context library when the generation was planned
    attempt: int  # 0 = the operator's draft, k = the k-th critic repair
    reasoning: str
    code: str
    ast_hash: str
    error: str  # the last failure, for the critic
    archive: Annotated[list["ProxyRecord"], operator.add]


class CandidateOutput(TypedDict):
    """What a candidate's subgraph hands back to the search: its final record."""

    archive: Annotated[list["ProxyRecord"], operator.add]


class ProxyRecord(TypedDict):
    """A finished candidate (its last attempt): what population and library hold."""

    id: str
    generation: int
    slot: int
    operator: str
    parents: list[str]
    reasoning: str
    code: str
    ast_hash: str
    status: str  # ok | rejected | error | timeout | killed | draft_error
    phi: float  # -inf unless status == ok
    rho_sens: float | None
    acc_quant: float | None
    avg_bits: float | None
    size_mb: float | None
    bits: dict[str, int]
    repairs: int
    error: str


class SearchState(TypedDict, total=False):
    """The checkpointed state of one run (the run's settings are referenced by ``run_id``)."""

    run_id: str
    generation: int
    """The generation being run (0-based); select() advances it."""
    candidates: list[CandidateSpec]
    """This generation's plan, written by the controller."""
    archive: Annotated[list[ProxyRecord], operator.add]
    """Every finished candidate of every generation (parallel branches append)."""
    population: list[ProxyRecord]
    library: list[ProxyRecord]
    weights: dict[str, float]
    """Controller weights after the last update, one per template (unnormalised, graph.controller)."""
    probs: dict[str, float]
    """The weights normalised, with the floor: what the next generation's operators are drawn from."""
    best: ProxyRecord | None
    final: dict
    """finalize()'s summary: test accuracy of the best proxy's allocation, output paths."""


def age_key(record: ProxyRecord) -> tuple[int, int]:
    """Newer = later generation, then higher slot (a fixed order, not completion time)."""
    return (record["generation"], record["slot"])


def rank(records: list[ProxyRecord]) -> list[ProxyRecord]:
    """Best first: higher phi, ties to the newer proxy; -inf last."""
    return sorted(records, key=lambda r: (-_phi(r), tuple(-k for k in age_key(r))))


def replace_population(old: list[ProxyRecord], new: list[ProxyRecord], size: int) -> list[ProxyRecord]:
    """Top ``size`` of old + new, ties to the newer; one entry per distinct proxy (AST hash).

    A proxy drafted again (same AST hash) is the same proxy: only its newest
    copy competes, so duplicates never crowd the population.
    """
    newest: dict[str, ProxyRecord] = {}
    for record in sorted(old + new, key=age_key):
        newest[record["ast_hash"] or record["id"]] = record
    return rank(list(newest.values()))[:size]


def context_library(archive: list[ProxyRecord], fraction: float = LIBRARY_FRACTION) -> list[ProxyRecord]:
    """The top ``fraction`` (at least one) of all distinct working proxies so far."""
    working = replace_population([], [r for r in archive if math.isfinite(_phi(r))], len(archive))
    if not working:
        return []
    return working[: max(1, math.ceil(fraction * len(working)))]


def generation_done(state: SearchState) -> bool:
    """Every planned candidate of the current generation has a finished record."""
    finished = {r["id"] for r in state.get("archive", []) if r["generation"] == state["generation"]}
    return all(c["id"] in finished for c in state.get("candidates", []))


def _phi(record: ProxyRecord) -> float:
    phi = record.get("phi")
    return -math.inf if phi is None or math.isnan(phi) else phi
