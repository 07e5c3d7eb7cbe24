"""The Ray backend on a local Ray instance (issue 18): slots as actors, faults, hostile
proxies; the end of a run (Ray stopped, no orphan process) is in test_sandbox_ray_lifecycle.py,
a file of its own so that ``make test``'s two processes run it beside this one.

One Ray instance and one warm 2-slot pool serve the module. Faults are made by
killing real processes found in /proc: the actor of the slot whose proxy is
running, or the worker process inside it. No timed assertion: every wait has a
generous hang guard only.
"""
import dataclasses
import os
import signal
import socket
import time
import uuid
from pathlib import Path

import pytest
from sandbox_hostile import ALIVE, CANARIES, SECRET, SECRET_FILE
from test_sandbox_lifecycle import LOADING_EVAL_LIMIT, cpu_seconds
from test_sandbox_pool import CORPUS, GOOD, HOSTILE, TASK

from mpq.cache import default_cache_dir
from mpq.task import Task
from sandbox.pool import BACKEND_NAMES, EvaluatorPool, PoolError
from sandbox.protocol import Limits
from sandbox.ray_backend import RayLauncher, RaySettings, actor_environment, ray_installed

pytestmark = [pytest.mark.ray, pytest.mark.skipif(
    not ray_installed(), reason="Ray is not installed: pip install '.[ray]' to run the Ray backend's tests")]

ROOT = Path(__file__).parent.parent
LIMITS = Limits(timeout_s=2.5, cpu_s=60, memory_mb=1024, fitness_s=60, startup_s=900)
GUARD_S = 600
"""Hang guard for anything that waits on a slot (a loaded 2-core machine)."""
SLOW = """
def score(layer):
    total = 0.0
    for i in range(500000):
        total += (i % 7) * 1e-9
    return float(layer.depth) + total
"""
"""A proxy that is busy long enough to be caught running, and then finishes: 53 layers x 0.5 M
steps, seconds even on an idle machine, against a /proc poll every 0.05 s and a kill right after
it finds the proxy. It runs twice per test (killed, then retried to the end)."""
NOBODY = 65534


# --- processes, from /proc ------------------------------------------------------------

def processes() -> dict[int, tuple[int, int, str]]:
    """pid -> (parent pid, uid, command line) of every live process."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text().splitlines()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = {line.split(":")[0]: line.split(":", 1)[1].split() for line in status if ":" in line}
        if fields.get("State", ["Z"])[0] == "Z":
            continue
        table[int(entry.name)] = (int(fields["PPid"][0]), int(fields["Uid"][0]), cmdline)
    return table


def ancestors(pid: int, table) -> list[int]:
    chain = []
    while pid in table and pid not in chain:
        chain.append(pid)
        pid = table[pid][0]
    return chain


def running_proxy(marker: str) -> tuple[int, int, int] | None:
    """(actor, worker, proxy) pids of a slot whose worker has ``marker`` (its cache dir) in its
    command line and whose proxy child (the nobody user) is running now; None if none is."""
    table = processes()
    for pid, (parent, uid, _) in table.items():
        if uid != NOBODY or marker not in table.get(parent, (0, 0, ""))[2]:
            continue
        chain = ancestors(pid, table)
        actors = [p for p in chain if table[p][2].startswith("ray::SlotActor")]
        workers = [p for p in chain if "-m sandbox.worker" in table[p][2]  # not unshare, not the holder
                   and not table[p][2].split(" ", 1)[0].endswith("unshare") and "namespace holder" not in table[p][2]]
        if actors and workers:
            return actors[0], workers[-1], pid
    return None


def wait_for(what, guard_s: float = GUARD_S):
    deadline = time.monotonic() + guard_s
    while time.monotonic() < deadline:
        found = what()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"hang guard: nothing after {guard_s} s")


def marked_cache(tmp_path: Path) -> Path:
    """A cache dir by a unique name (found in worker command lines), sharing the real cache."""
    link = tmp_path / f"cache-{uuid.uuid4().hex[:8]}"
    default_cache_dir().mkdir(parents=True, exist_ok=True)
    link.symlink_to(default_cache_dir(), target_is_directory=True)
    return link


def with_limits(pool, source: str, request_id: str, **changes):
    request = pool.request(source, request_id)
    return dataclasses.replace(request, limits=dataclasses.replace(request.limits, **changes))


# --- fixtures -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cluster():
    import ray

    for path in CANARIES:
        path.unlink(missing_ok=True)
    os.environ["TAP_MPQ_HOSTILE_API_KEY"] = SECRET  # the actors inherit it; no proxy may see it
    SECRET_FILE.write_text(SECRET)
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()
        os.environ.pop("TAP_MPQ_HOSTILE_API_KEY", None)
        SECRET_FILE.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return marked_cache(tmp_path_factory.mktemp("ray"))


@pytest.fixture(scope="module")
def pool(cluster, cache):
    with EvaluatorPool(TASK, backend="ray", workers=2, limits=LIMITS, cache_dir=cache) as pool:
        assert pool.wait_ready(GUARD_S)
        yield pool


# --- a pool like any other --------------------------------------------------------------

def test_ray_is_a_backend_but_never_the_automatic_choice():
    assert "ray" in BACKEND_NAMES and BACKEND_NAMES.index("ray") > BACKEND_NAMES.index("process")
    assert RayLauncher.availability(RaySettings())[0]


def test_settings_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("TAP_MPQ_RAY_ADDRESS", "ray://head:10001")
    monkeypatch.setenv("TAP_MPQ_RAY_GPUS_PER_SLOT", "0.25")
    settings = RaySettings.from_environment()
    assert (settings.address, settings.gpus_per_slot, settings.cpus_per_slot) == ("ray://head:10001", 0.25, None)
    monkeypatch.setenv("TAP_MPQ_RAY_CPUS_PER_SLOT", "2")
    assert RaySettings.from_environment().cpus_for(share_among=4, cpus=16.0) == 2.0
    # unset: a local instance's CPUs shared evenly (at least one each), one on a cluster
    assert RaySettings().cpus_for(share_among=4, cpus=16.0) == 4.0 and RaySettings().cpus_for() == 1.0
    assert RaySettings().cpus_for(share_among=3, cpus=2.0) == 1.0
    assert RaySettings().gpus_for({"device": "cuda"}, share_among=4, gpus=1.0) == 0.25
    assert RaySettings().gpus_for({"device": "cuda"}) == 1.0 and RaySettings().gpus_for({"device": "cpu"}) == 0.0


def test_a_slot_actor_keeps_the_callers_python_path(monkeypatch):
    # found on the GPU machine: Ray installed with `pip install --target`, importable only through
    # PYTHONPATH; an actor env that replaced it started workers that could not import ray, and the
    # pool waited for them until its start-up limit
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(["/tmp/site", str(ROOT)]))
    assert actor_environment()["env_vars"]["PYTHONPATH"].split(os.pathsep) == [str(ROOT), "/tmp/site"]
    monkeypatch.delenv("PYTHONPATH")
    assert actor_environment()["env_vars"]["PYTHONPATH"] == str(ROOT)


def test_a_baseline_is_judged_in_an_actor_under_the_process_isolation(pool):
    result = pool.evaluate(GOOD, "weight_norm")
    assert result.status == "ok", result.reason
    assert len(result.scores) == 53 and abs(result.avg_bits - 3.0) < 0.05
    notes = " ".join(result.isolation_notes)
    assert "ray backend" in notes and "ray actor on node" in notes and "fork mode" in notes
    if os.geteuid() == 0:  # the worker on the node is namespaced, locked down, and the proxy is nobody
        assert "network, mount and PID namespaces" in notes and "read-only" in notes and "nobody" in notes


def test_results_come_in_completion_order_with_their_ids(pool):
    pool.submit(pool.request((HOSTILE / "infinite_loop.py").read_text(), "slow"))
    pool.submit(pool.request(ALIVE, "quick"))
    pool.submit(pool.request("import os\ndef score(l): return 1\n", "refused"))
    results = list(pool.results())
    assert [r.id for r in results] == ["refused", "quick", "slow"]
    assert [r.status for r in results] == ["rejected", "error", "timeout"]


# --- hostile proxies: contained as under the process backend ------------------------------

@pytest.mark.parametrize("name", sorted(CORPUS))
def test_each_hostile_proxy_is_contained_without_the_gate(pool, name):
    _, allowed = CORPUS[name]
    listener = socket.create_server(("127.0.0.1", 48766)) if name == "open_socket" else None
    try:
        request = with_limits(pool, (HOSTILE / f"{name}.py").read_text(), name, static_gate=False)
        pool.submit(request)
        (result,) = list(pool.results())
        if listener is not None:
            listener.setblocking(False)
            with pytest.raises(BlockingIOError):
                listener.accept()  # nobody connected
    finally:
        if listener is not None:
            listener.close()
    assert result.status in allowed, (result.status, result.reason)
    assert not [str(p) for p in CANARIES if p.exists()], f"{name} wrote outside its scratch dir"
    assert SECRET not in result.reason + result.traceback_tail
    after = pool.evaluate(ALIVE)
    assert after.status == "error" and "alive at depth 0" in after.reason


# --- faults: retried once on another slot, nothing lost, nothing twice ---------------------

def kill_during_an_evaluation(pool, cache: Path, victim: str) -> list:
    """Submit SLOW, then three baselines; SIGKILL the ``victim`` process ("actor" or
    "worker") of the slot running SLOW while its proxy runs; every result."""
    restarts = pool.restarts
    pool.submit(with_limits(pool, SLOW, "slow", timeout_s=300))
    actor, worker, _ = wait_for(lambda: running_proxy(str(cache)))
    for i in range(3):
        pool.submit(pool.request(GOOD, f"good-{i}"))
    os.kill(actor if victim == "actor" else worker, signal.SIGKILL)
    results = list(pool.results())
    assert pool.restarts == restarts + 1
    return results


@pytest.mark.parametrize("victim", ["actor", "worker"])
def test_a_slot_killed_mid_evaluation_costs_no_evaluation(pool, cache, victim):
    results = kill_during_an_evaluation(pool, cache, victim)
    ids = [r.id for r in results]
    assert sorted(ids) == ["good-0", "good-1", "good-2", "slow"], ids  # each once: none lost, none twice
    assert all(r.status == "ok" for r in results), [(r.id, r.status, r.reason) for r in results]
    assert pool.wait_ready(GUARD_S) and pool.evaluate(GOOD).status == "ok"  # the slot was replaced


def test_a_slot_that_dies_twice_is_recorded_killed_and_a_hang_is_killed(cluster, tmp_path):
    cache = marked_cache(tmp_path)
    limits = dataclasses.replace(LIMITS, fitness_s=20)  # patience for a proxy that swallows its alarm
    with EvaluatorPool(TASK, backend="ray", workers=1, limits=limits, cache_dir=cache,
                       worker_mode="in-process") as gpu_like:
        assert gpu_like.wait_ready(GUARD_S)
        exits = with_limits(gpu_like, (HOSTILE / "hard_exit.py").read_text(), "exit", static_gate=False)
        gpu_like.submit(exits)
        (killed,) = list(gpu_like.results())
        assert killed.status == "killed" and "retried once already" in killed.reason, killed.reason
        assert gpu_like.restarts == 2
        hung = [pid for pid, (_, uid, line) in processes().items() if uid == NOBODY and str(cache) in line]
        assert hung, "the in-process worker runs as nobody"
        # Its proxy never answers, so no fitness follows: the pool's patience for it is timeout_s + fitness_s
        # + ANSWER_GRACE_S, and fitness_s=0 makes that 12.5 s instead of 32.5 s; the outcome is the same.
        stuck = with_limits(gpu_like, (HOSTILE / "signal_handlers.py").read_text(), "stuck", static_gate=False,
                            fitness_s=0)
        gpu_like.submit(stuck)
        (timeout,) = list(gpu_like.results())
        assert timeout.status == "timeout" and "replaced" in timeout.reason, timeout.reason
        wait_for(lambda: not set(hung) & set(processes()), 60)  # killed, not abandoned
        assert gpu_like.evaluate(GOOD).status == "ok"


def test_without_ray_the_backend_says_how_to_install_it(monkeypatch):
    import sandbox.ray_backend

    monkeypatch.setattr(sandbox.ray_backend, "ray_installed", lambda: False)
    with pytest.raises(PoolError, match=r"--sandbox ray: Ray is not installed: pip install 'tap-mpq\[ray\]'"):
        EvaluatorPool(TASK, backend="ray")


# --- issue 14's bounds on the Ray backend: close while loading, orchestrator killed ----------

CLOSE_BOUND_S = 10.0
SLOT_ORPHAN_BOUND_S = 5.0
"""A slot (actor, worker, proxy) outlives its orchestrator by at most this (issue 14)."""


def slot_pids(cache: Path) -> list[int]:
    """The slot processes of ``cache``: Ray's slot actors whose worker uses it, the workers and
    their proxies (Ray's own head processes are not slots)."""
    table = processes()
    workers = {pid for pid, (_, _, line) in table.items() if "sandbox.worker" in line and str(cache) in line}
    actors = {p for pid in workers for p in ancestors(pid, table) if table[p][2].startswith("ray::SlotActor")}
    proxies = {pid for pid, (parent, _, _) in table.items() if parent in workers}
    return sorted(workers | actors | proxies)


def gone_within(what, bound_s: float) -> list[int]:
    deadline = time.monotonic() + bound_s
    while (alive := what()) and time.monotonic() < deadline:
        time.sleep(0.1)
    return alive


def test_closing_a_ray_pool_while_its_slot_loads_returns_at_once(cluster, tmp_path):
    """A fresh cache: the slot measures the ground truth (a minute) before it is ready. Closed
    while it does, the pool must neither wait for it nor leave it running."""
    cache = tmp_path / f"fresh-cache-{uuid.uuid4().hex[:8]}"
    pool = EvaluatorPool(Task(dataset="embedded", eval_limit=LOADING_EVAL_LIMIT), backend="ray", workers=1,
                         limits=LIMITS, cache_dir=cache)
    try:
        wait_for(lambda: any(cpu_seconds(pid) > 2.0 for pid in slot_pids(cache)))
        assert not pool.wait_ready(0), "the slot was ready: it did not load from a fresh cache"
    finally:
        started = time.monotonic()
        pool.close()
        took = time.monotonic() - started
    assert took < CLOSE_BOUND_S, f"close took {took:.1f} s"
    assert gone_within(lambda: slot_pids(cache), SLOT_ORPHAN_BOUND_S) == []
