"""The run's settings: parsed once from the command line into one frozen object.

:func:`parse_run_args` turns ``python -m graph.run ...`` into a
:class:`RunConfig` and checks everything that can be checked before anything
is written (model name, budget syntax, prompts folder, run ids, branch
generation). Every problem is a :class:`ConfigError` with a one-line message;
the CLI prints it and exits with code 2.
"""
from __future__ import annotations

import argparse
import dataclasses
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from agents.llm import LLMSettings, LLMConfigError, add_llm_arguments, settings_from_args
from graph.controller import CONTROLLERS, ControllerSettings
from mpq.data import DATASET_NAMES
from mpq.task import Task

SANDBOXES = ("auto", "process", "docker")


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
        return cls(**d)

    def settings_dict(self) -> dict:
        """The settings that define the search (not how it is shown or where it resumes)."""
        d = self.to_dict()
        for key in ("tui", "json", "resume"):
            d.pop(key)
        return d


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m graph.run",
        description="TAP search: LLM agents evolve training-free MPQ proxies.")
    # Every default is None so that --branch / --resume can tell what was given.
    task = p.add_argument_group("task")
    task.add_argument("--model", help="model registry name (default: mobilenetv2)")
    task.add_argument("--dataset", choices=DATASET_NAMES, help="default: embedded")
    task.add_argument("--data-root", help="folder holding the data set")
    task.add_argument("--weights", help="checkpoint path or 'torchvision' (default: the project's)")
    task.add_argument("--budget", help='"3avg" | "1.5MB" | "8x" (default: 3avg)')
    task.add_argument("--bits", help="candidate weight bits, comma-separated (default: 2,4,8)")
    task.add_argument("--alpha", type=float, help="phi = alpha*rho + (1-alpha)*acc (default: 0.1)")
    task.add_argument("--calibration", type=int, help="calibration images (default: 16)")
    task.add_argument("--eval-limit", type=int, help="cap on search-split images for acc_quant")
    task.add_argument("--device", help="cpu | cuda (default: cpu)")
    search = p.add_argument_group("search")
    search.add_argument("--generations", type=int, help="T (default: 5)")
    search.add_argument("--population", type=int, help="N (default: 8)")
    search.add_argument("--repairs", type=int, help="critic repairs per candidate, R (default: 2)")
    search.add_argument("--controller", choices=CONTROLLERS, help="template update rule (default: paper)")
    search.add_argument("--prompts", help="prompt folder (default: prompts/)")
    add_llm_arguments(p)
    for action in p._actions:  # make the LLM group's defaults detectable as "not given"
        if action.dest.startswith("llm"):
            action.default = None
    run = p.add_argument_group("run")
    run.add_argument("--sandbox", choices=SANDBOXES, help="default: auto")
    run.add_argument("--workers", type=int, help="evaluator slots (default: 1)")
    run.add_argument("--eval-timeout", type=float, help="seconds per evaluation (default: 600)")
    run.add_argument("--seed", type=int, help="search seed: operator draws, parents, LLM sampling (default: 0)")
    run.add_argument("--runs-dir", default="runs", help="default: %(default)s")
    run.add_argument("--run-id", help="name of the new run (default: a timestamp)")
    run.add_argument("--no-tui", action="store_true", help="plain log lines instead of the live view")
    run.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--resume", metavar="RUN_ID", help="continue an interrupted run")
    where.add_argument("--branch", metavar="RUN_ID@GEN", help="new run from the end of generation GEN of RUN_ID")
    return p


TASK_FLAGS = {"model": "model", "dataset": "dataset", "data_root": "data_root", "weights": "weights",
              "budget": "budget", "bits": "bits", "alpha": "alpha", "calibration": "calib_size",
              "eval_limit": "eval_limit", "device": "device"}


def parse_run_args(argv: list[str] | None = None) -> RunConfig:
    """``graph.run``'s arguments -> a checked RunConfig (fresh, resumed or branched).

    Resume and branch read the stored config of the run they continue; the
    parent's database is read from a private copy (see graph.store).
    """
    args = build_parser().parse_args(argv)
    if args.resume:
        return _resume_config(args)
    if args.branch:
        return _branch_config(args)
    base = RunConfig(run_id=args.run_id or new_run_id(), runs_dir=args.runs_dir)
    config = _apply_overrides(base, args, allow_task=True)
    validate(config, fresh=True)
    return config


def _apply_overrides(base: RunConfig, args: argparse.Namespace, allow_task: bool) -> RunConfig:
    task_changes = {}
    for flag, name in TASK_FLAGS.items():
        value = getattr(args, flag)
        if value is not None:
            if name == "bits":
                value = _parse_bits(value)
            task_changes[name] = value
    if task_changes and not allow_task:
        raise ConfigError(f"--branch keeps the parent's task; cannot change {', '.join(sorted(task_changes))}")
    # --seed is the search's seed (operator draws, parents, LLM sampling); the task's own seed
    # (data split, calibration images) stays, so runs and branches judge proxies alike.
    seed = args.seed if args.seed is not None else base.seed
    task = dataclasses.replace(base.task, **task_changes)
    controller = base.search.controller
    if args.controller:
        controller = dataclasses.replace(controller, kind=args.controller)
    search = dataclasses.replace(
        base.search, controller=controller,
        **{k: getattr(args, k) for k in ("generations", "population", "repairs") if getattr(args, k) is not None})
    llm = base.llm
    llm_given = {k: v for k, v in vars(args).items() if k.startswith("llm") and v is not None}
    if llm_given:
        defaults = {k: v for k, v in _llm_namespace_defaults().items()}
        current = {"llm": llm.spec, "llm_base_url": llm.base_url, "llm_api_key_env": llm.api_key_env,
                   "llm_model": llm.local_model, "llm_temperature": llm.temperature,
                   "llm_max_tokens": llm.max_tokens, "llm_timeout": llm.timeout_s, "llm_retries": llm.retries}
        merged = argparse.Namespace(**{**defaults, **current, **llm_given})
        try:
            llm = settings_from_args(merged, seed=seed)
        except LLMConfigError as err:
            raise ConfigError(str(err)) from None
    if llm.seed != seed:
        llm = dataclasses.replace(llm, seed=seed)
    return dataclasses.replace(
        base, task=task, search=search, llm=llm, seed=seed,
        prompts_dir=args.prompts if args.prompts is not None else base.prompts_dir,
        sandbox=args.sandbox or base.sandbox,
        workers=args.workers if args.workers is not None else base.workers,
        eval_timeout_s=args.eval_timeout if args.eval_timeout is not None else base.eval_timeout_s,
        runs_dir=args.runs_dir, tui=not args.no_tui, json=args.json)


def _llm_namespace_defaults() -> dict:
    p = argparse.ArgumentParser()
    add_llm_arguments(p)
    return vars(p.parse_args([]))


def _resume_config(args: argparse.Namespace) -> RunConfig:
    from graph.store import RunNotFound, RunStore, require_run

    try:
        path = require_run(args.runs_dir, args.resume)
    except RunNotFound as err:
        raise ConfigError(str(err)) from None
    store = RunStore.open(path)
    try:
        row = store.run_row()
    except RunNotFound as err:
        raise ConfigError(f"run {args.resume!r} cannot be resumed: {err}") from None
    finally:
        store.close()
    if row["status"] == "finished":
        raise ConfigError(f"run {args.resume!r} already finished; use --branch {args.resume}@GEN to continue it")
    stored = RunConfig.from_dict(row["config"])
    return dataclasses.replace(stored, runs_dir=args.runs_dir, tui=not args.no_tui, json=args.json,
                               resume=True, workers=args.workers or stored.workers)


def _branch_config(args: argparse.Namespace) -> RunConfig:
    from graph.store import RunNotFound, RunStore, require_run, snapshot_copy

    match = re.fullmatch(r"(.+)@(-?\d+)", args.branch)
    if not match:
        raise ConfigError(f"--branch {args.branch!r}: expected RUN_ID@GEN, e.g. 20261123-1745@2")
    parent, generation = match.group(1), int(match.group(2))
    try:
        path = require_run(args.runs_dir, parent)
    except RunNotFound as err:
        raise ConfigError(str(err)) from None
    with snapshot_copy(path) as copy:
        store = RunStore.open(copy)
        try:
            row = store.run_row()
            done = sorted(r["generation"] for r in store.rows("generations"))
        finally:
            store.close()
    if generation not in done:
        span = f"0..{done[-1]}" if done else "none finished yet"
        raise ConfigError(f"--branch {args.branch}: generation {generation} out of range (finished: {span})")
    base = RunConfig.from_dict(row["config"])
    base = dataclasses.replace(base, run_id=args.run_id or new_run_id(), parent_run=parent,
                               parent_generation=generation, resume=False)
    config = _apply_overrides(base, args, allow_task=False)
    validate(config, fresh=True)
    return config


def validate(config: RunConfig, fresh: bool) -> None:
    """Everything checkable before a file is written; ConfigError otherwise."""
    from agents.prompts import PromptError, PromptSet
    from mpq.budget import parse_budget
    from mpq.models import MODEL_NAMES

    t, s = config.task, config.search
    if t.model not in MODEL_NAMES:
        raise ConfigError(f"unknown model {t.model!r}; choose from {', '.join(MODEL_NAMES)}")
    try:
        parse_budget(t.budget)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if s.generations < 1 or s.population < 1 or s.repairs < 0:
        raise ConfigError("--generations and --population must be >= 1, --repairs >= 0")
    if config.workers < 1:
        raise ConfigError("--workers must be >= 1")
    if not 0.0 <= t.alpha <= 1.0:
        raise ConfigError(f"--alpha {t.alpha}: expected 0..1")
    if t.dataset != "embedded" and not t.data_root:
        raise ConfigError(f"--dataset {t.dataset} needs --data-root DIR")
    if config.llm.kind == "scripted" and not Path(config.llm.target).is_file():
        raise ConfigError(f"scripted LLM file not found: {config.llm.target}")
    try:
        PromptSet.load(config.prompts_dir)
    except PromptError as err:
        raise ConfigError(str(err)) from None
    from graph.store import RUN_ID_PATTERN

    if not RUN_ID_PATTERN.match(config.run_id):
        raise ConfigError(f"bad run id {config.run_id!r}: letters, digits, '.', '_', '-' only")
    if fresh and config.run_dir.exists():
        raise ConfigError(f"run {config.run_id!r} already exists in {config.runs_dir}")


def _parse_bits(text: str) -> tuple[int, ...]:
    try:
        bits = tuple(sorted({int(b) for b in text.split(",") if b.strip()}))
    except ValueError:
        raise ConfigError(f"--bits {text!r}: expected comma-separated integers, e.g. 2,4,8") from None
    if not bits or any(b < 1 or b > 16 for b in bits):
        raise ConfigError(f"--bits {text!r}: expected integers between 1 and 16")
    return bits


def new_run_id() -> str:
    """A sortable, readable id: UTC time to the second plus 4 random hex digits."""
    import secrets

    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(2)
