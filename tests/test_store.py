"""The run store: real SQLite files, WAL, JSON columns, inheritance for --branch."""
import hashlib
import math
import sqlite3
import threading

import pytest

from graph.store import RunNotFound, RunStore, connect, require_run, snapshot_copy


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def store(tmp_path):
    s = RunStore.open(tmp_path / "run.db")
    yield s
    s.close()


def test_tables_and_wal(store, tmp_path):
    names = {r[0] for r in store.conn.execute("select name from sqlite_master where type='table'")}
    assert {"runs", "generations", "proxies", "evaluations", "llm_calls", "controller"} <= names
    assert store.conn.execute("pragma journal_mode").fetchone()[0] == "wal"


def test_evaluation_is_committed_at_once_and_minus_inf_is_null(store, tmp_path):
    store.record_evaluation({"proxy_id": "g0-c0", "candidate": "g0-c0", "generation": 0, "ast_hash": "h",
                             "status": "error", "phi": -math.inf, "bits": None, "reason": "boom"})
    store.record_evaluation({"proxy_id": "g0-c1", "candidate": "g0-c1", "generation": 0, "ast_hash": "k",
                             "status": "ok", "phi": 0.5, "bits": {"a": 4}, "timings": {"eval_s": 1.0}})
    # A second, independent connection sees both rows: they are committed, not pending.
    other = sqlite3.connect(tmp_path / "run.db")
    rows = dict(other.execute("select proxy_id, phi from evaluations").fetchall())
    assert rows == {"g0-c0": None, "g0-c1": 0.5}
    assert store.get("evaluations", "g0-c1")["bits"] == {"a": 4}
    assert store.evaluation_by_hash("k")["proxy_id"] == "g0-c1"
    assert store.evaluation_by_hash("missing") is None
    assert store.evaluation_by_hash("h") is None  # an error may be the slot's fault: not reused


def test_proxy_and_calls_in_one_write(store):
    store.record_proxy({"id": "g0-c0", "candidate": "g0-c0", "generation": 0, "slot": 0, "attempt": 0,
                        "operator": "init", "template": "init", "parents": [], "code": "x", "reasoning": "r",
                        "ast_hash": "h"},
                       [{"agent": "proposer", "template": "init", "prompt": "p", "response": "x",
                         "tokens_in": 1, "tokens_out": 1, "latency_s": 0.1, "error": None}])
    assert store.count("proxies") == 1 and store.count("llm_calls") == 1
    assert store.rows("llm_calls")[0]["proxy_id"] == "g0-c0"


def test_parallel_writers(store):
    def write(i):
        store.record_evaluation({"proxy_id": f"g0-c{i}", "candidate": f"g0-c{i}", "generation": 0,
                                 "ast_hash": str(i), "status": "ok", "phi": i / 10})
    threads = [threading.Thread(target=write, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert store.count("evaluations") == 16


def test_copy_rows_up_to_generation(store, tmp_path):
    for g in range(3):
        store.record_generation({"generation": g, "candidates": 1, "ok": 1, "best_phi": g, "mean_phi": g,
                                 "best_id": f"g{g}-c0", "population": [], "plan": []})
        store.record_proxy({"id": f"g{g}-c0", "candidate": f"g{g}-c0", "generation": g, "slot": 0,
                            "attempt": 0, "operator": "init", "template": "init", "parents": [], "code": "",
                            "reasoning": "", "ast_hash": str(g)},
                           [{"agent": "proposer", "template": "init", "prompt": "", "response": "",
                             "tokens_in": 0, "tokens_out": 0, "latency_s": 0.0, "error": None}])
    child = RunStore.open(tmp_path / "child.db")
    child.copy_rows_from(store, 1)
    assert [r["generation"] for r in child.rows("generations", order_by="generation")] == [0, 1]
    assert child.count("proxies") == 2 and child.count("llm_calls") == 2
    child.close()


def test_snapshot_copy_leaves_original_untouched(store, tmp_path):
    store.record_run({"id": "r", "config": {"a": 1}})
    store.close()
    path = tmp_path / "run.db"
    before = _digest(path)
    with snapshot_copy(path) as copy:
        reader = RunStore.open(copy)
        assert reader.run_row()["config"] == {"a": 1}
        reader.record_run({"id": "other"})  # even a write lands in the copy only
        reader.close()
    assert _digest(path) == before


def test_require_run(tmp_path):
    with pytest.raises(RunNotFound, match="unknown run id"):
        require_run(tmp_path, "nope")
    with pytest.raises(RunNotFound):
        require_run(tmp_path, "../etc")
    (tmp_path / "ok").mkdir()
    connect(tmp_path / "ok" / "run.db").close()
    assert require_run(tmp_path, "ok").name == "run.db"
