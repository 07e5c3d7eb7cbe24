"""The run's settings: one frozen object, from the command line down.

:class:`RunConfig` is built once (graph.cli parses, graph.lineage reads what a
resumed or branched run continues from, graph.validate checks) and stored as
JSON in the run's ``runs`` row. Every problem with the input is a
:class:`ConfigError` with a one-line message; the CLI prints it and exits 2.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path

from agents.llm import LLMSettings
from graph.controller import ControllerSettings
from mpq.ptq_final import FinalPTQ
from mpq.task import Task


class ConfigError(ValueError):
    """Bad input on the command line: one line, exit code 2, nothing written."""


@dataclass(frozen=True)
class SearchSettings:
    """The evolutionary search (paper Sec. 3; defaults from the paper)."""

    generations: int = 5
    """T, number of generations (generation 0 is all init)."""
    population: int = 8
    """N, candidates per generation and population size."""
    repairs: int = 2
    """R, critic repairs per candidate before it counts as failed."""
    controller: ControllerSettings = field(default_factory=ControllerSettings)
    seed_population: str = "llm"
    """Generation 0: ``llm`` (N init drafts), ``human`` (the human baselines, mpq.proxies) or
    ``both`` (the baselines plus N init drafts); see graph.plan."""


@dataclass(frozen=True)
class RunConfig:
    """Everything one run needs; stored as JSON in the run's ``runs`` row."""

    run_id: str
    task: Task = field(default_factory=Task)
    search: SearchSettings = field(default_factory=SearchSettings)
    llm: LLMSettings = field(default_factory=LLMSettings)
    prompts_dir: str | None = None
    """None = the project's prompts/ folder."""
    sandbox: str = "auto"
    """A sandbox backend name (sandbox.pool.BACKENDS)."""
    workers: int = 1
    eval_timeout_s: float = 600.0
    """Wall-clock limit for one proxy evaluation in the sandbox."""
    seed: int = 0
    runs_dir: str = "runs"
    tui: bool = True
    json: bool = False
    resume: bool = False
    """Continue ``run_id`` from its last checkpoint."""
    parent_run: str | None = None
    parent_generation: int | None = None
    """--branch: the run and generation this run starts from."""
    final: FinalPTQ = field(default_factory=FinalPTQ)
    """How the best allocation is quantized at the end (--final-ptq, --calib-final, --recon-iters,
    --keep-first-last-8bit; mpq.ptq_final) and exported (mpq.export)."""

    @property
    def run_dir(self) -> Path:
        return Path(self.runs_dir) / self.run_id

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "RunConfig":
        d = dict(data)
        d["task"] = Task.from_dict(d["task"])
        search = dict(d["search"])
        search["controller"] = ControllerSettings(**search["controller"])
        d["search"] = SearchSettings(**search)
        d["llm"] = LLMSettings(**d["llm"])
        d["final"] = FinalPTQ(**d.get("final", {}))  # runs stored before the option: the default
        return cls(**d)

    def settings_dict(self) -> dict:
        """The settings that define the search (not how it is shown or where it resumes)."""
        d = self.to_dict()
        for key in ("tui", "json", "resume"):
            d.pop(key)
        return d


def new_run_id() -> str:
    """A sortable, readable id: UTC time to the second plus 4 random hex digits."""
    import secrets

    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(2)
