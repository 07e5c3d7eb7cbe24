"""``python -m graph.run``: start, resume or branch a TAP search.

    python -m graph.run --model mobilenetv2 [--dataset embedded] [--llm scripted:FILE] ...
    python -m graph.run --resume RUN_ID
    python -m graph.run --branch RUN_ID@GEN [--controller dpo] [--llm ...] [--seed 1]

Bad input is one line on stderr and exit code 2, before anything is written.
Ctrl-C (or kill -9) leaves a run that ``--resume`` continues.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

from langgraph.checkpoint.sqlite import SqliteSaver

from agents.context import DraftContext, describe_task
from agents.llm import LLMConfigError, LLMUnavailable, open_llm, provider_for
from agents.prompts import PromptSet
from graph.build import build_graph, thread_config
from graph.cli import parse_run_args
from graph.config import ConfigError, RunConfig
from graph.controller import initial_weights, probabilities
from graph.nodes import Clock, Context, Evaluate
from graph.report import write_outputs
from graph.state import SearchState
from graph.store import RunStore, connect, db_path, require_run, snapshot_copy
from graph.tui import make_sink

CANDIDATE_THREADS = 64
INTERRUPT_POLL_S = 0.25
"""Longest an evaluation waits before it looks whether the run was interrupted."""


def main(argv: list[str] | None = None) -> int:
    from sandbox.pool import interrupt_on_sigterm

    config = None
    interrupt_on_sigterm()  # a SIGTERM closes the slots and stops the run as Ctrl-C does (resumable)
    try:
        config = parse_run_args(argv)
        result = execute(config)
    except (ConfigError, LLMConfigError, LLMUnavailable) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if config is not None:
            print(f"interrupted; continue with: python -m graph.run --resume {config.run_id} "
                  f"--runs-dir {config.runs_dir}", file=sys.stderr)
        return 130
    if config.json:
        result.pop("spans", None)
        print(json.dumps(result, indent=2))
    return 0


def execute(config: RunConfig, evaluator: contextlib.AbstractContextManager | None = None) -> dict:
    """Run (or continue) the search to the end; returns the summary printed by ``--json``.

    Model, data and prompts are loaded before the run folder is created, so
    bad input leaves nothing behind. ``evaluator`` replaces the sandbox pool
    (a context manager yielding an Evaluate function); the CLI always uses
    the sandbox.
    """
    start = time.perf_counter()
    prompts = PromptSet.load(config.prompts_dir)
    task_model = load_task_model(config)
    run_dir = config.run_dir
    run_dir.mkdir(parents=True, exist_ok=config.resume)
    lock = hold_run_lock(run_dir)
    store = RunStore.open(db_path(config.runs_dir, config.run_id))
    saver_conn = connect(db_path(config.runs_dir, config.run_id))
    graph = build_graph(SqliteSaver(saver_conn))
    # Every candidate of a generation gets a thread (created on demand): the LLM queue
    # (llm_slots) and the evaluator slots, not LangGraph's pool of cpu + 4, bound the work.
    thread = thread_config(config.run_id, max_concurrency=CANDIDATE_THREADS)
    if not config.resume:
        initial = _initial_state(config, store)
        store.record_run(_run_row(config, prompts))
    else:
        initial = None if graph.get_state(thread).values else _initial_state(config, store)
    llm_settings = dataclasses.replace(config.llm, log_dir=str(run_dir))
    clock, status, timings = Clock(), "interrupted", {}
    try:
        with open_llm(llm_settings) as llm, (evaluator or open_sandbox(config)) as evaluate, \
                make_sink(config.tui) as sink:
            ctx = Context(config=config, llm=llm, prompts=prompts, evaluate=evaluate, store=store,
                          draft_context=DraftContext(task=describe_task(config.task),
                                                     layers=task_model.describe_layers()),
                          clock=clock, finalize=lambda state, c: _finalize(state, c, task_model),
                          llm_slots=threading.Semaphore(provider_for(config.llm).concurrent_calls))
            timings["setup_s"] = time.perf_counter() - start
            sink.emit({"event": "run", "run_id": config.run_id, "model": config.task.model,
                       "llm": config.llm.spec, "generations": config.search.generations,
                       "population": config.search.population, "workers": config.workers})
            # subgraphs=True: the candidates' pipelines run as subgraphs and write their events there.
            for _namespace, event in graph.stream(initial, thread, context=ctx, stream_mode="custom",
                                                  subgraphs=True):
                sink.emit(event)
        status = "finished"
    finally:
        timings.update({"wall_s": time.perf_counter() - start, "llm_s": clock.llm_s, "eval_s": clock.eval_s,
                        "wait_s": clock.wait_s, "final_s": clock.final_s})
        store.set_run_status(config.run_id, status, {k: timings[k] for k in ("wall_s", "llm_s", "eval_s")})
        store.close()
        saver_conn.close()
        lock.close()
    final = graph_state_final(config)
    return {"run_id": config.run_id, "run_dir": str(run_dir), "status": status, "timings": timings,
            "spans": {k: [(a - start, b - start) for a, b in v] for k, v in clock.spans.items()}, **final}


def hold_run_lock(run_dir: Path):
    """An exclusive lock on the run folder for this process's lifetime (released by the
    kernel even on kill -9), so two processes never continue one run at once."""
    import fcntl

    handle = open(run_dir / "run.lock", "a")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise ConfigError(f"run {run_dir.name!r} is in use by another process") from None
    return handle


def load_task_model(config: RunConfig):
    """Model, data and calibration batch of the task; their errors are bad input."""
    from graph.final import TaskModel
    from mpq.data import DataError
    from mpq.models import ModelError

    try:
        return TaskModel(config.task)
    except (ModelError, DataError) as err:
        raise ConfigError(str(err).splitlines()[0]) from None


def graph_state_final(config: RunConfig) -> dict:
    """The finalize node's summary from the last checkpoint."""
    conn = connect(db_path(config.runs_dir, config.run_id))
    try:
        values = build_graph(SqliteSaver(conn)).get_state(thread_config(config.run_id)).values
    finally:
        conn.close()
    return {"final": values.get("final", {}),
            "best": {k: v for k, v in (values.get("best") or {}).items() if k not in ("code", "reasoning")}}


def _initial_state(config: RunConfig, store: RunStore) -> SearchState:
    """Generation 0 of a fresh run, or the parent's state at the end of the branch generation."""
    if config.parent_run is not None:
        return _branch_state(config, store)
    weights = initial_weights()
    return SearchState(run_id=config.run_id, generation=0, candidates=[], archive=[], population=[],
                       library=[], weights=weights, probs=probabilities(weights, config.search.controller.floor),
                       best=None)


def _branch_state(config: RunConfig, store: RunStore) -> SearchState:
    """Read the parent's checkpoint after generation GEN from a private copy; inherit its rows."""
    gen = config.parent_generation
    with snapshot_copy(require_run(config.runs_dir, config.parent_run)) as copy:
        conn = connect(copy)
        try:
            parent_graph = build_graph(SqliteSaver(conn))
            for snapshot in parent_graph.get_state_history(thread_config(config.parent_run)):
                v = snapshot.values
                if v.get("generation") == gen + 1 and v.get("candidates") == [] and "final" not in v:
                    values = dict(v)
                    break
            else:
                raise ConfigError(f"run {config.parent_run} has no checkpoint at the end of generation {gen}")
            parent_store = RunStore(conn)
            store.copy_rows_from(parent_store, gen)
        finally:
            conn.close()
    values["archive"] = [r for r in values["archive"] if r["generation"] <= gen]
    values["run_id"] = config.run_id
    return SearchState(**values)


def _finalize(state: SearchState, ctx: Context, task_model) -> dict:
    best = state.get("best")
    final: dict = {"run_dir": str(ctx.config.run_dir), "budget": ctx.config.task.budget}
    if best is not None:
        final.update({"proxy": best["id"], "phi": best["phi"], "search_acc": best["acc_quant"],
                      "avg_bits": best["avg_bits"], "size_mb": best["size_mb"]})
        evaluation = ctx.store.get("evaluations", _evaluated_id(ctx, best))
        if evaluation:
            final["bops"] = evaluation.get("bops")
        export = task_model.final_model(best["bits"], ctx.config.final, ctx.config.run_dir, best["size_mb"])
        final.update(task_model.test_accuracy(best["bits"], export, ctx.config.final))
        final["final_model"] = {k: v for k, v in export.items() if k != "bits"}
    final["outputs"] = write_outputs(ctx.config.run_dir, ctx.store, best, final)
    return final


def _evaluated_id(ctx: Context, best: dict) -> str:
    return best["id"] if best["repairs"] == 0 else f"{best['id']}.{best['repairs']}"


@contextlib.contextmanager
def open_sandbox(config: RunConfig) -> Iterator[Evaluate]:
    """The sandbox pool as an Evaluate function; at most ``workers`` evaluations at once."""
    from mpq.fitness_ptq import extra_fitness_seconds
    from sandbox.pool import EvaluatorPool
    from sandbox.protocol import Limits

    slots = threading.Semaphore(config.workers)
    limits = Limits(timeout_s=config.eval_timeout_s, fitness_s=Limits.fitness_s + extra_fitness_seconds(config.task))
    with EvaluatorPool(config.task, backend=config.sandbox, workers=config.workers, limits=limits) as pool, \
            interrupt_flag() as interrupted:
        def evaluate(proxy_id: str, source: str) -> dict:
            with slots:
                future = pool.schedule(source, proxy_id)
                while True:
                    try:
                        return dataclasses.asdict(future.result(timeout=INTERRUPT_POLL_S))
                    except TimeoutError:
                        if interrupted.is_set():
                            raise EvaluationInterrupted(proxy_id) from None
        yield evaluate


class EvaluationInterrupted(RuntimeError):
    """Ctrl-C or SIGTERM while an evaluation was pending: its node fails, nothing of it is
    stored, and ``--resume`` evaluates it again."""


@contextlib.contextmanager
def interrupt_flag() -> Iterator[threading.Event]:
    """An event set by SIGINT / SIGTERM just before the handler in place (the KeyboardInterrupt
    that stops the run) runs. LangGraph lets running nodes end before that interrupt leaves
    ``stream``: an evaluation waiting on a slot that still loads its task (minutes on a fresh
    cache) would hold Ctrl-C up that long; with the flag its node stops waiting at once."""
    flag = threading.Event()
    if threading.current_thread() is not threading.main_thread():  # only there can handlers be set
        yield flag
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)
                if signal.getsignal(sig) != signal.SIG_IGN}  # ignored stays ignored

    def handler(signum, frame):
        flag.set()
        chained = previous[signum]
        if callable(chained):
            chained(signum, frame)
        elif chained == signal.SIG_DFL:
            signal.signal(signum, chained)
            signal.raise_signal(signum)

    for sig in previous:
        signal.signal(sig, handler)
    try:
        yield flag
    finally:
        for sig, chained in previous.items():
            signal.signal(sig, chained)


def _run_row(config: RunConfig, prompts: PromptSet) -> dict:
    return {"id": config.run_id, "model": config.task.model, "dataset": config.task.dataset,
            "llm": config.llm.spec, "prompts_dir": str(prompts.directory), "prompts_hash": prompts_hash(prompts),
            "git_rev": git_revision(), "seed": config.seed, "controller": config.search.controller.kind,
            "generations": config.search.generations, "population": config.search.population,
            "parent_run": config.parent_run, "parent_generation": config.parent_generation,
            "config": config.settings_dict()}


def prompts_hash(prompts: PromptSet) -> str:
    h = hashlib.sha256()
    for name in sorted(prompts.templates):
        h.update(f"{name}\0{prompts.templates[name]}\0".encode())
    return h.hexdigest()[:16]


def git_revision() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


if __name__ == "__main__":
    sys.exit(main())
