"""What a resumed or branched run continues from, read from the store.

``--resume RUN_ID`` continues the run's own stored config; ``--branch RUN_ID@GEN``
starts a new run from the parent's config at the end of generation GEN. The
parent's database is read from a private copy (graph.store.snapshot_copy), so
branching leaves it byte-identical.
"""
from __future__ import annotations

import re

from graph.config import ConfigError, RunConfig
from graph.store import RunNotFound, RunStore, require_run, snapshot_copy


def resumed_config(runs_dir: str, run_id: str) -> RunConfig:
    """The stored config of an unfinished run."""
    try:
        path = require_run(runs_dir, run_id)
    except RunNotFound as err:
        raise ConfigError(str(err)) from None
    store = RunStore.open(path)
    try:
        row = store.run_row()
    except RunNotFound as err:
        raise ConfigError(f"run {run_id!r} cannot be resumed: {err}") from None
    finally:
        store.close()
    if row["status"] == "finished":
        raise ConfigError(f"run {run_id!r} already finished; use --branch {run_id}@GEN to continue it")
    return RunConfig.from_dict(row["config"])


def branch_point(runs_dir: str, branch: str) -> tuple[RunConfig, str, int]:
    """``RUN_ID@GEN`` -> (the parent's stored config, parent id, GEN), GEN a finished generation."""
    match = re.fullmatch(r"(.+)@(-?\d+)", branch)
    if not match:
        raise ConfigError(f"--branch {branch!r}: expected RUN_ID@GEN, e.g. 20261123-1745@2")
    parent, generation = match.group(1), int(match.group(2))
    try:
        path = require_run(runs_dir, parent)
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
        raise ConfigError(f"--branch {branch}: generation {generation} out of range (finished: {span})")
    return RunConfig.from_dict(row["config"]), parent, generation
