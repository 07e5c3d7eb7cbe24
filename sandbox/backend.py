"""What a sandbox backend is: one class that starts evaluator slots.

A backend is one ``Launcher`` class, registered once in ``sandbox.pool.BACKENDS``
(the process and Docker backends are ``sandbox.process_backend.ProcessLauncher``
and ``sandbox.docker_backend.DockerLauncher``). The pool asks the class whether
it can run here (``availability``), makes one launcher per slot (``for_slot``)
and calls ``start`` whenever the slot needs a fresh worker.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Protocol

from sandbox.channel import WorkerChannel
from sandbox.protocol import Limits


@dataclass(frozen=True)
class SlotSpec:
    """What one slot runs: the same for every backend."""

    task: dict
    """``Task.to_dict()``, paths already absolute (``sandbox.pool.absolute_paths``)."""
    limits: Limits
    cache_dir: Path
    """Ground-truth cache, absolute."""
    gpu: str | None = None
    """A GPU index, ``all``, or None for the CPU."""
    mode: str = "auto"
    """Worker mode: ``auto``, ``fork`` or ``in-process`` (see ``sandbox.worker``)."""
    threads: int | None = None
    """The slot's thread budget where the caller set none (``OMP_NUM_THREADS`` unset): the pool
    shares the cores among its CPU slots; None leaves torch its default (a thread per core)."""


class Launcher(Protocol):
    """One sandbox backend: starts the worker of one slot."""

    name: ClassVar[str]
    """What ``--sandbox`` calls it."""

    @classmethod
    def availability(cls, settings: object | None) -> tuple[bool, str]:
        """(can it run here, one line saying how or what the user can do about it)."""

    @classmethod
    def for_slot(cls, spec: SlotSpec, settings: object | None) -> "Launcher":
        """The launcher of one slot; ``settings`` is the pool's backend settings (ignored
        when they are another backend's)."""

    def start(self) -> WorkerChannel:
        """Start a fresh worker; it must die with this process (and with the calling thread)."""

    def notes(self) -> list[str]:
        """How this slot is isolated, for the result's ``isolation_notes``."""

    # Optional members: the pool reads them with getattr and falls back to these defaults,
    # so a launcher that needs neither leaves them out (only RayLauncher defines them).
    retries_dead_slot: ClassVar[bool] = False
    """Put a request whose slot died under it (status ``killed``) back in the queue once (Ray:
    an actor or node can die for reasons of its own)."""

    @classmethod
    def pool_closed(cls) -> None:
        """Called at the end of ``EvaluatorPool.close``, e.g. to stop a shared instance the
        backend started (Ray); the default does nothing."""
