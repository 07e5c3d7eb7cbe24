"""How many evaluator workers a command starts, who starts them, and what one start imports
(issue 14: where the test suite's time goes beyond single slow tests).

Runs COMMAND while a thread samples /proc every 0.25 s for new ``python -m sandbox.worker``
processes (a worker lives for seconds, so none is missed) and walks up each one's parents to
its orchestrator: the first ancestor that is neither the ``unshare`` wrapper, a namespace holder,
a fork server nor a worker (the pytest process, a ``graph.run`` subprocess, a Ray slot actor, a
Docker container's shim). A worker forked by ``sandbox.forkserver`` shows the exec'd worker's
command line as its process title (one string) and is counted as ``forked``.
Then it times the worker's own import set in fresh interpreters. Results merge into
benchmarks/results/slot_starts.json under ``--label``.

    python -m benchmarks.slot_starts --label suite -- .venv/bin/python -m pytest -q
    python -m benchmarks.slot_starts --label one-pool -- .venv/bin/python -m sandbox.evaluate P.py
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

from benchmarks.procfs import cmdline, stat_fields
from sandbox import isolation
from sandbox.forkserver import PRELOAD

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "slot_starts.json"
WORKER_IMPORTS = "import " + ", ".join(PRELOAD)
"""What a worker imports before it loads its evaluator (what the fork server imports once)."""
UNIDENTIFIED = ("not identified (the parent chain reached PID 1 first: an orchestrator killed by a "
                "lifecycle test, or one already gone)")
RECHECK_S = 3.0
"""A new pid's command line is read again for this long: fork, then exec of unshare, then of python."""


def _parent(pid: int) -> int:
    fields = stat_fields(pid)
    return int(fields[1]) if fields else 0


def orchestrator_kind(command: list[bytes]) -> str:
    """What started a worker, from its command line (by the program or module, not its arguments:
    a ``graph.run`` under the suite names pytest's temporary folders)."""
    args = [part.decode(errors="replace") for part in command if part]
    text = " ".join(args)
    if "SlotActor" in text:
        return "a Ray slot actor"
    if "containerd-shim" in text:
        return "a Docker container"
    if "-m" in args[:-1]:
        module = args[args.index("-m") + 1]
        return "the pytest process" if module == "pytest" else f"python -m {module}"
    if any(Path(arg).name == "pytest" for arg in args[:2]):
        return "the pytest process"
    if "-c" in args:
        return "python -c (a test's own orchestrator script)"
    return UNIDENTIFIED


def _is_worker(command: list[bytes]) -> bool:
    """An exec'd worker (``-m sandbox.worker`` in its arguments) or a forked one (that as its
    title); not the ``unshare`` wrapper nor a forked slot's namespace holder."""
    text = b" ".join(command)
    return (b"-m sandbox.worker" in text and bool(command) and not command[0].endswith(b"unshare")
            and b"namespace holder" not in text)


def _is_slot_machinery(command: list[bytes]) -> bool:
    """What stands between a worker and its orchestrator: unshare, a holder, a fork server."""
    text = b" ".join(command)
    return command[0].endswith(b"unshare") or b"sandbox.worker" in text or b"sandbox.forkserver" in text


def _orchestrator(pid: int) -> tuple[int, str]:
    parent = _parent(pid)
    while parent > 1:
        command = cmdline(parent)
        if command and not _is_slot_machinery(command):
            return parent, orchestrator_kind(command)
        parent = _parent(parent)
    return 0, orchestrator_kind([])


def sample_workers(stop: threading.Event, found: list[dict]) -> None:
    first_seen: dict[int, float] = {}
    logged: set[int] = set()
    while not stop.is_set():
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            pid = int(name)
            if pid in logged or time.monotonic() - first_seen.setdefault(pid, time.monotonic()) > RECHECK_S:
                continue
            command = cmdline(pid)
            if _is_worker(command):
                logged.add(pid)
                parent, kind = _orchestrator(pid)
                found.append({"t": round(time.time(), 1), "pid": pid, "orchestrator": parent, "kind": kind,
                              "forked": command[0].startswith(b"python -m sandbox.worker")})
        stop.wait(0.25)


def import_seconds(repeats: int) -> list[float]:
    """Wall seconds of the worker's import set, each in a fresh interpreter."""
    times = []
    for _ in range(repeats):
        started = time.monotonic()
        subprocess.run([sys.executable, "-c", WORKER_IMPORTS], cwd=ROOT, check=True)
        times.append(round(time.monotonic() - started, 2))
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--label", required=True)
    parser.add_argument("--imports", type=int, default=5, help="fresh interpreters timing the worker's imports")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command to watch, after --")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given (put it after --)")
    found: list[dict] = []
    stop = threading.Event()
    sampler = threading.Thread(target=sample_workers, args=(stop, found), daemon=True)
    sampler.start()
    started = time.monotonic()
    parent = os.getpid()  # the watched command dies with this benchmark, whatever ends it
    rc = subprocess.run(command, cwd=ROOT, preexec_fn=lambda: isolation.die_with_parent(parent)).returncode
    wall = round(time.monotonic() - started, 1)
    stop.set()
    sampler.join()
    imports = import_seconds(args.imports)
    kinds = collections.Counter(row["kind"] for row in found)
    per_orchestrator = collections.Counter(row["orchestrator"] for row in found)
    result = {"command": command, "rc": rc, "wall_s": wall, "worker_starts": len(found),
              "forked_starts": sum(row["forked"] for row in found),
              "by_orchestrator_kind": dict(kinds.most_common()),
              "orchestrators": len(per_orchestrator),
              "starts_per_orchestrator": sorted(per_orchestrator.values(), reverse=True),
              "worker_import_s": imports, "worker_imports": WORKER_IMPORTS,
              "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                          "load1_after": float(Path("/proc/loadavg").read_text().split()[0])}}
    data = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    data[args.label] = result
    RESULTS.write_text(json.dumps(data, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=2))
    return rc


if __name__ == "__main__":
    sys.exit(main())
