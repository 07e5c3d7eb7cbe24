"""Where a command's CPU time goes, by kind of process (issue 14: the suite runs in two pytest
processes on two cores and keeps them ~96% busy, so only less CPU makes it faster).

Runs COMMAND while a thread samples /proc every 0.2 s: for each process it keeps the last
utime + stime it saw and the kind its command line names (a pytest process, a sandbox worker,
exec'd or forked, a fork server, ``graph.run``, Ray's processes, Docker's, the local LLM...).
A process that lives less than one interval is missed, and each loses at most one interval of
CPU at its end; the machine's busy time from /proc/stat (everything, this sampler included) is
reported beside the attributed total so the coverage is visible. Every process started while
the command runs counts, its own or not (Ray's and Docker's daemons leave its process tree), so
run it on a machine where nothing else starts processes. Results merge into
benchmarks/results/suite_cpu.json under ``--label``.

    python -m benchmarks.suite_cpu --label head -- .venv/bin/python -m pytest -n 2 --dist loadfile -q
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

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "suite_cpu.json"
INTERVAL_S = 0.2
TICKS = os.sysconf("SC_CLK_TCK")

# (what the command line contains, the kind), first match wins: the more specific first.
KINDS: tuple[tuple[str, str], ...] = (
    ("namespace holder", "sandbox: namespace holders"),
    ("sandbox.forkserver", "sandbox: fork servers"),
    ("\0python -m sandbox.worker", "sandbox: forked workers (and their proxies)"),  # a title: one string
    ("-m sandbox.worker", "sandbox: exec'd workers and Docker's (and their proxies)"),
    ("unshare", "sandbox: unshare wrappers"),
    ("ray::", "Ray: actors and idle workers"),
    ("/ray/", "Ray: head (gcs, raylet, agents, dashboard)"),
    ("containerd-shim", "Docker: container shims"),
    ("dockerd", "Docker: engine"),
    ("containerd", "Docker: engine"),
    ("docker", "Docker: CLI"),
    ("agents.local_server", "local LLM server"),
    ("xllamacpp", "local LLM server"),
    ("torchrun", "torchrun"),
    ("-m graph.run", "python -m graph.run"),
    ("-m sandbox.evaluate", "python -m sandbox.evaluate"),
    ("-m sandbox.leaderboard", "python -m sandbox.leaderboard"),
    ("-m mpq.", "python -m mpq.*"),
    ("-m benchmarks.", "python -m benchmarks.*"),
    ("pytest", "pytest processes"),  # after the modules: their arguments name pytest's tmp folders
    ("exec(eval(sys.stdin.readline()))", "pytest processes"),  # pytest-xdist's workers (execnet)
    ("-m ", "other python -m"),
    ("python", "other python"),
)


def kind_of(command: str) -> str:
    for needle, kind in KINDS:
        if needle in command:
            return kind
    return "other: " + (command.split(" ", 1)[0].rsplit("/", 1)[-1] or "?")


def _stat(pid: str) -> tuple[int, int] | None:
    """(start time, utime + stime) in clock ticks."""
    fields = stat_fields(pid)
    return (int(fields[19]), int(fields[11]) + int(fields[12])) if fields else None


def _command(pid: str) -> str:
    """The command line, its arguments joined by spaces; a title set by setproctitle (one string,
    with no argument separators) is marked by a leading NUL."""
    args = [part.decode(errors="replace") for part in cmdline(pid)]
    return "\0" + args[0] if len(args) == 1 else " ".join(args)


def _machine_busy_ticks() -> int:
    user, nice, system, _idle, _iowait, irq, softirq, steal = (
        int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9])
    return user + nice + system + irq + softirq + steal


def sample(stop: threading.Event, seen: dict[tuple[int, int], list], mine: int) -> None:
    """``seen[(pid, start time)] = [kind, ticks]``: the start time tells a reused pid apart.
    A process's kind is read again while its command line may still change (fork, then exec)."""
    while not stop.is_set():
        for name in os.listdir("/proc"):
            if not name.isdigit() or int(name) == mine:
                continue
            stat = _stat(name)
            if stat is None:
                continue
            start, ticks = stat
            entry = seen.setdefault((int(name), start), ["", 0])
            entry[1] = ticks
            if ticks < 3 * TICKS or not entry[0]:  # still starting: it may exec or take a title
                command = _command(name)
                if command:
                    entry[0] = kind_of(command)
        stop.wait(INTERVAL_S)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--label", required=True)
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command to watch, after --")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given (put it after --)")
    before = {(int(p), stat[0]) for p in os.listdir("/proc") if p.isdigit() and (stat := _stat(p))}
    seen: dict[tuple[int, int], list] = {}
    stop = threading.Event()
    sampler = threading.Thread(target=sample, args=(stop, seen, os.getpid()), daemon=True)
    busy_before, started = _machine_busy_ticks(), time.monotonic()
    sampler.start()
    parent = os.getpid()  # the watched command dies with this benchmark, whatever ends it
    rc = subprocess.run(command, cwd=ROOT, preexec_fn=lambda: isolation.die_with_parent(parent)).returncode
    wall = time.monotonic() - started
    stop.set()
    sampler.join()
    busy = (_machine_busy_ticks() - busy_before) / TICKS
    by_kind: collections.Counter = collections.Counter()
    counts: collections.Counter = collections.Counter()
    for key, (kind, ticks) in seen.items():
        if key in before:  # only processes the command started count
            continue
        by_kind[kind or "unread"] += ticks / TICKS
        counts[kind or "unread"] += 1
    attributed = sum(by_kind.values())
    result = {
        "command": command, "rc": rc, "wall_s": round(wall, 1), "machine_busy_cpu_s": round(busy, 1),
        "machine_busy_fraction": round(busy / (wall * (os.cpu_count() or 1)), 3),
        "attributed_cpu_s": round(attributed, 1),
        "by_kind": {k: {"cpu_s": round(v, 1), "processes": counts[k]} for k, v in by_kind.most_common()},
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count()},
    }
    data = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    data[args.label] = result
    RESULTS.write_text(json.dumps(data, indent=2) + "\n")
    print(f"wall {result['wall_s']} s, machine busy {result['machine_busy_cpu_s']} CPU-s "
          f"({result['machine_busy_fraction']:.0%}), attributed {result['attributed_cpu_s']} CPU-s")
    for kind, row in result["by_kind"].items():
        print(f"{row['cpu_s']:8.1f} CPU-s  {row['processes']:5d}  {kind}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
