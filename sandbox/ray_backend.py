"""Ray backend: each slot is a Ray actor that runs the process backend's worker on its node.

For users with a cluster (issue 18). Ray places the actors (``num_cpus``, and
``num_gpus``, fractions allowed, so that several slots share a GPU); each actor
starts ``python -m sandbox.worker`` through ``sandbox.process_backend.ProcessLauncher``
on its own node, so a proxy is isolated there exactly as under ``--sandbox process``
(network / mount / PID namespaces where the node allows them, rlimits, the
``nobody`` user, a scrubbed environment). The actor only relays the worker's JSON
lines; the pool, the search, the store and the TUI see an ordinary pool.

Faults: a slot whose actor or node dies mid-evaluation is replaced, and its
request is put back in the pool's queue once (``retries_dead_slot``), where the
next free slot takes it; a second death is recorded as ``killed``. A proxy that
hangs is killed on time by the worker (fork mode) or, when it swallows the
alarm (in-process mode), by killing the actor, whose worker dies with it: the
worker's parent-death signal is tied to the actor's main thread, which started it.

The cluster: ``TAP_MPQ_RAY_ADDRESS`` (or ``RaySettings.address``), e.g.
``ray://head:10001`` or ``auto``; unset, the pool starts a local Ray instance
and stops it when it closes (and Ray's own processes die with this one). Every
node needs the project (same path, or installed) and the data at the task's
``data_root``. Per slot: ``TAP_MPQ_RAY_CPUS_PER_SLOT`` (default: 1 on a cluster, an even share
of this machine's CPUs on a local instance; the slot's worker runs that many threads) and
``TAP_MPQ_RAY_GPUS_PER_SLOT`` (default for a CUDA task: 1 on a cluster, an even
share of this machine's GPUs on a local instance; 0 on the CPU).
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import math
import os
import signal
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from sandbox.backend import SlotSpec
from sandbox.channel import WorkerChannel
from sandbox.process_backend import PROJECT_ROOT, ProcessLauncher

ADDRESS_ENV = "TAP_MPQ_RAY_ADDRESS"
CPUS_ENV = "TAP_MPQ_RAY_CPUS_PER_SLOT"
GPUS_ENV = "TAP_MPQ_RAY_GPUS_PER_SLOT"
ACTOR_READ_S = 1.0
"""Longest one relay call blocks in the actor (the pool side polls it in shorter slices)."""


@dataclass(frozen=True)
class RaySettings:
    """Where the slots run and what each asks Ray for."""

    address: str | None = None
    """A Ray cluster address (``auto``, ``ray://host:10001``); None = a local instance for this pool."""
    cpus_per_slot: float | None = None
    """None: an even share of a local instance's CPUs, 1 on a cluster. The slot's worker runs
    that many threads (at least one): Ray itself gives an actor OMP_NUM_THREADS = its CPUs."""
    gpus_per_slot: float | None = None
    """Fractions allowed (0.25: four slots per GPU); None: see ``gpus_for``."""

    @classmethod
    def from_environment(cls) -> "RaySettings":
        """Settings from ``TAP_MPQ_RAY_*`` (how ``graph.run`` and the commands reach them)."""
        gpus = os.environ.get(GPUS_ENV)
        return cls(address=os.environ.get(ADDRESS_ENV) or None,
                   cpus_per_slot=float(os.environ[CPUS_ENV]) if os.environ.get(CPUS_ENV) else None,
                   gpus_per_slot=float(gpus) if gpus else None)

    def gpus_for(self, task: dict, share_among: int = 1, gpus: float = 1.0) -> float:
        """What a slot asks for: as set, else 0 on the CPU, else an even share of ``gpus`` among
        ``share_among`` slots, at most one (a local instance: every slot fits)."""
        if self.gpus_per_slot is not None:
            return self.gpus_per_slot
        if not str(task.get("device", "cpu")).startswith("cuda"):
            return 0.0
        return min(1.0, gpus / max(1, share_among))

    def cpus_for(self, share_among: int = 1, cpus: float = 1.0) -> float:
        """What a slot asks for: as set, else an even share of ``cpus`` among ``share_among`` slots
        (a local instance), at least 1."""
        if self.cpus_per_slot is not None:
            return self.cpus_per_slot
        return max(1.0, float(int(cpus // max(1, share_among))))


class SlotActor:
    """The body of one slot's Ray actor (made remote by ``_remote_actor``): starts the
    worker with the process backend on this node and relays its lines.

    A sync actor runs ``__init__`` and every call on its main thread, which lives as long
    as the actor: the worker's parent-death signal is tied to it (``ProcessLauncher``)."""

    def __init__(self, spec: SlotSpec):
        import ray

        gpus = [str(g) for g in ray.get_gpu_ids()]
        # Ray's GPUs for this actor; "" hides every GPU from a CPU slot (not the node's all).
        self.spec = dataclasses.replace(spec, gpu=",".join(gpus))
        self.launcher = ProcessLauncher(self.spec)
        self.channel = self.launcher.start()
        self.where = (f"ray actor on node {socket.gethostname()} "
                      f"({ray.get_runtime_context().get_node_id()[:12]}), GPUs [{', '.join(gpus)}]")

    def send(self, data: bytes) -> None:
        self.channel.send(data.decode())

    def receive(self, timeout_s: float = ACTOR_READ_S) -> tuple[str, bytes]:
        """("line", line) | ("timeout", b"") | ("end", the worker's stderr tail)."""
        try:
            line = self.channel.receive(timeout_s)
        except TimeoutError:
            return "timeout", b""
        except ValueError as exc:  # a line over the size cap: the slot is not trusted any more
            return "end", str(exc).encode()
        if line is None:
            return "end", self.channel.stderr_tail().encode()
        return "line", self._with_node_notes(line)

    def _with_node_notes(self, line: bytes) -> bytes:
        """The ready message gets where the slot runs and the process backend's notes on this node."""
        try:
            message = json.loads(line)
        except ValueError:
            return line
        if not isinstance(message, dict) or message.get("kind") != "ready":
            return line
        notes = message.get("isolation_notes")
        if isinstance(notes, list):
            message["isolation_notes"] = [self.where, *self.launcher.notes(), *notes]
        return json.dumps(message).encode()


_state_lock = threading.Lock()
_started_here = False
"""Whether this process started the Ray instance (then the last pool to close stops it)."""
_live_actors: set = set()
_keeper_stop = threading.Event()
"""Ends the thread that started the local instance (after ``ray.shutdown``)."""
_slots_asked = 0
"""Slots made by ``for_slot`` for the local instance: it offers them all, as the process backend would."""


def ray_installed() -> bool:
    return importlib.util.find_spec("ray") is not None


def join_cluster(settings: RaySettings) -> str:
    """Join the configured cluster, or start a local instance; once per process. Says which."""
    import ray

    global _started_here
    with _state_lock:
        if ray.is_initialized():
            return "the Ray instance this process already joined"
        # "local" starts a fresh instance even where RAY_ADDRESS points elsewhere; it offers at least a
        # CPU per slot asked, so that --workers N gives N slots here as with --sandbox process.
        cpus = None if settings.address else max(os.cpu_count() or 1, math.ceil(_slots_asked * (settings.cpus_per_slot or 1.0)))
        _init_on_keeper(dict(address=settings.address or "local", num_cpus=cpus, include_dashboard=False,
                             log_to_driver=False, logging_level=logging.ERROR))  # no INFO/WARNING under the TUI
        _started_here = settings.address is None
        return f"Ray cluster at {settings.address}" if settings.address else "a local Ray instance started by the pool"


def _init_on_keeper(options: dict) -> None:
    """``ray.init`` on a thread that lives until ``pool_closed`` (or this process) ends. Ray ties
    the local instance's processes to the *thread* that starts them (parent-death signal, as
    ``sandbox.isolation.die_with_parent``): started on a slot thread, they would die with it,
    raylet first, leaving its agents orphaned."""
    import ray

    started, failure = threading.Event(), []

    def keep() -> None:
        try:
            ray.init(**options)
        except BaseException as exc:  # noqa: BLE001 - raised again on the caller's thread
            failure.append(exc)
        started.set()
        _keeper_stop.wait()

    _keeper_stop.clear()
    threading.Thread(target=keep, name="ray-instance", daemon=True).start()
    started.wait()
    if failure:
        raise failure[0]


def _remote_actor():
    import ray

    return ray.remote(max_restarts=0, max_task_retries=0)(SlotActor)


@dataclass(frozen=True)
class RayLauncher:
    """The Ray backend: starts one slot actor (and the worker inside it)."""

    name: ClassVar[str] = "ray"
    retries_dead_slot: ClassVar[bool] = True
    """A request whose slot died (actor, node, worker) is put back in the queue once."""
    spec: SlotSpec
    settings: RaySettings

    @classmethod
    def availability(cls, settings: object | None = None) -> tuple[bool, str]:
        if not ray_installed():
            return False, "Ray is not installed: pip install 'tap-mpq[ray]' (or pip install ray)"
        address = _settings(settings).address
        return True, f"Ray actors on {'the cluster at ' + address if address else 'a local Ray instance'}"

    @classmethod
    def for_slot(cls, spec: SlotSpec, settings: object | None = None) -> "RayLauncher":
        global _slots_asked
        with _state_lock:
            _slots_asked += 1
        return cls(spec, _settings(settings))

    @classmethod
    def pool_closed(cls) -> None:
        """Stop the local Ray instance this process started once no slot actor is left."""
        import ray

        global _started_here, _slots_asked
        with _state_lock:
            if _started_here and not _live_actors and ray.is_initialized():
                try:
                    instance = _instance_processes()
                except (OSError, ValueError, IndexError):  # no /proc: Ray's own shutdown only
                    instance = {}
                ray.shutdown()
                _keeper_stop.set()
                _end_leftovers(instance)
                _started_here = False
                _slots_asked = 0

    def notes(self) -> list[str]:
        return ["ray backend: one actor per slot (its CPU and GPU share); "
                "the worker in it isolated as by the process backend on its node"]

    def start(self) -> WorkerChannel:
        import ray

        join_cluster(self.settings)
        gpus = self.settings.gpus_for(self.spec.task)
        cpus = self.settings.cpus_for()
        if _started_here:  # a local instance: the slots share this machine's CPUs and GPUs evenly
            offered = ray.cluster_resources()
            gpus = self.settings.gpus_for(self.spec.task, _slots_asked, offered.get("GPU", 0.0))
            cpus = self.settings.cpus_for(_slots_asked, offered.get("CPU", 1.0))
        # the worker's threads follow the CPUs the actor holds, not the orchestrator's share
        spec = dataclasses.replace(self.spec, threads=max(1, int(cpus)))
        actor = _remote_actor().options(num_cpus=cpus, num_gpus=gpus, runtime_env=actor_environment()).remote(spec)
        with _state_lock:
            _live_actors.add(actor)
        return _ActorStream(actor).channel


def actor_environment() -> dict:
    """The runtime env of a slot actor: the project (at the same path on every node) ahead of the
    caller's ``PYTHONPATH``, which is kept: Ray itself may be importable only through it (a
    ``pip install --target`` folder), and a worker that cannot import ray never registers."""
    paths = [str(PROJECT_ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return {"env_vars": {"PYTHONPATH": os.pathsep.join(dict.fromkeys(paths))}}


class _ActorStream:
    """The pool's end of one actor: its relay calls as ``WorkerChannel`` primitives.

    A relay call still running when a read slice ends is kept and waited on by the
    next read, never issued twice, so no line of the worker is ever dropped."""

    def __init__(self, actor):
        self.actor = actor
        self.pending = None
        self.channel = WorkerChannel(self.read_chunk, self.write, self.kill)

    def read_chunk(self, timeout_s: float) -> bytes:
        import ray

        try:
            if self.pending is None:
                self.pending = self.actor.receive.remote(ACTOR_READ_S)
            ready, _ = ray.wait([self.pending], timeout=timeout_s)
            if not ready:
                raise TimeoutError
            kind, data = ray.get(self.pending)
            self.pending = None
        except TimeoutError:
            raise
        except Exception as exc:  # noqa: BLE001 - actor or node died, Ray stopped: the slot is gone
            self.channel.note_stderr(f"the Ray actor is gone: {type(exc).__name__}: {str(exc)[:300]}")
            return b""
        if kind == "timeout":
            raise TimeoutError
        if kind == "end":
            self.channel.note_stderr(data.decode(errors="replace"))
            return b""
        return data + b"\n"

    def write(self, data: bytes) -> None:
        self.actor.send.remote(data)  # ordered after earlier calls; a dead actor shows on the next read

    def kill(self) -> None:
        import ray

        try:
            ray.kill(self.actor, no_restart=True)  # SIGKILL: the worker dies with the actor's thread
        except Exception:  # noqa: BLE001 - already gone, or Ray already stopped
            pass
        with _state_lock:
            _live_actors.discard(self.actor)


def _instance_processes() -> dict[int, str]:
    """pid -> start time of every process of the local Ray instance this process started:
    its children that run Ray's code, and all their descendants (agents, actor workers, slots)."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except (OSError, ValueError):
            continue
        fields = stat.rsplit(")", 1)[1].split()  # after "(comm)": state, ppid, ..., starttime (22nd)
        table[int(entry.name)] = (int(fields[1]), fields[19], b"/ray/" in cmdline or cmdline.startswith(b"ray::"))
    ours = {pid for pid, (parent, _, is_ray) in table.items() if parent == os.getpid() and is_ray}
    grown = True
    while grown:
        more = {pid for pid, (parent, _, _) in table.items() if parent in ours} - ours
        ours |= more
        grown = bool(more)
    return {pid: table[pid][1] for pid in ours}


def _end_leftovers(instance: dict[int, str], grace_s: float = 5.0) -> None:
    """SIGKILL what ``ray.shutdown`` left of the instance (its dashboard and runtime-env agents
    outlive the raylet for minutes otherwise), after ``grace_s``; a reused pid is spared."""
    def alive() -> list[int]:
        left = []
        for pid, started in instance.items():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, ValueError, IndexError):
                continue
            if fields[19] == started and fields[0] != "Z":
                left.append(pid)
        return left

    deadline = time.monotonic() + grace_s
    while alive() and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in alive():
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _settings(settings: object | None) -> RaySettings:
    return settings if isinstance(settings, RaySettings) else RaySettings.from_environment()
