"""The graph's nodes alone (graph/nodes.py), each with a fake context: a scripted
LLM through the agents' real parsing, a plain function as the evaluator, a real
RunStore in a temporary folder. No sandbox, no model, no graph run."""
from __future__ import annotations

import json
import math

import pytest
from langgraph.runtime import Runtime
from langgraph.types import Send

from agents.context import DraftContext
from agents.llm import LLMSettings, make_llm
from agents.prompts import PromptSet
from graph import nodes
from graph.config import RunConfig, SearchSettings
from graph.controller import ControllerSettings, initial_weights, probabilities
from graph.state import Attempt, CandidateSpec
from graph.store import RunStore

F = "```"


def proxy(phi: float, extra: str = "") -> str:
    """A proxy whose fake evaluation gives ``phi`` (see :func:`evaluator`)."""
    return f"def score(layer):\n    return float(layer.params)  # phi={phi}{extra}\n"


BROKEN = "def score(layer):\n    return float(layer.weights.sum())  # phi=0.5\n"  # no such attribute
UNPARSABLE = "def score(layer:\n    return 1.0\n"


def answer(code: str, reasoning: str = "An idea.") -> str:
    return f"{reasoning}\n\n{F}python\n{code}{F}\n"


def evaluator(calls: list):
    """A plain function in the sandbox's place: ``layer.weights`` fails, otherwise phi from the code."""
    def evaluate(proxy_id: str, source: str) -> dict:
        calls.append(proxy_id)
        if "layer.weights" in source:
            return {"status": "error", "reason": "AttributeError: 'LayerInfo' has no attribute 'weights'",
                    "traceback_tail": "line 2, in score", "phi": None}
        phi = float(source.split("phi=")[1].split()[0].rstrip(")"))
        return {"status": "ok", "phi": phi, "rho_sens": phi / 2, "acc_quant": phi, "avg_bits": 3.0,
                "size_mb": 0.5, "bits": {"conv1": 8}, "timings": {"roundtrip_s": 0.0}}
    return evaluate


class Harness:
    """A node's runtime: context, collected events, evaluator calls."""

    def __init__(self, tmp_path, script: dict | list | None = None, population: int = 3, repairs: int = 2,
                 kind: str = "paper", seed: int = 0, seed_population: str = "llm"):
        path = tmp_path / "script.json"
        path.write_text(json.dumps(script or ["no code here"]))
        self.store = RunStore.open(tmp_path / "run.db")
        self.evals: list[str] = []
        self.events: list[dict] = []
        config = RunConfig(run_id="t", runs_dir=str(tmp_path), seed=seed, search=SearchSettings(
            population=population, repairs=repairs, controller=ControllerSettings(kind=kind),
            seed_population=seed_population))
        self.ctx = nodes.Context(config=config, llm=make_llm(LLMSettings(spec=f"scripted:{path}")),
                                 prompts=PromptSet.load(), evaluate=evaluator(self.evals), store=self.store,
                                 draft_context=DraftContext(task="TASK", layers="LAYERS"))
        self.runtime = Runtime(context=self.ctx, stream_writer=self.events.append)

    def llm_calls(self) -> list[dict]:
        return self.store.rows("llm_calls", order_by="id")


@pytest.fixture
def harness(tmp_path):
    h = Harness(tmp_path)
    yield h
    h.store.close()


def spec(gen: int = 0, slot: int = 0, operator: str = "init", parents=()) -> CandidateSpec:
    return CandidateSpec(id=f"g{gen}-c{slot}", generation=gen, slot=slot, operator=operator, parents=list(parents))


def attempt(code: str, n: int = 0, error: str = "", **kw) -> Attempt:
    from agents.dedupe import ast_hash

    return Attempt(spec=kw.pop("spec", spec()), attempt=n, code=code, reasoning="why", ast_hash=ast_hash(code),
                   error=error, **kw)


def route(command, state: dict) -> tuple[str, dict]:
    """Where a node's Command goes next, and the candidate's state when it gets there."""
    goto = command.goto
    if isinstance(goto, (list, tuple)):
        assert len(goto) == 1, goto
        goto = goto[0]
    if isinstance(goto, Send):
        return goto.node, goto.arg
    return goto, {**state, **{k: v for k, v in (command.update or {}).items() if k != "archive"}}


def archived(command) -> list[dict]:
    return (command.update or {}).get("archive", [])


def record(id: str, gen: int, slot: int, phi: float, operator: str = "init", h: str | None = None) -> dict:
    return {"id": id, "generation": gen, "slot": slot, "operator": operator, "parents": [], "reasoning": "",
            "code": proxy(phi), "ast_hash": h or id, "status": "ok" if math.isfinite(phi) else "error",
            "phi": phi, "rho_sens": None, "acc_quant": None, "avg_bits": None, "size_mb": None, "bits": {},
            "repairs": 0, "error": ""}


# -- controller -------------------------------------------------------------------------
def test_controller_plans_generation_zero_as_init(harness):
    state = {"generation": 0, "probs": probabilities(initial_weights()), "library": [], "population": []}
    plan = nodes.controller(state, harness.runtime)["candidates"]
    assert [c["id"] for c in plan] == ["g0-c0", "g0-c1", "g0-c2"]
    assert {c["operator"] for c in plan} == {"init"} and all(c["parents"] == [] for c in plan)
    assert harness.events[-1]["event"] == "generation" and len(harness.events[-1]["operators"]) == 3


def test_each_init_draft_of_a_generation_gets_its_own_idea_family(tmp_path):
    h = Harness(tmp_path, {"init": [answer(proxy(0.4))]}, population=3)
    families = h.ctx.prompts.idea_families
    assert len(families) >= 3
    state = {"generation": 0, "probs": probabilities(initial_weights()), "library": [], "population": []}
    plan = nodes.controller(state, h.runtime)["candidates"]
    assert [c["idea"] for c in plan] == list(families[:3])
    later = nodes.controller({**state, "generation": 1}, h.runtime)["candidates"]  # the list goes on
    assert [c["idea"] for c in later] == [families[(3 + i) % len(families)] for i in range(3)]
    nodes.proposer(Attempt(spec=plan[1], attempt=0), h.runtime)
    assert families[1] in h.llm_calls()[0]["prompt"] and families[0] not in h.llm_calls()[0]["prompt"]
    h.store.close()


@pytest.mark.parametrize("seed_population, humans, drafts", [("llm", 0, 3), ("human", 8, 0), ("both", 8, 3)])
def test_generation_zero_seeds(tmp_path, seed_population, humans, drafts):
    from mpq.proxies import BASELINES

    h = Harness(tmp_path, seed_population=seed_population)
    state = {"generation": 0, "probs": probabilities(initial_weights()), "library": [], "population": []}
    plan = nodes.controller(state, h.runtime)["candidates"]
    assert [c["operator"] for c in plan] == ["human"] * humans + ["init"] * drafts
    assert [c.get("baseline") for c in plan[:humans]] == list(BASELINES)[:humans]
    assert [c["slot"] for c in plan] == list(range(humans + drafts))
    assert {nodes.first_node(Attempt(spec=c)) for c in plan} == ({"human"} if humans else set()) | (
        {"proposer"} if drafts else set())
    h.store.close()


def test_a_human_seed_is_its_baseline_judged_like_a_draft_and_never_repaired(tmp_path):
    from mpq.proxies import baseline_source

    h = Harness(tmp_path)
    seed = Attempt(spec=CandidateSpec(id="g0-c0", generation=0, slot=0, operator="human", parents=[],
                                      baseline="weight_norm"), attempt=0)
    node, payload = route(nodes.human(seed, h.runtime), seed)
    assert node == "evaluate" and payload["code"] == baseline_source("weight_norm")
    row = h.store.get("proxies", "g0-c0")
    assert (row["operator"], row["template"]) == ("human", "human") and "weight_norm" in row["reasoning"]
    assert h.llm_calls() == []
    h.ctx.evaluate = lambda pid, src: {"status": "timeout", "reason": "too slow"}
    command = nodes.evaluate(payload, h.runtime)
    assert route(command, payload)[0] == nodes.DONE and archived(command)[0]["status"] == "timeout"
    h.store.close()


def test_controller_draws_from_p_and_takes_parents_from_the_library(harness):
    library = [record("g0-c1", 0, 1, 0.8), record("g0-c0", 0, 0, 0.6)]
    state = {"generation": 1, "probs": {"init": 0.0, "mutation": 0.0, "crossover": 1.0}, "library": library,
             "population": library}
    plan = nodes.controller(state, harness.runtime)["candidates"]
    assert [c["operator"] for c in plan] == ["crossover"] * 3
    assert all(sorted(c["parents"]) == ["g0-c0", "g0-c1"] for c in plan)
    again = nodes.controller(state, harness.runtime)["candidates"]
    assert again == plan  # seeded by (seed, generation): a resumed run plans the same generation


def test_controller_falls_back_when_parents_are_missing(harness):
    one = [record("g0-c0", 0, 0, 0.6)]
    state = {"generation": 1, "probs": {"init": 0.0, "mutation": 0.0, "crossover": 1.0}, "library": one,
             "population": one + [record("g0-c1", 0, 1, -math.inf)]}  # a failed proxy is never a parent
    plan = nodes.controller(state, harness.runtime)["candidates"]
    assert all(c["operator"] == "mutation" and c["parents"] == ["g0-c0"] for c in plan)
    state = {**state, "library": [], "population": []}
    assert {c["operator"] for c in nodes.controller(state, harness.runtime)["candidates"]} == {"init"}


# -- evaluate -----------------------------------------------------------------------------
def test_evaluate_ok_is_final_and_stored(harness):
    command = nodes.evaluate(attempt(proxy(0.7)), harness.runtime)
    assert route(command, {})[0] == nodes.DONE
    (rec,) = archived(command)
    assert (rec["id"], rec["status"], rec["phi"], rec["repairs"], rec["bits"]) == ("g0-c0", "ok", 0.7, 0, {"conv1": 8})
    row = harness.store.get("evaluations", "g0-c0")
    assert row["phi"] == 0.7 and row["candidate"] == "g0-c0" and harness.evals == ["g0-c0"]
    done = [e for e in harness.events if e["event"] == "eval_done"]
    assert done[-1]["final"] is True and done[-1]["eval_s"] >= 0.0
    assert harness.events[-1] == {"event": "candidate_done", "id": "g0-c0", "status": "ok", "phi": 0.7}


def test_evaluate_failure_goes_to_the_critic_with_the_error(harness):
    command = nodes.evaluate(attempt(BROKEN), harness.runtime)
    node, payload = route(command, {})
    assert node == "critic" and not archived(command)
    assert "AttributeError" in payload["error"] and "line 2, in score" in payload["error"]
    assert harness.store.get("evaluations", "g0-c0")["status"] == "error"


def test_evaluate_failure_after_the_last_repair_is_final(harness):
    command = nodes.evaluate(attempt(BROKEN, n=2), harness.runtime)
    assert route(command, {})[0] == nodes.DONE
    (rec,) = archived(command)
    assert rec["status"] == "error" and rec["phi"] == -math.inf and rec["repairs"] == 2
    assert harness.evals == ["g0-c0.2"]


def test_evaluate_reuses_what_the_store_holds(harness):
    nodes.evaluate(attempt(proxy(0.7)), harness.runtime)
    again = nodes.evaluate(attempt(proxy(0.7)), harness.runtime)  # a re-run after kill -9
    assert archived(again)[0]["phi"] == 0.7 and harness.evals == ["g0-c0"]
    twin = nodes.evaluate(attempt(proxy(0.7), spec=spec(slot=1)), harness.runtime)  # same AST hash
    assert archived(twin)[0]["phi"] == 0.7 and harness.evals == ["g0-c0"]
    assert harness.store.get("evaluations", "g0-c1")["reused_from"] == "g0-c0"


def test_evaluate_does_not_reuse_a_failure_that_may_be_the_slots_fault(harness):
    harness.ctx.evaluate = lambda pid, src: (harness.evals.append(pid), {"status": "timeout", "reason": "slow"})[1]
    nodes.evaluate(attempt(proxy(0.7), n=2), harness.runtime)
    harness.ctx.evaluate = evaluator(harness.evals)
    command = nodes.evaluate(attempt(proxy(0.7), spec=spec(slot=1)), harness.runtime)
    assert archived(command)[0]["phi"] == 0.7 and harness.evals == ["g0-c0.2", "g0-c1"]


# -- critic --------------------------------------------------------------------------------
def test_critic_repairs_stores_and_sends_the_repair_to_evaluate(tmp_path):
    h = Harness(tmp_path, {"critic": [answer(proxy(0.6, " fixed"), "Use weight.")]})
    failed = attempt(BROKEN, error="AttributeError: no attribute 'weights'")
    node, payload = route(nodes.critic(failed, h.runtime), failed)
    assert node == "evaluate" and payload["attempt"] == 1 and "fixed" in payload["code"]
    row = h.store.get("proxies", "g0-c0.1")
    assert row["operator"] == "repair" and row["code"] == payload["code"] and row["attempt"] == 1
    (call,) = h.llm_calls()
    assert call["agent"] == "critic" and "no attribute 'weights'" in call["prompt"] and BROKEN.strip() in call["prompt"]
    # Run again (resume): the stored repair is reused, the LLM is not asked twice.
    node, again = route(nodes.critic(failed, h.runtime), failed)
    assert again["code"] == payload["code"] and len(h.llm_calls()) == 1
    h.store.close()


def test_critic_unchanged_or_unusable_repair_is_a_try_without_evaluation(tmp_path):
    h = Harness(tmp_path, {"critic": [answer(BROKEN), "I cannot fix this."]})
    failed = attempt(BROKEN, error="AttributeError")
    node, payload = route(nodes.critic(failed, h.runtime), failed)
    assert node == "critic" and payload["attempt"] == 1 and "same proxy" in payload["error"]
    command = nodes.critic(payload, h.runtime)  # the second and last repair: no code at all
    assert route(command, {})[0] == nodes.DONE and h.evals == []
    (rec,) = archived(command)
    assert rec["status"] == "error" and rec["repairs"] == 2 and rec["phi"] == -math.inf
    assert len(h.llm_calls()) == 2 and h.store.get("proxies", "g0-c0.1") is None
    h.store.close()


def test_critic_shows_its_own_unparsable_repair_to_the_next_critic_call(tmp_path):
    h = Harness(tmp_path, {"critic": [answer(UNPARSABLE), answer(proxy(0.6))]})
    failed = attempt(BROKEN, error="AttributeError")
    node, payload = route(nodes.critic(failed, h.runtime), failed)
    assert node == "critic" and payload["code"].startswith("def score(layer:")
    assert "AttributeError" not in payload["error"]  # the next call is told its own parse error
    node, payload = route(nodes.critic(payload, h.runtime), payload)
    assert node == "evaluate" and payload["attempt"] == 2 and "phi=0.6" in payload["code"]
    second = h.llm_calls()[1]["prompt"]
    assert "def score(layer:" in second and payload["code"] not in second
    h.store.close()


def test_zero_repairs_means_no_critic(tmp_path):
    h = Harness(tmp_path, repairs=0)
    command = nodes.evaluate(attempt(BROKEN), h.runtime)
    assert route(command, {})[0] == nodes.DONE and archived(command)[0]["status"] == "error"
    (tmp_path / "b").mkdir()
    h2 = Harness(tmp_path / "b", {"init": [answer(UNPARSABLE)]}, repairs=0)
    command = nodes.proposer(Attempt(spec=spec(), attempt=0), h2.runtime)
    assert route(command, {})[0] == nodes.DONE and archived(command)[0]["status"] == "draft_error"
    h.store.close()
    h2.store.close()


# -- drafting ---------------------------------------------------------------------------
def test_draft_is_stored_and_sent_to_evaluate(tmp_path):
    h = Harness(tmp_path, {"init": [answer(proxy(0.4))]})
    start = Attempt(spec=spec(), attempt=0)
    node, payload = route(nodes.proposer(start, h.runtime), start)
    assert node == "evaluate" and "phi=0.4" in payload["code"]
    assert h.store.get("proxies", "g0-c0")["operator"] == "init"
    h.store.close()


def test_unparsable_draft_goes_to_the_critic_with_its_code(tmp_path):
    h = Harness(tmp_path, {"init": [answer(UNPARSABLE)]})
    start = Attempt(spec=spec(), attempt=0)
    node, payload = route(nodes.proposer(start, h.runtime), start)
    assert node == "critic" and payload["code"].startswith("def score(layer:") and payload["error"]
    assert h.store.get("proxies", "g0-c0") is None and len(h.llm_calls()) == 1
    h.store.close()


# -- select -----------------------------------------------------------------------------
def _state(archive, candidates=3, gen=0, population=()):
    return {"generation": gen, "candidates": [spec(gen, i) for i in range(candidates)], "archive": archive,
            "population": list(population), "library": [], "weights": initial_weights(),
            "probs": probabilities(initial_weights()), "best": None}


def test_select_keeps_human_seeds_out_of_the_controller_update(harness):
    archive = [record("g0-c0", 0, 0, 0.9, "human"), record("g0-c1", 0, 1, 0.2, "init"),
               record("g0-c2", 0, 2, 0.1, "init")]
    state = {**_state(archive), "candidates": [spec(0, 0, "human"), spec(0, 1), spec(0, 2)]}
    out = nodes.select(state, harness.runtime)
    assert out["best"]["id"] == "g0-c0" and out["population"][0]["operator"] == "human"
    assert out["probs"] == pytest.approx(probabilities(initial_weights(), 0.05))  # only init drafted: no evidence


def test_select_waits_for_the_last_candidate(harness):
    assert nodes.select(_state([record("g0-c0", 0, 0, 0.5), record("g0-c1", 0, 1, 0.4)]), harness.runtime) == {}
    assert harness.store.count("generations") == 0


def test_select_replaces_population_updates_controller_and_persists(tmp_path):
    h = Harness(tmp_path, population=2)
    old = [record("g0-c0", 0, 0, 0.5), record("g0-c1", 0, 1, 0.3)]
    new = [record("g1-c0", 1, 0, 0.9, "mutation"), record("g1-c1", 1, 1, -math.inf, "crossover")]
    state = {**_state(old + new, candidates=2, gen=1, population=old),
             "candidates": [spec(1, 0, "mutation"), spec(1, 1, "crossover")]}
    out = nodes.select(state, h.runtime)
    assert [r["id"] for r in out["population"]] == ["g1-c0", "g0-c0"]
    assert out["best"]["id"] == "g1-c0" and out["generation"] == 2 and out["candidates"] == []
    assert [r["id"] for r in out["library"]] == ["g1-c0"]  # top 10% (at least one) of the working ones
    assert out["probs"]["mutation"] > out["probs"]["init"] > out["probs"]["crossover"]
    assert out["weights"] != out["probs"] and sum(out["probs"].values()) == pytest.approx(1.0)
    assert out["probs"] == pytest.approx(probabilities(out["weights"], 0.05))
    gen_row = h.store.get("generations", 1)
    assert (gen_row["candidates"], gen_row["ok"], gen_row["best_phi"], gen_row["best_id"]) == (2, 1, 0.9, "g1-c0")
    ctl = h.store.get("controller", 1)
    assert ctl["probs"] == pytest.approx(out["probs"]) and ctl["weights"] == pytest.approx(out["weights"])
    assert h.events[-1]["event"] == "select" and h.events[-1]["best"]["code"] == proxy(0.9)
    h.store.close()


def test_after_select_routes_to_the_next_generation_or_finalize(harness):
    done = {"generation": 1, "candidates": [], "archive": []}
    assert nodes.after_select(done, harness.runtime) == "controller"
    assert nodes.after_select({**done, "generation": 5}, harness.runtime) == "finalize"
    waiting = {"generation": 0, "candidates": [spec()], "archive": []}
    assert nodes.after_select(waiting, harness.runtime) == []


# -- the wiring -------------------------------------------------------------------------
def test_a_draft_is_evaluated_while_the_llm_writes_the_next(tmp_path):
    """The second LLM call waits until some evaluation has happened. With one LLM slot,
    only a per-candidate pipeline lets the first draft's evaluation run meanwhile; behind a
    super-step barrier the wait runs out and the test fails (no timing luck: an event)."""
    import threading

    from agents.scripted import ScriptedChatModel
    from graph.build import build_graph

    evaluated, seen = threading.Event(), []

    class WaitsForAnEvaluation(ScriptedChatModel):
        def _generate(self, messages, stop=None, run_manager=None, **kwargs):
            seen.append(evaluated.wait(timeout=60) if seen else True)  # every call after the first waits
            return super()._generate(messages, stop=stop, run_manager=run_manager, **kwargs)

    h = Harness(tmp_path, population=2)
    h.ctx.config = RunConfig(run_id="t", runs_dir=str(tmp_path), search=SearchSettings(generations=1, population=2))
    h.ctx.llm = WaitsForAnEvaluation(script={"init": [answer(proxy(0.4)), answer(proxy(0.5).replace("params", "macs"))]})
    h.ctx.llm_slots = threading.Semaphore(1)
    plain = h.ctx.evaluate
    h.ctx.evaluate = lambda pid, src: (plain(pid, src), evaluated.set())[0]
    state = {"run_id": "t", "generation": 0, "candidates": [], "archive": [], "population": [], "library": [],
             "weights": initial_weights(), "probs": probabilities(initial_weights()), "best": None}
    final = build_graph().invoke(state, context=h.ctx)
    assert seen == [True, True] and sorted(r["phi"] for r in final["archive"]) == [0.4, 0.5]
    h.store.close()
