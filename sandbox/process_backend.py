"""Process backend: each slot is ``python -m sandbox.worker`` in a child process.

A CPU slot is forked by ``sandbox.forkserver`` (the worker's imports paid once per
orchestrator); a GPU slot is exec'd. Both get the same isolation, below.

Where the platform allows it (root on Linux with util-linux ``unshare``), the
worker starts in fresh network, mount and PID namespaces: no network at all,
a private tmpfs scratch with everything else read-only (the worker locks its
mounts down after loading), and every process of the slot dies with it.
Elsewhere it is a plain child process, and the result's isolation notes say so.
Either way: a scrubbed environment (no API keys), its own process group
(killed as a whole), and the per-evaluation limits of ``sandbox.worker``.

A slot dies with the orchestrator, whatever ends it (SIGTERM, SIGKILL, a crash):
the child gets the kernel's parent-death signal (SIGKILL when the slot's thread
exits; it survives the ``exec`` of ``unshare``), ``unshare --kill-child`` passes
that death on to the worker, PID 1 of the slot's namespace, whose death ends
every process in it; and the worker exits when its input closes. A forked slot
has the same chain, from the fork server (``sandbox.forkserver``).
"""
from __future__ import annotations

import functools
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from sandbox import forkserver, isolation
from sandbox.backend import SlotSpec
from sandbox.channel import WorkerChannel
from sandbox.protocol import Limits

PROJECT_ROOT = Path(__file__).resolve().parent.parent
NAMESPACES = ["--net", "--mount", "--pid", "--fork", "--mount-proc", "--kill-child"]


@functools.lru_cache(maxsize=1)
def namespace_support() -> tuple[bool, str]:
    """Can this process start workers in new namespaces? (answer, why not)."""
    if sys.platform != "linux":
        return False, f"no Linux namespaces on {sys.platform}"
    if os.geteuid() != 0:
        return False, "not root: unshare of network/mount/PID namespaces is not allowed"
    unshare = shutil.which("unshare")
    if unshare is None:
        return False, "util-linux unshare not found"
    try:
        probe = subprocess.run([unshare, *NAMESPACES, "true"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"unshare failed: {exc}"
    if probe.returncode != 0:
        return False, f"unshare failed: {probe.stderr.strip()[:200]}"
    return True, ""


THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
"""What a slot's thread budget (``SlotSpec.threads``) is written to. Unset, torch takes a thread per
core in each slot: several slots on a busy machine make that many threads per core, and on 2 shared
cores a slot's load took 20 s instead of 0.4 s (benchmarks/results/test_suite.md, session 6)."""


def caller_thread_budget() -> int | None:
    """``OMP_NUM_THREADS`` of the orchestrator when it is a positive integer (digits only: the
    value travels into a sandbox), else None."""
    value = os.environ.get("OMP_NUM_THREADS", "")
    return int(value) if value.isdigit() and int(value) > 0 else None


def worker_environment(gpu: str | None = None, threads: int | None = None) -> dict[str, str]:
    """The worker's whole environment: nothing inherited (no keys, no tokens) but a thread budget,
    ``threads`` if given (the pool's share, see ``pool.slot_specs``), else the caller's."""
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(PROJECT_ROOT), "HOME": "/tmp",
           "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1"}
    budget = threads or caller_thread_budget()
    if budget:
        env.update(dict.fromkeys(THREAD_VARIABLES, str(budget)))
    # Idle OpenMP threads sleep instead of spinning: spinning threads of several slots, on cores
    # other jobs also use, slow every one of them (the local LLM server sets the same).
    env["OMP_WAIT_POLICY"] = "PASSIVE"
    if gpu not in (None, "all"):
        env["CUDA_VISIBLE_DEVICES"] = gpu
    return env


def worker_arguments(task: dict, limits: Limits, cache_dir: Path, *, lockdown: bool,
                     mode: str = "auto") -> list[str]:
    """``sandbox.worker`` arguments, shared by both backends."""
    args = ["-m", "sandbox.worker", "--cache-dir", str(cache_dir), "--task", json.dumps(task),
            "--limits", json.dumps(limits.to_dict()), "--mode", mode]
    return args + (["--lockdown"] if lockdown else [])


@dataclass(frozen=True)
class ProcessLauncher:
    """The process backend: starts one worker process for a slot."""

    name: ClassVar[str] = "process"
    spec: SlotSpec
    forked: bool | None = None
    """Fork the worker from ``sandbox.forkserver`` (imports paid once per orchestrator) instead
    of exec'ing it; None: for CPU slots (``gpu`` None or ""), never for a GPU slot."""

    @property
    def forks(self) -> bool:
        return self.spec.gpu in (None, "") if self.forked is None else self.forked

    @classmethod
    def availability(cls, settings: object | None = None) -> tuple[bool, str]:
        ok, why = namespace_support()
        return True, "namespaces: network, mount, PID" if ok else f"no namespaces: {why}"

    @classmethod
    def for_slot(cls, spec: SlotSpec, settings: object | None = None) -> "ProcessLauncher":
        return cls(spec)

    def notes(self) -> list[str]:
        ok, why = namespace_support()
        if ok:
            return ["process backend: new network, mount and PID namespaces (no network)"]
        return [f"process backend without namespaces ({why}): network not isolated"]

    def start(self) -> WorkerChannel:
        ok, _ = namespace_support()
        spec = self.spec
        arguments = worker_arguments(spec.task, spec.limits, spec.cache_dir, lockdown=ok, mode=spec.mode)
        env = worker_environment(spec.gpu, spec.threads)
        if self.forks:
            title = " ".join(["python", *arguments])  # what ps shows for an exec'd worker
            return _forked_channel(forkserver.server_for(env).fork(arguments[2:], namespaces=ok, title=title))
        command = [sys.executable, *arguments]
        if ok:
            command = [shutil.which("unshare"), *NAMESPACES, *command]
        isolation.libc()  # loaded here: the child must not load libraries between fork and exec
        parent = os.getpid()
        process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, env=env, cwd="/", start_new_session=True,
                                   preexec_fn=lambda: isolation.die_with_parent(parent))
        return process_channel(process)


def process_channel(process: subprocess.Popen) -> WorkerChannel:
    """The channel of a worker started as a child process with three pipes (its process group
    is killed as a whole)."""

    def stop() -> None:
        isolation.kill_group(process.pid)
        process.wait()

    return _channel(process.stdin, process.stdout, process.stderr, stop)


def _forked_channel(slot: forkserver.ForkedSlot) -> WorkerChannel:
    def stop() -> None:
        try:
            signal.pidfd_send_signal(slot.pidfd, signal.SIGKILL)
        except ProcessLookupError:
            pass
        else:
            isolation.kill_group(slot.pid)  # it had not ended: the PID is still its own, and its group's
        select.select([slot.pidfd], [], [])  # readable once it has ended
        os.close(slot.pidfd)

    return _channel(os.fdopen(slot.stdin, "wb"), os.fdopen(slot.stdout, "rb", buffering=0),
                    os.fdopen(slot.stderr, "rb"), stop)


def _channel(stdin, stdout, stderr, stop) -> WorkerChannel:
    """A channel over a worker's three pipes (binary file objects); ``stop`` kills the
    worker and waits for its end."""
    out = stdout.fileno()

    def read_chunk(timeout_s: float) -> bytes:
        ready, _, _ = select.select([out], [], [], timeout_s)
        if not ready:
            raise TimeoutError
        return os.read(out, 65536)

    def write(data: bytes) -> None:
        try:
            stdin.write(data)
            stdin.flush()
        except (BrokenPipeError, ValueError):
            pass  # the worker is gone; receive() will see the end of its output

    def kill() -> None:
        stop()
        for stream in (stdin, stdout):
            try:
                stream.close()
            except OSError:
                pass

    channel = WorkerChannel(read_chunk, write, kill)

    def drain_stderr() -> None:
        for raw in iter(lambda: stderr.readline(65536), b""):
            channel.note_stderr(raw.decode(errors="replace"))
        stderr.close()

    threading.Thread(target=drain_stderr, daemon=True).start()
    return channel
