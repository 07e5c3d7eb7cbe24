"""``sandbox.forkserver``: CPU slots forked from one pre-imported server per orchestrator
process and slot environment, with the isolation of an exec'd slot; GPU slots keep the exec
path, run here on the CPU by forcing it (``ProcessLauncher(forked=False)``)."""
import dataclasses
import os
import signal
import time
from pathlib import Path

import pytest
from sandbox_hostile import CANARIES
from test_sandbox_lifecycle import ancestors, is_alive, slot_processes
from test_sandbox_pool import CORPUS, GOOD, HOSTILE, LIMITS, TASK, run_one, ungated

from sandbox.pool import EvaluatorPool
from sandbox.process_backend import ProcessLauncher, namespace_support

NAMESPACED = pytest.mark.skipif(not namespace_support()[0], reason="no namespaces here (needs root on Linux)")


def server_of(cache: Path) -> int:
    """The fork server that forked the slot using ``cache`` (a child of this process)."""
    (slot, *_) = slot_processes(cache)
    servers = [pid for pid in ancestors(slot)
               if b"sandbox.forkserver" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    assert len(servers) == 1 and os.getpid() in ancestors(servers[0])[:1], (servers, ancestors(slot))
    return servers[0]


def the_worker(cache: Path) -> int:
    """The slot's worker: PID 1 of its namespace where there is one (the other is its holder)."""
    processes = slot_processes(cache)
    inner = [pid for pid in processes if any(q in processes for q in ancestors(pid))]
    return (inner or processes)[0]


def pool_at(cache: Path) -> EvaluatorPool:
    pool = EvaluatorPool(TASK, backend="process", workers=1, limits=LIMITS, cache_dir=cache)
    assert pool.wait_ready(900)
    return pool


def test_slots_of_two_pools_come_from_one_server_and_a_dead_server_is_replaced(tmp_path):
    cache, servers = tmp_path / "cache", []  # one cache: the ground truth is measured once
    for _ in range(2):
        with pool_at(cache) as pool:
            servers.append(server_of(cache))
            assert pool.evaluate(GOOD).status == "ok"
    assert servers[0] == servers[1], "each pool imported anew"
    os.kill(servers[0], signal.SIGKILL)
    deadline = time.monotonic() + 60
    while is_alive(servers[0]) and time.monotonic() < deadline:
        time.sleep(0.1)
    with pool_at(cache) as pool:
        assert server_of(cache) != servers[0]
        assert pool.evaluate("def score(layer):\n    return 1.0\n").status == "ok"


@NAMESPACED
@pytest.mark.parametrize("forked", [True, False], ids=["forked", "exec"])
def test_a_slot_is_pid_1_of_its_own_namespaces_either_way(tmp_path, monkeypatch, forked):
    monkeypatch.setattr(ProcessLauncher, "for_slot", classmethod(lambda cls, spec, settings=None: cls(spec, forked)))
    cache = tmp_path / "cache"
    with pool_at(cache):
        worker = the_worker(cache)
        status = Path(f"/proc/{worker}/status").read_text()
        assert [line.split()[-1] for line in status.splitlines() if line.startswith("NSpid:")] == ["1"]
        for kind in ("net", "mnt", "pid"):
            assert os.readlink(f"/proc/{worker}/ns/{kind}") != os.readlink(f"/proc/self/ns/{kind}"), kind
        assert any("sandbox.forkserver" in str(Path(f"/proc/{pid}/cmdline").read_bytes())
                   for pid in ancestors(worker)) == forked


def test_an_execd_slot_contains_what_escapes_isolation(tmp_path, monkeypatch):
    """The exec path (every GPU slot) is no longer the default on a CPU: the hostile proxies
    that only the operating system stops, without the gate, through it."""
    monkeypatch.setattr(ProcessLauncher, "for_slot", classmethod(lambda cls, spec, settings=None: cls(spec, False)))
    for path in CANARIES:
        path.unlink(missing_ok=True)
    with pool_at(tmp_path / "cache") as pool:
        for name in ("write_outside", "open_socket", "kill_parent"):
            result = run_one(pool, ungated(pool, (HOSTILE / f"{name}.py").read_text(), name))
            assert result.status in CORPUS[name][1], (name, result.status, result.reason)
        assert not [path for path in CANARIES if path.exists()]
        assert pool.evaluate("def score(layer):\n    return 1.0\n").status == "ok"
        assert any("namespaces" in note for note in dataclasses.asdict(pool.evaluate(
            "def score(layer):\n    return 1.0\n"))["isolation_notes"]) == namespace_support()[0]
