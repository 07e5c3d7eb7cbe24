"""What the user sees while a search runs (or is replayed).

Nodes emit small event dicts (through LangGraph's stream writer, or
graph.runs.replay from the database); a :class:`RunView` folds them into a
display model, and one of two sinks shows it:

* :class:`LiveSink` -- ``rich.live.Live`` around a ``Layout`` rebuilt from the
  view on every event: header, population table, template probabilities,
  evaluations in flight with a progress bar, a scrolling log of repairs and
  errors, the best proxy so far;
* :class:`PlainSink` -- one log line per event (``--no-tui``, or no TTY).

Both write to stderr, so stdout stays free for ``--json``.

Events (``event`` key): ``run`` (run_id, model, llm, generations, population),
``generation`` (generation, operators), ``draft`` (id, operator),
``draft_error`` (id, error), ``eval_start`` (id, attempt), ``eval_done``
(id, attempt, status, phi, rho_sens, acc_quant, error, reused),
``repair`` (id, attempt, error), ``select`` (generation, population, probs,
best), ``finalize`` (test_acc, avg_bits, run_dir), ``message`` (text),
``llm_call`` (id, seconds), ``candidate_done`` (id, status, phi).

The expected time to finish (:func:`eta_seconds`) comes from the measured LLM
and evaluation seconds per finished candidate.
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

from rich.console import Console, Group
from rich.layout import Layout
from rich.live import Live
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.syntax import Syntax
from rich.table import Table
from rich.text import Text


def eta_seconds(remaining: int, done: int, llm_s: float, eval_s: float, workers: int = 1) -> float | None:
    """Expected seconds until the last of ``remaining`` candidates is done; None before any is.

    Drafting and evaluation overlap (each candidate is its own pipeline,
    graph.build), so the slower stage sets the pace: ``remaining`` times the
    larger of the LLM seconds per candidate and the evaluation seconds per
    candidate over the evaluator slots, plus the faster stage once for the last
    candidate. Repairs are inside the per-candidate means.
    """
    if done <= 0:
        return None
    if remaining <= 0:
        return 0.0
    llm, evaluation = llm_s / done, eval_s / done / max(workers, 1)
    return remaining * max(llm, evaluation) + min(llm, evaluation)


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m" if hours else f"{minutes}m {secs:02d}s"


def fmt(value: float | None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.{digits}f}"


@dataclass
class RunView:
    """The display model: everything the screen shows, nothing else."""

    run_id: str = ""
    model: str = ""
    llm: str = ""
    generations: int = 0
    population_size: int = 0
    workers: int = 1
    generation: int = 0
    planned: int = 0
    done: set = field(default_factory=set)  # ids of finished candidates, all generations
    llm_s: float = 0.0  # measured LLM seconds, all calls
    eval_s: float = 0.0  # measured seconds inside evaluator slots
    in_flight: dict[str, int] = field(default_factory=dict)  # id -> attempt
    population: list[dict] = field(default_factory=list)
    current: dict[str, dict] = field(default_factory=dict)  # this generation's candidates
    probs: dict[str, float] = field(default_factory=dict)
    best: dict | None = None
    log: deque = field(default_factory=lambda: deque(maxlen=12))

    @property
    def finished(self) -> int:
        """Candidates of the current generation that are done."""
        return sum(1 for c in self.current if c in self.done)

    def eta(self) -> float | None:
        """Expected seconds to the end of the search (before finalize)."""
        later = max(self.generations - self.generation - 1, 0) * self.population_size
        remaining = self.planned - self.finished + later
        return eta_seconds(remaining, len(self.done), self.llm_s, self.eval_s, self.workers)

    def apply(self, event: dict) -> str | None:
        """Fold one event into the view; returns the plain log line for it (or None)."""
        kind = event.get("event")
        if kind == "llm_call":
            self.llm_s += event.get("seconds") or 0.0
            return None
        if kind == "candidate_done":
            self.done.add(event["id"])
            return None
        if kind == "run":
            self.run_id, self.model, self.llm = event["run_id"], event["model"], event["llm"]
            self.generations, self.population_size = event["generations"], event["population"]
            self.workers = event.get("workers", 1)
            return f"run {self.run_id}: {self.model}, LLM {self.llm}, {self.generations} x {self.population_size}"
        if kind == "generation":
            self.generation, self.planned = event["generation"], len(event["operators"])
            self.current = {c["id"]: {"id": c["id"], "operator": c["operator"], "status": "drafting"}
                            for c in event["operators"]}
            ops = ", ".join(f"{c['id']}:{c['operator']}" for c in event["operators"])
            return f"generation {self.generation + 1}/{self.generations}: {ops}"
        if kind == "draft":
            self.current.setdefault(event["id"], {"id": event["id"]})["status"] = "drafted"
            return None
        if kind == "draft_error":
            self.log.append(f"[red]{event['id']} draft failed:[/] {event['error']}")
            return f"{event['id']}: draft failed: {event['error']}"
        if kind == "eval_start":
            self.in_flight[event["id"]] = event["attempt"]
            self.current.setdefault(event["id"], {"id": event["id"]})["status"] = "evaluating"
            return None
        if kind == "eval_done":
            self.in_flight.pop(event["id"], None)
            row = self.current.setdefault(event["id"], {"id": event["id"]})
            row.update({k: event.get(k) for k in ("status", "phi", "rho_sens", "acc_quant")})
            self.eval_s += event.get("eval_s") or 0.0
            if event.get("final"):
                self.done.add(event["id"])
            if event["status"] != "ok":
                self.log.append(f"[red]{event['id']}.{event['attempt']} {event['status']}:[/] {event.get('error', '')}")
            reused = " (reused)" if event.get("reused") else ""
            return (f"{event['id']}.{event['attempt']}: {event['status']} phi={fmt(event.get('phi'))} "
                    f"rho={fmt(event.get('rho_sens'))} acc={fmt(event.get('acc_quant'))}{reused}"
                    + (f" error: {event.get('error')}" if event["status"] != "ok" else ""))
        if kind == "repair":
            self.log.append(f"[yellow]{event['id']} repair {event['attempt']}[/] after: {event['error']}")
            return f"{event['id']}: critic repair {event['attempt']} after: {event['error']}"
        if kind == "select":
            self.population, self.probs, self.best = event["population"], event["probs"], event["best"]
            probs = " ".join(f"{t}={p:.2f}" for t, p in self.probs.items())
            best = self.best or {}
            eta = self.eta() if event["generation"] + 1 < self.generations else None
            return (f"generation {event['generation'] + 1} done: best {best.get('id', '-')} "
                    f"phi={fmt(best.get('phi'))}; p: {probs}"
                    + (f"; expected to finish in {fmt_duration(eta)}" if eta is not None else ""))
        if kind == "finalize":
            self.log.append(f"[green]final:[/] test top-1 {fmt(event.get('test_acc'))} at {fmt(event.get('avg_bits'), 2)} avg bits")
            return (f"final: test top-1 {fmt(event.get('test_acc'))} at {fmt(event.get('avg_bits'), 2)} "
                    f"avg bits -> {event.get('run_dir')}")
        if kind == "message":
            self.log.append(event["text"])
            return event["text"]
        return None

    # -- rendering -------------------------------------------------------------
    def render(self) -> Layout:
        layout = Layout()
        layout.split_column(
            Layout(self._header(), name="header", size=3),
            Layout(name="body"),
            Layout(self._log_panel(), name="log", size=8),
        )
        layout["body"].split_row(Layout(self._tables(), ratio=3), Layout(self._side(), ratio=2))
        return layout

    def _header(self) -> Panel:
        text = Text.assemble(
            ("run ", "dim"), (self.run_id, "bold"), ("  model ", "dim"), self.model,
            ("  LLM ", "dim"), self.llm,
            ("  generation ", "dim"), (f"{min(self.generation + 1, self.generations)} of {self.generations}", "bold"),
            ("  expected to finish in ", "dim"), (fmt_duration(self.eta()), "bold"))
        return Panel(text, title="TAP-MPQ search")

    def _tables(self) -> Group:
        cur = Table(title="this generation", expand=True)
        pop = Table(title="population", expand=True)
        for table in (cur, pop):
            for col in ("id", "operator", "rho", "acc", "phi", "status"):
                table.add_column(col, justify="right" if col in ("rho", "acc", "phi") else "left")
        for row in self.current.values():
            cur.add_row(*self._cells(row))
        for row in self.population:
            pop.add_row(*self._cells(row))
        return Group(cur, pop)

    @staticmethod
    def _cells(row: dict) -> list[str]:
        return [row.get("id", ""), row.get("operator", ""), fmt(row.get("rho_sens")),
                fmt(row.get("acc_quant")), fmt(row.get("phi")), row.get("status", "")]

    def _side(self) -> Group:
        probs = Table(title="template probabilities", expand=True)
        probs.add_column("template")
        probs.add_column("p", justify="right")
        for template, p in self.probs.items():
            probs.add_row(template, f"{p:.2f}")
        flight = Text(f"evaluations in flight: {', '.join(self.in_flight) or '-'}")
        bar = ProgressBar(total=max(self.planned, 1), completed=self.finished)
        best = self.best
        if best:
            code = Syntax(best.get("code", "")[:1200], "python", line_numbers=False)
            best_panel = Panel(code, title=f"best {best['id']} phi={fmt(best.get('phi'))}")
        else:
            best_panel = Panel("-", title="best so far")
        return Group(probs, flight, bar, Text(f"{self.finished}/{self.planned} finished"), best_panel)

    def _log_panel(self) -> Panel:
        return Panel(Text.from_markup("\n".join(self.log)), title="critic repairs and errors")


class Sink(Protocol):
    def __enter__(self) -> "Sink": ...
    def __exit__(self, *exc) -> None: ...
    def emit(self, event: dict) -> None: ...


class PlainSink:
    """One line per event on stderr."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True, highlight=False, soft_wrap=True)
        self.view = RunView()

    def __enter__(self) -> "PlainSink":
        return self

    def __exit__(self, *exc) -> None:
        return None

    def emit(self, event: dict) -> None:
        line = self.view.apply(event)
        if line:
            self.console.print(line, markup=False)


class LiveSink:
    """The rich live view; the layout is rebuilt from the view on every event."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.view = RunView()
        self.live = Live(self.view.render(), console=self.console, refresh_per_second=4, screen=False)

    def __enter__(self) -> "LiveSink":
        self.live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.live.update(self.view.render())
        self.live.__exit__(*exc)

    def emit(self, event: dict) -> None:
        self.view.apply(event)
        self.live.update(self.view.render())


def make_sink(tui: bool) -> Sink:
    """The live view when asked for and stderr is a terminal; plain lines otherwise."""
    console = Console(stderr=True)
    if tui and console.is_terminal:
        return LiveSink(console)
    return PlainSink(Console(stderr=True, highlight=False, soft_wrap=True))
