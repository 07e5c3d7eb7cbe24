"""The Docker backend: the container specification (pure, everywhere), and real
containers on a real engine, started by this module where none runs (root,
Linux: docker.io from the distribution's archive, a private dockerd, the
evaluator image imported offline). Skipped, with the reason, only where no
engine can run.
"""
import dataclasses
import io
import sys
import tarfile
import time
from pathlib import Path

import pytest
from sandbox_hostile import ALIVE, CANARIES

from mpq.task import Task
from sandbox.docker_backend import (
    CONTAINER_PROJECT,
    DockerSettings,
    container_spec,
    offline_rootfs,
)
from sandbox.process_backend import PROJECT_ROOT
from sandbox.protocol import Limits

HOSTILE = Path(__file__).parent / "hostile"
TASK = Task(dataset="embedded", eval_limit=32)
LIMITS = Limits(timeout_s=4, cpu_s=20, memory_mb=1024, scratch_mb=32)
GOOD = (PROJECT_ROOT / "mpq" / "proxies" / "weight_norm.py").read_text()
CACHE = Path("/var/cache/tap-mpq-test")


def spec(gpu=None, settings=None, threads=None):
    settings = (settings or DockerSettings(memory_mb=3000, pids=99, cpus=1.5)).resolved()
    return container_spec(settings, TASK.to_dict(), LIMITS, CACHE, gpu, threads=threads)


# --- the specification: a pure function -------------------------------------------

def test_containers_are_locked_down():
    s = spec()
    assert s["network_disabled"] is True and s["network_mode"] == "none"
    assert s["read_only"] is True and s["tmpfs"] == {"/tmp": "rw,nosuid,nodev,size=32m,mode=1777"}
    assert (s["mem_limit"], s["memswap_limit"], s["pids_limit"], s["nano_cpus"]) == ("3000m", "3000m", 99, 1_500_000_000)
    assert s["cap_drop"] == ["ALL"] and "SYS_ADMIN" not in s["cap_add"] and "NET_RAW" not in s["cap_add"]
    assert s["security_opt"] == ["no-new-privileges"]
    assert "device_requests" not in s
    assert s["auto_remove"] is True and s["detach"] is False  # StdinOnce: dies with the orchestrator
    assert set(s["environment"]) == {"PYTHONPATH", "HOME", "PATH", "LANG", "PYTHONDONTWRITEBYTECODE", "OMP_WAIT_POLICY"}
    assert spec(threads=2)["environment"]["OMP_NUM_THREADS"] == "2"  # the slot's share of the cores


def test_the_project_and_host_python_are_mounted_read_only():
    volumes = spec()["volumes"]
    assert volumes[str(PROJECT_ROOT)] == {"bind": str(PROJECT_ROOT), "mode": "ro"}
    assert volumes["/usr"] == {"bind": "/usr", "mode": "ro"}
    writable = [path for path, v in volumes.items() if v["mode"] != "ro"]
    assert writable == [str(CACHE)]  # ground truth, written by the trusted worker before any proxy runs
    command = spec()["command"]
    assert command[0] == sys.executable and command[1:3] == ["-m", "sandbox.worker"]
    assert "--lockdown" not in command


def test_one_gpu_per_slot_through_device_requests():
    (request,) = spec(gpu="1")["device_requests"]
    assert request["DeviceIDs"] == ["1"] and request["Capabilities"] == [["gpu"]]
    (everything,) = spec(gpu="all")["device_requests"]
    assert everything["Count"] == -1


def test_the_dockerfile_image_runs_its_own_python_on_the_mounted_project():
    settings = DockerSettings.for_dockerfile_image("tap-mpq-evaluator:cuda")
    s = spec(settings=settings)
    assert s["image"] == "tap-mpq-evaluator:cuda" and s["command"][0] == "python"
    assert s["volumes"][str(PROJECT_ROOT)] == {"bind": CONTAINER_PROJECT, "mode": "ro"}
    assert s["environment"]["PYTHONPATH"] == CONTAINER_PROJECT
    assert "/usr" not in s["volumes"]


def test_the_specification_is_a_pure_function():
    assert spec(gpu="0") == spec(gpu="0")


def test_the_dockerfile_matches_the_worker_it_runs():
    text = (PROJECT_ROOT / "sandbox" / "Dockerfile").read_text()
    assert "FROM pytorch/pytorch" in text and CONTAINER_PROJECT in text
    assert "mlxtend==0.25.0" in text and "USER" in text


def test_the_offline_root_file_system_is_tiny_and_has_nobody():
    data = offline_rootfs()
    assert len(data) < 2_000_000
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        names = set(tar.getnames())
        assert {"etc/passwd", "tmp", "usr", "bin", "lib"} <= names
        assert tar.getmember("bin").issym() and tar.getmember("bin").linkname == "usr/bin"
        assert b"nobody:x:65534" in tar.extractfile("etc/passwd").read()


# --- real containers ------------------------------------------------------------

@pytest.fixture(scope="module")
def engine():
    from sandbox.local_engine import EngineUnavailable, ensure_engine

    try:
        local = ensure_engine()
    except EngineUnavailable as exc:
        print(f"\nDocker tests skipped: {exc}")
        pytest.skip(f"no Docker engine can run here: {exc}")
    yield local
    local.stop()


@pytest.fixture(scope="module")
def docker_pool(engine):
    from sandbox.pool import EvaluatorPool

    settings = DockerSettings(docker_host=engine.docker_host, memory_mb=4096, pids=128)
    with EvaluatorPool(TASK, backend="docker", limits=LIMITS, docker=settings) as pool:
        assert pool.wait_ready(900)
        yield pool


def ungated(pool, name):
    request = pool.request((HOSTILE / f"{name}.py").read_text(), name)
    return dataclasses.replace(request, limits=dataclasses.replace(request.limits, static_gate=False))


@pytest.mark.docker
def test_a_container_slot_judges_a_proxy(docker_pool):
    result = docker_pool.evaluate(GOOD)
    assert result.status == "ok", (result.reason, result.traceback_tail)
    assert len(result.scores) == 53 and 0 <= result.acc_quant <= 1
    notes = " ".join(result.isolation_notes)
    assert "docker backend" in notes and "no network" in notes and "proxy as nobody" in notes


@pytest.mark.docker
@pytest.mark.parametrize("name, allowed", [("hard_exit", {"killed"}), ("write_outside", {"error"}),
                                           ("open_socket", {"error"}), ("read_secrets", {"error"}),
                                           ("fork_bomb", {"error", "killed", "timeout"})])
def test_hostile_proxies_are_contained_in_a_container(docker_pool, name, allowed):
    docker_pool.submit(ungated(docker_pool, name))
    (result,) = list(docker_pool.results())
    assert result.status in allowed, (result.status, result.reason)
    assert not [p for p in CANARIES if p.exists()]
    after = docker_pool.evaluate(ALIVE)
    assert after.status == "error" and "alive" in after.reason


def our_containers(engine) -> dict[str, str]:
    """{id: status} of this project's evaluator containers on the test engine."""
    from sandbox.docker_backend import client

    return {c.id: c.status for c in client(engine.docker_host).containers.list(
        all=True, filters={"label": "tap-mpq=evaluator"})}


def wait_for(condition, bound_s: float) -> bool:
    deadline = time.monotonic() + bound_s
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.2)
    return condition()


@pytest.mark.docker
def test_closing_the_pool_removes_its_containers_even_while_they_load(engine, tmp_path):
    from sandbox.pool import EvaluatorPool

    settings = DockerSettings(docker_host=engine.docker_host, memory_mb=4096, pids=128)
    before = set(our_containers(engine))
    pool = EvaluatorPool(TASK, backend="docker", limits=LIMITS, docker=settings, cache_dir=tmp_path / "fresh")
    try:  # a fresh cache: the slot is busy loading and measuring the ground truth for minutes
        assert pool.evaluate("import os\ndef score(l): return 1\n").status == "rejected"
        assert wait_for(lambda: set(our_containers(engine)) - before, 60), "no container started"
    finally:
        started = time.monotonic()
        pool.close()
        took = time.monotonic() - started
    assert took < 10.0, f"close took {took:.1f} s"
    assert wait_for(lambda: set(our_containers(engine)) <= before, 60), our_containers(engine)


@pytest.mark.docker
@pytest.mark.parametrize("signal_name", ["SIGTERM", "SIGKILL"])
def test_no_container_outlives_a_killed_evaluate_command(engine, tmp_path, signal_name):
    """SIGTERM (what timeout, systemd and batch schedulers send) ends the command through its
    KeyboardInterrupt path, which closes the pool and removes the container; SIGKILL leaves no
    cleanup code to run: the engine closes the container's input, the worker exits on it, even
    while measuring the ground truth, and the engine removes it."""
    import os
    import signal
    import subprocess

    proxy = tmp_path / "p.py"
    proxy.write_text("def score(layer):\n    return 1.0\n")
    env = {**os.environ, **({"DOCKER_HOST": engine.docker_host} if engine.docker_host else {})}
    before = set(our_containers(engine))
    orchestrator = subprocess.Popen(
        [sys.executable, "-m", "sandbox.evaluate", str(proxy), "--sandbox", "docker", "--dataset", "embedded", "--eval-limit", "32",
         "--cache-dir", str(tmp_path / "fresh")], cwd=PROJECT_ROOT, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    os.set_blocking(orchestrator.stderr.fileno(), False)
    seen = b""
    deadline = time.monotonic() + 600  # hang guard: until the slot measures the ground truth
    while b"ground truth" not in seen and orchestrator.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
        seen += orchestrator.stderr.read() or b""
    ours = set(our_containers(engine)) - before
    os.kill(orchestrator.pid, getattr(signal, signal_name))
    orchestrator.wait(60)
    assert b"ground truth" in seen and len(ours) == 1, seen.decode()[-1500:]
    assert wait_for(lambda: all(our_containers(engine).get(c) != "running" for c in ours), 5.0)
    assert wait_for(lambda: not ours & set(our_containers(engine)), 60)
