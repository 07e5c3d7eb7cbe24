"""Planning a generation: its candidates, each with an operator, parents, and an idea
family (init) or a human baseline (seed).

Generation 0 is the seed population (``--seed-population``): ``llm`` = N init
drafts, ``human`` = the human baselines of ``mpq.proxies`` (judged by the same
evaluate path, operator ``human``), ``both`` = the baselines plus N init
drafts, so the search starts at the best human proxy and tries to beat it
(issue 13, item 3). Later generations draw each candidate's operator from the
controller's probabilities and its parents from the context library.

Each init candidate gets an idea family of the prompt set
(``PromptSet.idea_families``): the k-th init candidate of generation g gets
family ``(g * N + k) % len(families)``, so generation 0's N drafts do not
share one prompt, and later init drafts go on through the list.
"""
from __future__ import annotations

import math
import random

from graph.controller import draw_operators
from graph.state import CandidateSpec, ProxyRecord, SearchState

SEED_POPULATIONS: tuple[str, ...] = ("llm", "human", "both")
"""What generation 0 is made of."""
PARENTS_NEEDED = {"init": 0, "mutation": 1, "crossover": 2}


def plan_generation(state: SearchState, population: int, seed: int, seed_population: str = "llm",
                    families: tuple[str, ...] = (), baselines: tuple[str, ...] = ()) -> list[CandidateSpec]:
    """The candidates of ``state["generation"]``; deterministic in (seed, generation), so a
    resumed run plans the same generation again."""
    gen = state["generation"]
    rng = random.Random(f"{seed}:controller:{gen}")
    humans = baselines if gen == 0 and seed_population in ("human", "both") else ()
    drafts = 0 if gen == 0 and seed_population == "human" else population
    operators = draw_operators(state["probs"], drafts, gen, rng)
    pool = parent_pool(state)
    candidates = [CandidateSpec(id=f"g{gen}-c{slot}", generation=gen, slot=slot, operator="human", parents=[],
                                baseline=name) for slot, name in enumerate(humans)]
    inits = 0
    for slot, op in enumerate(operators, start=len(candidates)):
        need = PARENTS_NEEDED[op]
        if need > len(pool):  # too few working proxies so far: fall back to a simpler operator
            op, need = ("mutation", 1) if len(pool) == 1 else ("init", 0)
        spec = CandidateSpec(id=f"g{gen}-c{slot}", generation=gen, slot=slot, operator=op,
                             parents=[p["id"] for p in rng.sample(pool, need)] if need else [])
        if op == "init" and families:
            spec["idea"] = families[(gen * population + inits) % len(families)]
            inits += 1
        candidates.append(spec)
    return candidates


def parent_pool(state: SearchState) -> list[ProxyRecord]:
    """The context library, topped up with the best of the population to at least two proxies."""
    pool = list(state.get("library", []))
    seen = {p["id"] for p in pool}
    for record in state.get("population", []):
        if len(pool) >= 2:
            break
        if record["id"] not in seen and math.isfinite(record["phi"]):
            pool.append(record)
    return pool
