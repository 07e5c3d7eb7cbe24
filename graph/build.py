"""Wire the nodes into the TAP state machine (see ../shared/DESIGN.md, "The graph")::

    START -> controller --Send per candidate--> proposer | mutator | crossover
          -> evaluate --failed--> critic -> evaluate       (at most R repairs)
          -> select -> controller (next generation) | finalize -> END

The draft / evaluate / critic nodes route themselves with ``Command(goto=...)``
because each carries one candidate's payload; ``select`` runs when every
candidate of the generation is in (graph.nodes.select).
"""
from __future__ import annotations

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph

from graph import nodes
from graph.state import SearchState


def build_graph(checkpointer: BaseCheckpointSaver | None = None) -> CompiledStateGraph:
    g = StateGraph(SearchState, context_schema=nodes.Context)
    g.add_node("controller", nodes.controller)
    g.add_node("proposer", nodes.proposer, destinations=("evaluate", "select"))
    g.add_node("mutator", nodes.mutator, destinations=("evaluate", "select"))
    g.add_node("crossover", nodes.crossover, destinations=("evaluate", "select"))
    g.add_node("evaluate", nodes.evaluate, destinations=("critic", "select"))
    g.add_node("critic", nodes.critic, destinations=("evaluate", "critic", "select"))
    g.add_node("select", nodes.select)
    g.add_node("finalize", nodes.finalize)
    g.add_edge(START, "controller")
    g.add_conditional_edges("controller", nodes.fan_out, ["proposer", "mutator", "crossover"])
    g.add_conditional_edges("select", nodes.after_select, ["controller", "finalize"])
    g.add_edge("finalize", END)
    return g.compile(checkpointer=checkpointer)


def thread_config(run_id: str, max_concurrency: int | None = None) -> dict:
    """The runnable config of a run: its thread is the run id."""
    config: dict = {"configurable": {"thread_id": run_id}, "recursion_limit": 10_000}
    if max_concurrency:
        config["max_concurrency"] = max_concurrency
    return config
