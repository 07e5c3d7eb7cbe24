"""Checks of a RunConfig before anything is written: ConfigError with one line otherwise."""
from __future__ import annotations

from agents.llm import LLMConfigError, provider_for
from graph.config import ConfigError, RunConfig
from mpq.data import SHIPPED_DATASETS
from mpq.fitness_ptq import check_fitness_task
from mpq.task import parse_bits as task_bits


def validate(config: RunConfig, fresh: bool) -> None:
    """Everything checkable before a file is written; ConfigError otherwise."""
    from agents.prompts import PromptError, PromptSet
    from graph.store import RUN_ID_PATTERN
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
    if not 2 <= t.act_bits <= 16:
        raise ConfigError(f"--act-bits {t.act_bits}: expected 2..16")
    try:
        check_fitness_task(t)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if t.dataset not in SHIPPED_DATASETS and not t.data_root:
        raise ConfigError(f"--dataset {t.dataset} needs --data-root DIR")
    try:
        provider_for(config.llm).check(config.llm)
    except LLMConfigError as err:
        raise ConfigError(str(err)) from None
    try:
        PromptSet.load(config.prompts_dir)
    except PromptError as err:
        raise ConfigError(str(err)) from None
    if not RUN_ID_PATTERN.match(config.run_id):
        raise ConfigError(f"bad run id {config.run_id!r}: letters, digits, '.', '_', '-' only")
    if fresh and config.run_dir.exists():
        raise ConfigError(f"run {config.run_id!r} already exists in {config.runs_dir}")


def parse_bits(text: str) -> tuple[int, ...]:
    """``--bits 2,4,8`` -> (2, 4, 8) (``mpq.task.parse_bits``), bad input as a ConfigError."""
    try:
        return task_bits(text)
    except ValueError as error:
        raise ConfigError(str(error)) from None
