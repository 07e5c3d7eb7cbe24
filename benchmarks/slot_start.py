"""What a slot start costs: an exec'd worker vs one forked by ``sandbox.forkserver``.

In one orchestrator process, alternating (a busy machine slows both alike): a fresh
process-backend slot started and waited for until it says ``ready`` (imports, task
load, ground truth from the cache, namespaces and mount lockdown), then killed. The
exec'd slot pays the worker's imports every time; the forked one only on the first
start of the process (the server's imports, reported apart). Also the CPU seconds the
slot's processes had used when ready (/proc: ``unshare`` or the namespace holder, and
the worker; a forked process starts its count at zero).

    python3 -m benchmarks.slot_start                # 5 rounds, figures in results/slot_start.json
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

from benchmarks.quantizer import machine
from mpq.cache import default_cache_dir
from mpq.task import Task
from sandbox.backend import SlotSpec
from sandbox.pool import SlotConnection, absolute_paths
from sandbox.process_backend import ProcessLauncher
from sandbox.protocol import Limits

RESULTS = Path(__file__).resolve().parent / "results"


def slot_cpu_s(marker: str) -> float:
    """utime + stime of the live processes whose command line has ``marker`` (/proc), seconds."""
    total = 0
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and marker.encode() in (entry / "cmdline").read_bytes().replace(b"\0", b" "):
                total += sum(int(f) for f in (entry / "stat").read_text().rsplit(")", 1)[1].split()[11:13])
        except OSError:
            continue
    return total / os.sysconf("SC_CLK_TCK")


def start_until_ready(launcher: ProcessLauncher, limits: Limits) -> tuple[float, float]:
    """(wall seconds until ready, CPU seconds of the slot's processes by then)."""
    begin = time.perf_counter()
    slot = SlotConnection.connect(launcher.start(), launcher.notes(), limits, lambda done, total: None)
    elapsed = time.perf_counter() - begin
    cpu = slot_cpu_s(f"sandbox.worker --cache-dir {launcher.spec.cache_dir}")
    slot.close()
    return elapsed, cpu


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=RESULTS / "slot_start.json")
    args = parser.parse_args(argv)
    task = absolute_paths(Task(dataset="embedded", eval_limit=32))
    limits = Limits()
    spec = SlotSpec(task=task.to_dict(), limits=limits, cache_dir=default_cache_dir().absolute())
    forked, execed = ProcessLauncher(spec, forked=True), ProcessLauncher(spec, forked=False)
    start_until_ready(execed, limits)  # the ground truth into the cache, page cache warm

    first_forked, _ = start_until_ready(forked, limits)
    server_cpu = slot_cpu_s("sandbox.forkserver")
    print(f"first forked start (the server imports): {first_forked:.2f} s; the server used {server_cpu:.2f} CPU-s",
          flush=True)
    rows = {"exec": [], "fork": []}
    for round_ in range(args.rounds):
        for name, launcher in (("exec", execed), ("fork", forked)):
            wall, cpu = start_until_ready(launcher, limits)
            rows[name].append({"wall_s": round(wall, 3), "cpu_s": round(cpu, 3)})
            print(f"round {round_}: {name:4s} ready in {wall:.2f} s, {cpu:.2f} CPU-s", flush=True)
    summary = {name: {"median_wall_s": statistics.median(r["wall_s"] for r in runs),
                      "median_cpu_s": statistics.median(r["cpu_s"] for r in runs)} for name, runs in rows.items()}
    result = {"what": "a process-backend slot started until ready, then killed; one orchestrator process",
              "task": task.to_dict(), "first_forked_start_s": round(first_forked, 3),
              "server_import_cpu_s": round(server_cpu, 3),
              "rounds": rows, "summary": summary, "machine": machine("cpu"),
              "date": time.strftime("%Y-%m-%d %H:%M")}
    print(json.dumps(summary, indent=1))
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
