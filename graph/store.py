"""One SQLite file per run: ``runs/<run-id>/run.db``.

The file holds LangGraph's checkpoints (SqliteSaver's own tables) and the
domain tables below, written with sqlite-utils. Plain SQL answers "what
happened"::

    runs         one row: config, LLM, prompts hash, git revision, seed, parent
    generations  one row per finished generation: best / mean phi, counts
    proxies      every draft (code, reasoning, operator, template, parents, AST hash)
    evaluations  every sandbox result (status, rho, acc, phi, bits, timings, error)
    llm_calls    every LLM call (prompt, response, tokens, latency, error)
    controller   template weights and probabilities after each generation

WAL mode; each write is its own transaction, so every evaluation is on disk
the moment it finishes. Rows are keyed by deterministic ids (``g2-c5`` for a
candidate, ``g2-c5.1`` for its first repair), which is what makes a resumed
run skip work that was already done.
"""
from __future__ import annotations

import json
import math
import re
import shutil
import sqlite3
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import sqlite_utils

DB_NAME = "run.db"
RUN_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


class RunNotFound(LookupError):
    """No run with that id under the runs folder."""


def run_dir(runs_dir: str | Path, run_id: str) -> Path:
    return Path(runs_dir) / run_id


def db_path(runs_dir: str | Path, run_id: str) -> Path:
    return run_dir(runs_dir, run_id) / DB_NAME


def require_run(runs_dir: str | Path, run_id: str) -> Path:
    """The run's database path; RunNotFound with a one-line reason otherwise."""
    path = db_path(runs_dir, run_id)
    if not RUN_ID_PATTERN.match(run_id) or not path.is_file():
        raise RunNotFound(f"unknown run id {run_id!r}: no {path}")
    return path


def connect(path: str | Path) -> sqlite3.Connection:
    """A connection usable from the graph's worker threads (WAL, 30 s busy wait)."""
    conn = sqlite3.connect(str(path), check_same_thread=False, timeout=30.0)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn


@contextmanager
def snapshot_copy(path: str | Path) -> Iterator[Path]:
    """A private copy of a run's database (with its WAL), so reading never touches the original.

    Opening a WAL database, even read-only, may create or rewrite its -wal and
    -shm files; a branch must leave the parent run byte-identical.
    """
    path = Path(path)
    with tempfile.TemporaryDirectory(prefix="tap-snapshot-") as tmp:
        copy = Path(tmp) / path.name
        for suffix in ("", "-wal"):
            source = Path(str(path) + suffix)
            if source.exists():
                shutil.copyfile(source, str(copy) + suffix)
        yield copy


class RunStore:
    """The domain tables of one run. Thread-safe (one lock around the connection)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.db = sqlite_utils.Database(conn)
        self._lock = threading.Lock()
        self._create_tables()

    @classmethod
    def open(cls, path: str | Path) -> "RunStore":
        return cls(connect(path))

    def close(self) -> None:
        self.conn.close()

    # -- schema -------------------------------------------------------------
    def _create_tables(self) -> None:
        t = self.db
        with self._lock:
            t["runs"].create(
                {"id": str, "created": float, "status": str, "model": str, "dataset": str,
                 "llm": str, "prompts_dir": str, "prompts_hash": str, "git_rev": str,
                 "seed": int, "controller": str, "generations": int, "population": int,
                 "parent_run": str, "parent_generation": int, "config": str, "finished": float,
                 "wall_s": float, "llm_s": float, "eval_s": float},
                pk="id", if_not_exists=True)
            t["generations"].create(
                {"generation": int, "finished": float, "candidates": int, "ok": int,
                 "best_phi": float, "mean_phi": float, "best_id": str, "population": str, "plan": str},
                pk="generation", if_not_exists=True)
            t["proxies"].create(
                {"id": str, "candidate": str, "generation": int, "slot": int, "attempt": int,
                 "operator": str, "template": str, "parents": str, "code": str,
                 "reasoning": str, "ast_hash": str, "created": float},
                pk="id", if_not_exists=True)
            t["evaluations"].create(
                {"proxy_id": str, "candidate": str, "generation": int, "ast_hash": str,
                 "status": str, "phi": float, "rho_sens": float, "acc_quant": float,
                 "avg_bits": float, "size_mb": float, "bops": float, "bits": str,
                 "scores": str, "timings": str, "reason": str, "traceback_tail": str,
                 "reused_from": str, "wall_s": float, "finished": float},
                pk="proxy_id", if_not_exists=True)
            t["llm_calls"].create(
                {"id": int, "proxy_id": str, "agent": str, "template": str, "prompt": str,
                 "response": str, "tokens_in": int, "tokens_out": int, "latency_s": float,
                 "error": str, "created": float},
                pk="id", if_not_exists=True)
            t["controller"].create(
                {"generation": int, "kind": str, "weights": str, "probs": str, "outcomes": str},
                pk="generation", if_not_exists=True)
            t["evaluations"].create_index(["ast_hash"], if_not_exists=True)

    # -- writes (each one a committed transaction) -----------------------------
    def _write(self, table: str, row: dict, replace: bool = True) -> None:
        with self._lock, self.conn:
            self.db[table].insert(_encode(row), replace=replace, ignore=not replace)

    def record_run(self, row: dict) -> None:
        self._write("runs", {"created": time.time(), "status": "running", **row})

    def set_run_status(self, run_id: str, status: str, timings: dict[str, float] | None = None) -> None:
        """Mark the run; ``timings`` (wall_s, llm_s, eval_s) add up over resumed sessions."""
        with self._lock, self.conn:
            row = self.db["runs"].get(run_id)
            update = {"status": status, "finished": time.time()}
            for key, value in (timings or {}).items():
                update[key] = (row.get(key) or 0.0) + value
            self.db["runs"].update(run_id, update)

    def record_proxy(self, row: dict, calls: list[dict]) -> None:
        """A draft and the LLM calls that produced it, in one transaction."""
        with self._lock, self.conn:
            for call in calls:
                self.db["llm_calls"].insert(_encode({"proxy_id": row["id"], "created": time.time(), **call}))
            self.db["proxies"].insert(_encode({"created": time.time(), **row}), replace=True)

    def record_llm_calls(self, proxy_id: str, calls: list[dict]) -> None:
        with self._lock, self.conn:
            for call in calls:
                self.db["llm_calls"].insert(_encode({"proxy_id": proxy_id, "created": time.time(), **call}))

    def record_evaluation(self, row: dict) -> None:
        self._write("evaluations", {"finished": time.time(), **row})

    def record_generation(self, row: dict) -> None:
        self._write("generations", {"finished": time.time(), **row})

    def record_controller(self, row: dict) -> None:
        self._write("controller", row)

    def copy_rows_from(self, other: "RunStore", up_to_generation: int) -> None:
        """Inherit a parent run's rows of generations 0..up_to_generation (for --branch)."""
        with self._lock, self.conn:
            for table in ("proxies", "evaluations", "generations", "controller"):
                for row in other.rows(table, "generation <= ?", [up_to_generation]):
                    self.db[table].insert(row, replace=True)
            ids = [r["id"] for r in other.rows("proxies", "generation <= ?", [up_to_generation])]
            for row in other.rows("llm_calls"):
                if row["proxy_id"] in ids:
                    self.db["llm_calls"].insert({k: v for k, v in row.items() if k != "id"})

    # -- reads -----------------------------------------------------------------
    def rows(self, table: str, where: str | None = None, args: list | None = None,
             order_by: str | None = None) -> list[dict]:
        with self._lock:
            if not self.db[table].exists():
                return []
            return [_decode(r) for r in self.db[table].rows_where(where, args or [], order_by=order_by)]

    def get(self, table: str, key: Any) -> dict | None:
        with self._lock:
            try:
                return _decode(self.db[table].get(key))
            except sqlite_utils.db.NotFoundError:
                return None

    def run_row(self) -> dict:
        rows = self.rows("runs", order_by="created")
        if not rows:
            raise RunNotFound("the database holds no run")
        return rows[-1]

    def evaluation_by_hash(self, ast_hash: str) -> dict | None:
        """An earlier evaluation of the same proxy (same AST hash), if any.

        Only outcomes that belong to the code are reused: ``ok`` and ``rejected``
        (static gate). An error, timeout or kill may be the slot's fault, so the
        same proxy drafted again gets a fresh evaluation.
        """
        found = self.rows("evaluations", "ast_hash = ? and reused_from is null and status in ('ok', 'rejected')",
                          [ast_hash], order_by="finished")
        return found[0] if found else None

    def count(self, table: str) -> int:
        with self._lock:
            return self.db[table].count if self.db[table].exists() else 0


_JSON_COLUMNS = {"parents", "bits", "scores", "timings", "config", "weights", "probs", "outcomes", "population", "plan"}


def _encode(row: dict) -> dict:
    out = {}
    for key, value in row.items():
        if key in _JSON_COLUMNS and not isinstance(value, str) and value is not None:
            value = json.dumps(value, sort_keys=True)
        elif isinstance(value, float) and not math.isfinite(value):
            value = None  # -inf phi is "no fitness": NULL in SQL
        out[key] = value
    return out


def _decode(row: dict) -> dict:
    out = dict(row)
    for key in _JSON_COLUMNS & set(out):
        if isinstance(out[key], str):
            try:
                out[key] = json.loads(out[key])
            except json.JSONDecodeError:
                pass
    return out
