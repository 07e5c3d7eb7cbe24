"""How fast evaluator slots end with what started them (issue 14: a pool closed while
its slot loads must return within 10 s; no slot may outlive its orchestrator by
more than 5 s, whatever killed it).

    python -m benchmarks.sandbox_lifecycle [--repeats 3] [--backends process,docker]

Per backend, ``repeats`` times, each slot with a fresh ground-truth cache (so it
is loading / measuring the ground truth, minutes on a CPU, when it is cut off):

- ``close_s``: ``EvaluatorPool.close()`` while the slot loads;
- ``orphan_s``: from SIGTERM / SIGKILL of ``python -m sandbox.evaluate`` (while its
  slot measures the ground truth) until no process of the slot is left
  (a container's processes are visible on the host too).

Figures: ``benchmarks/results/sandbox_lifecycle.json`` with the machine and its load.
The Docker backend uses an engine that answers, or starts a private one
(``sandbox.local_engine``); it is skipped, with the reason, where none can run.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mpq.task import Task
from sandbox.docker_backend import DockerSettings
from sandbox.pool import EvaluatorPool
from sandbox.protocol import Limits

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "sandbox_lifecycle.json"
TASK = Task(dataset="embedded", eval_limit=32)
GUARD_S = 600.0


def slot_processes(cache: Path) -> list[int]:
    """Live processes of the slot that uses ``cache`` (its path is on the worker's command line)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if "sandbox.worker" in cmdline and str(cache) in cmdline and state != "Z":
            found.append(int(entry.name))
    return found


def _wait(condition, bound_s: float = GUARD_S, step_s: float = 0.02) -> bool:
    deadline = time.monotonic() + bound_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(step_s)
    return True


def close_while_loading(backend: str, settings, scratch: Path) -> float:
    cache = scratch / f"close-{backend}-{time.monotonic_ns()}"
    pool = EvaluatorPool(TASK, backend=backend, workers=1, limits=Limits(startup_s=GUARD_S), cache_dir=cache,
                         settings=settings, log=lambda line: None)
    try:
        if not _wait(lambda: bool(slot_processes(cache))):
            raise RuntimeError("the slot never started")
        time.sleep(2.0)  # well into loading (the truth alone takes minutes from a fresh cache)
    finally:
        start = time.monotonic()
        pool.close()
        took = time.monotonic() - start
    _wait(lambda: not slot_processes(cache), 60)
    return took


def orphan_after_kill(backend: str, sig: int, env: dict, scratch: Path) -> float:
    cache = scratch / f"orphan-{backend}-{sig}-{time.monotonic_ns()}"
    proxy = scratch / "p.py"
    proxy.write_text("def score(layer):\n    return 1.0\n")
    orchestrator = subprocess.Popen(
        [sys.executable, "-m", "sandbox.evaluate", str(proxy), "--sandbox", backend, "--dataset", "embedded",
         "--eval-limit", "32", "--cache-dir", str(cache)], cwd=ROOT, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    os.set_blocking(orchestrator.stderr.fileno(), False)
    seen = b""

    def measuring() -> bool:
        nonlocal seen
        seen += orchestrator.stderr.read() or b""
        return b"ground truth" in seen or orchestrator.poll() is not None

    _wait(measuring, step_s=0.2)
    if orchestrator.poll() is not None or not slot_processes(cache):
        raise RuntimeError(f"the slot never measured the ground truth: {seen.decode()[-500:]}")
    os.kill(orchestrator.pid, sig)
    start = time.monotonic()
    gone = _wait(lambda: not slot_processes(cache), 120)
    took = time.monotonic() - start
    orchestrator.wait(60)
    return took if gone else float("inf")


def _docker_settings():
    from sandbox.local_engine import EngineUnavailable, ensure_engine

    try:
        engine = ensure_engine()
    except EngineUnavailable as exc:
        return None, str(exc)
    return DockerSettings(docker_host=engine.docker_host, memory_mb=4096, pids=128), engine.docker_host


def measure(backend: str, repeats: int, scratch: Path) -> dict:
    settings, env = None, dict(os.environ)
    if backend == "docker":
        settings, host = _docker_settings()
        if settings is None:
            return {"skipped": host}
        if host:
            env["DOCKER_HOST"] = host
    figures: dict[str, list[float]] = {"close_s": [], "orphan_after_SIGTERM_s": [], "orphan_after_SIGKILL_s": []}
    for i in range(repeats):
        figures["close_s"].append(close_while_loading(backend, settings, scratch))
        for sig in (signal.SIGTERM, signal.SIGKILL):
            figures[f"orphan_after_{sig.name}_s"].append(orphan_after_kill(backend, sig, env, scratch))
        print(f"{backend} run {i + 1}/{repeats}: " + ", ".join(f"{k} {v[-1]:.2f}" for k, v in figures.items()),
              flush=True)
    return {key: {"values": values, "max": max(values), "median": statistics.median(values)}
            for key, values in figures.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sandbox_lifecycle", description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--backends", default="process,docker")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    started_load = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="tap-mpq-lifecycle-") as scratch:
        results = {backend: measure(backend, args.repeats, Path(scratch)) for backend in args.backends.split(",")}
    report = {"machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                          "load_average_before": started_load, "load_average_after": os.getloadavg(),
                          "note": "2-core CPU machine shared with other jobs"},
              "bounds": {"close_s": 10.0, "orphan_s": 5.0}, "repeats": args.repeats, "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(results, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
