"""Wire the nodes into the TAP state machine (see ../shared/DESIGN.md, "The graph")::

    START -> controller --Send per candidate--> candidate --> select
          -> controller (next generation) | finalize -> END

    candidate (a compiled subgraph, one run per Send):
        START -> proposer | mutator | crossover | human -> evaluate --failed--> critic -> evaluate
                                                            (at most R repairs) -> END

Each candidate is its own subgraph run with its own super-steps, so its draft
is evaluated as soon as it exists while other candidates are still drafting
(LangGraph's barrier would otherwise hold every evaluation until the
generation's last draft). The outer super-step ends when every candidate's
subgraph has ended; then ``select`` runs once. Subgraph checkpoints share the
run's SQLite file (namespace ``candidate:<task>``).
"""
from __future__ import annotations

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph

from graph import nodes
from graph.state import Attempt, CandidateOutput, SearchState


def build_candidate_graph() -> CompiledStateGraph:
    """One candidate's pipeline: draft, evaluate, repair; output = its final record."""
    g = StateGraph(Attempt, context_schema=nodes.Context, output_schema=CandidateOutput)
    for name, node in (("proposer", nodes.proposer), ("mutator", nodes.mutator), ("crossover", nodes.crossover)):
        g.add_node(name, node, destinations=("evaluate", "critic", END))
    g.add_node("human", nodes.human, destinations=("evaluate",))  # a human baseline seed (graph.plan)
    g.add_node("evaluate", nodes.evaluate, destinations=("critic", END))
    g.add_node("critic", nodes.critic, destinations=("evaluate", "critic", END))
    g.add_conditional_edges(START, nodes.first_node, list(nodes.DRAFT_NODES.values()))
    return g.compile()


def build_graph(checkpointer: BaseCheckpointSaver | None = None) -> CompiledStateGraph:
    """The search; with a checkpointer every super-step (and every candidate's step) is saved."""
    g = StateGraph(SearchState, context_schema=nodes.Context)
    g.add_node("controller", nodes.controller)
    g.add_node("candidate", build_candidate_graph())
    g.add_node("select", nodes.select)
    g.add_node("finalize", nodes.finalize)
    g.add_edge(START, "controller")
    g.add_conditional_edges("controller", nodes.fan_out, ["candidate"])
    g.add_edge("candidate", "select")
    g.add_conditional_edges("select", nodes.after_select, ["controller", "finalize"])
    g.add_edge("finalize", END)
    return g.compile(checkpointer=checkpointer)


def thread_config(run_id: str, max_concurrency: int | None = None) -> dict:
    """The runnable config of a run: its thread is the run id. ``max_concurrency`` bounds the
    candidates whose pipelines run at once (LangGraph's default pool: cpu count + 4 threads)."""
    config: dict = {"configurable": {"thread_id": run_id}, "recursion_limit": 10_000}
    if max_concurrency:
        config["max_concurrency"] = max_concurrency
    return config
