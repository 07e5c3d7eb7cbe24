"""A pool of warm evaluator slots: requests queue, results come back as they finish.

Each slot is one worker (a process, or a container with one GPU) that loads the
task once and then answers requests; a thread per slot starts and feeds it (and
lives as long as the pool: a worker's parent-death signal is tied to it). A slot
whose worker dies or overruns is killed and replaced by a fresh one; the request
it was serving gets a ``killed`` / ``timeout`` result, never lost.

Backends: one ``sandbox.backend.Launcher`` class each, registered in ``BACKENDS``
below and nowhere else; ``BACKEND_NAMES`` (what ``--sandbox`` accepts) follows.
"""
from __future__ import annotations

import dataclasses
import os
import queue
import signal
import sys
import threading
import time
import uuid
from concurrent.futures import Future
from pathlib import Path
from typing import Callable, Iterator

from sandbox.backend import Launcher, SlotSpec
from sandbox.channel import WorkerChannel
from sandbox.docker_backend import DockerLauncher
from sandbox.gate import GateRejection, check_source
from sandbox.process_backend import ProcessLauncher, caller_thread_budget
from sandbox.protocol import (
    EvaluationRequest,
    EvaluationResult,
    Limits,
    ProtocolError,
    SlotMessage,
    failure,
    request_to_json,
    result_from_json,
    slot_message_from_json,
    validate,
)
from sandbox.ray_backend import RayLauncher

BACKENDS: dict[str, type[Launcher]] = {cls.name: cls for cls in (DockerLauncher, ProcessLauncher, RayLauncher)}
"""Every sandbox backend, in the order ``auto`` tries them. A new backend is one
``Launcher`` class added here."""
AUTO = "auto"
BACKEND_NAMES: tuple[str, ...] = (AUTO, *BACKENDS)
"""What ``--sandbox`` accepts (every command takes its choices from here)."""
ANSWER_GRACE_S = 10.0
"""Beyond proxy time + fitness time, before a silent slot is declared dead."""
CLOSE_WAIT_S = 5.0
"""``close`` waits at most this long for slot threads to stop their workers."""

Log = Callable[[str], None]
Progress = Callable[[int, int, int], None]
"""(slot, done, total) while a slot computes ground truth on first use."""


class PoolError(RuntimeError):
    """The pool cannot be built as asked (unknown backend, no engine ...)."""


def interrupt_on_sigterm() -> None:
    """Have SIGTERM (``kill``, ``timeout``, systemd, batch schedulers) end this orchestrator the
    way Ctrl-C does, with a KeyboardInterrupt in the main thread, so that open pools close their
    slots and a local Ray instance is shut down. Killed outright instead, the process leaves Ray's
    agents behind, which no parent-death signal ties to it (tests/test_sandbox_ray.py). For the
    command-line entry points; call it from the main thread."""

    def interrupt(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupt)


def _stderr_log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def resolve_backend(backend: str, log: Log = _stderr_log, settings: object | None = None) -> str:
    """The registered backend to use. ``auto`` takes the first that can run here and
    says in one line which, and why the ones before it could not (what to do about it);
    a named backend that cannot run here is a PoolError with that line."""
    if backend != AUTO and backend not in BACKENDS:
        raise PoolError(f"unknown sandbox backend {backend!r}: use {', '.join(BACKEND_NAMES)}")
    if backend != AUTO:
        ok, detail = BACKENDS[backend].availability(settings)
        if not ok:
            raise PoolError(f"--sandbox {backend}: {detail}")
        return backend
    skipped = []
    for name, launcher in BACKENDS.items():
        ok, detail = launcher.availability(settings)
        if ok:
            log(f"sandbox: {name} backend ({'; '.join(skipped) or detail})")
            return name
        skipped.append(detail)
    raise PoolError(f"no sandbox backend can run here: {'; '.join(skipped)}")


def absolute_paths(task):
    """``task`` with its user paths (data root, weights file) made absolute, as the
    user's shell means them: a worker runs in another directory (``/``, a container)."""
    def absolute(path: str | None) -> str | None:
        return None if path is None else os.path.abspath(os.path.expanduser(path))

    weights = task.weights if task.weights in (None, "torchvision") else absolute(task.weights)
    return dataclasses.replace(task, data_root=absolute(task.data_root), weights=weights)


class SlotConnection:
    """One started worker: its ready message, and request/answer over its channel."""

    def __init__(self, channel: WorkerChannel, ready: SlotMessage, notes: list[str]):
        self.channel = channel
        self.ready = ready
        self.notes = notes + ready.isolation_notes
        self.dead = False

    @classmethod
    def connect(cls, channel: WorkerChannel, notes: list[str], limits: Limits,
                progress: Callable[[int, int], None]) -> "SlotConnection":
        """Wait until a just-started worker is warm; RuntimeError with the reason if not."""
        deadline = time.monotonic() + limits.startup_s
        try:
            while True:
                line = channel.receive(max(0.0, deadline - time.monotonic()))
                if line is None and channel.aborted:
                    raise RuntimeError("the pool was closed while the worker was starting")
                if line is None:
                    raise RuntimeError(f"the worker exited while starting: {channel.stderr_tail()[-800:]}")
                message = slot_message_from_json(line)
                if message.kind == "progress":
                    progress(message.done, message.total)
                elif message.kind == "failed":
                    raise RuntimeError(f"the worker could not load the task: {message.reason}")
                else:
                    return cls(channel, message, notes)
        except TimeoutError:
            channel.kill()
            raise RuntimeError(f"the worker was not ready within {limits.startup_s:g} s") from None
        except (ProtocolError, ValueError, RuntimeError):
            channel.kill()
            raise

    def evaluate(self, request: EvaluationRequest) -> EvaluationResult:
        limits = request.limits
        patience = limits.timeout_s + limits.fitness_s + ANSWER_GRACE_S
        self.channel.send(request_to_json(request))
        try:
            line = self.channel.receive(patience)
        except TimeoutError:
            self.dead = True
            return failure(request.id, "timeout", f"the slot did not answer within {patience:g} s; replaced",
                           isolation_notes=self.notes)
        except ValueError as exc:
            self.dead = True
            return failure(request.id, "error", str(exc), isolation_notes=self.notes)
        if line is None and self.channel.aborted:
            self.dead = True
            return failure(request.id, "killed", "the pool was closed during the evaluation",
                           isolation_notes=self.notes)
        if line is None:
            self.dead = True
            return failure(request.id, "killed", "the evaluator slot died during the evaluation; replaced",
                           self.channel.stderr_tail(), isolation_notes=self.notes)
        result = result_from_json(line, request.id)
        return validate(dataclasses.replace(result, isolation_notes=self.notes), self.ready.num_layers)

    def close(self) -> None:
        self.channel.kill()


def slot_specs(task: dict, limits: Limits, cache_dir: Path, count: int, gpus: list[str],
               mode: str = "auto") -> list[SlotSpec]:
    """What each of ``count`` slots runs: GPUs dealt round-robin, and a thread budget on every
    backend: the caller's ``OMP_NUM_THREADS`` if set, else an even share of the cores. GPU slots too:
    their proxies' scores and the allocator run on the CPU, and 8 slots of a thread per core each
    oversubscribe the machine (see process_backend.THREAD_VARIABLES)."""
    threads = caller_thread_budget() or max(1, (os.cpu_count() or 1) // count)
    return [SlotSpec(task, limits, cache_dir, gpus[i % len(gpus)] if gpus else None, mode, threads)
            for i in range(count)]


class EvaluatorPool:
    """N evaluator slots for one task, on one of the registered backends."""

    def __init__(self, task, backend: str = AUTO, workers: int | None = None, limits: Limits = Limits(), *,
                 cache_dir: Path | None = None, gpus: list[str] | None = None, settings: object | None = None,
                 docker=None, worker_mode: str = "auto", progress: Progress | None = None, log: Log = _stderr_log):
        """Start the slots (each loads the task in the background: ``wait_ready`` waits).

        ``task``: an ``mpq.task.Task``; relative paths in it mean what they mean in
        this process's working directory. ``settings``: the backend's own settings
        (``DockerSettings`` for docker; ``docker=`` is the same argument, by its old
        name). ``worker_mode``: ``auto`` (fork per evaluation on CPU, in-process on
        GPU), or ``fork`` / ``in-process`` to force one (tests run the GPU path on a
        CPU). PoolError when the backend is unknown or cannot run here."""
        from mpq.cache import default_cache_dir

        settings = settings if settings is not None else docker
        self.task = absolute_paths(task)
        self.limits = limits
        self.backend = resolve_backend(backend, log, settings)
        cache_dir = Path(cache_dir).absolute() if cache_dir is not None else default_cache_dir()
        gpus = list(gpus or [])
        count = workers or max(1, len(gpus))
        launcher = BACKENDS[self.backend]
        self._launchers = [launcher.for_slot(spec, settings)
                           for spec in slot_specs(self.task.to_dict(), limits, cache_dir, count, gpus, worker_mode)]
        self._progress = progress or (lambda slot, done, total: None)
        self._requests: queue.Queue = queue.Queue()
        self._completed: queue.Queue = queue.Queue()
        self._pending = 0
        self._lock = threading.Lock()
        self.restarts = 0
        self._warm = [threading.Event() for _ in range(count)]
        self._channels: dict[int, WorkerChannel] = {}
        self._closing = False
        self._retried: set[str] = set()
        self._threads = [threading.Thread(target=self._serve, args=(i,), name=f"evaluator-slot-{i}", daemon=True)
                         for i in range(count)]
        for thread in self._threads:
            thread.start()

    # --- public interface

    def request(self, source: str, request_id: str | None = None) -> EvaluationRequest:
        """A request for this pool's task and limits."""
        return EvaluationRequest(id=request_id or uuid.uuid4().hex[:12], proxy_source=source,
                                 task=self.task.to_dict(), limits=self.limits)

    def submit(self, request: EvaluationRequest) -> None:
        """Queue ``request``; its result comes out of ``results()``."""
        with self._lock:
            self._pending += 1
        self._enqueue(request, None)

    def results(self) -> Iterator[EvaluationResult]:
        """Results of everything submitted, in completion order, until none is pending."""
        while True:
            with self._lock:
                if self._pending == 0:
                    return
            result = self._completed.get()
            with self._lock:
                self._pending -= 1
            yield result

    def evaluate(self, source: str, request_id: str | None = None) -> EvaluationResult:
        """Evaluate one proxy and wait for its result (rejected by the gate at once)."""
        return self.schedule(source, request_id).result()

    def schedule(self, source: str, request_id: str | None = None) -> Future:
        """Evaluate one proxy; its ``EvaluationResult`` comes in the returned future (for a caller
        that must stop waiting on its own terms, e.g. an interrupted search)."""
        future: Future = Future()
        self._enqueue(self.request(source, request_id), future)
        return future

    def wait_ready(self, timeout_s: float | None = None) -> bool:
        """Block until every slot has finished its first start (warm or failed)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        return all(event.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))
                   for event in self._warm)

    def close(self) -> None:
        """Stop every slot, in at most about ``CLOSE_WAIT_S``: a slot still loading its
        task (ground truth, a container starting) or evaluating is aborted, never
        waited for; its request gets a ``killed`` result. A slot thread still inside
        a backend call when the wait ends stops its worker as soon as that returns
        (and a worker whose thread or process ends dies with it)."""
        with self._lock:
            self._closing = True
            channels = list(self._channels.values())
        for _ in self._threads:
            self._requests.put(None)
        for channel in channels:
            channel.abort()  # the slot's own thread kills it: no fd is closed under a reader
        deadline = time.monotonic() + CLOSE_WAIT_S
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        getattr(BACKENDS[self.backend], "pool_closed", Launcher.pool_closed)()  # e.g. stop a Ray instance it started

    def __enter__(self) -> "EvaluatorPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- slots

    def _enqueue(self, request: EvaluationRequest, future: Future | None) -> None:
        if self._closing:  # no slot thread is left to serve it
            self._deliver(failure(request.id, "error", "the evaluator pool is closed"), future)
            return
        if request.limits.static_gate:  # refused at once: no slot time spent
            try:
                check_source(request.proxy_source)
            except GateRejection as exc:
                self._deliver(failure(request.id, "rejected", str(exc)), future)
                return
        self._requests.put((request, future))

    def _deliver(self, result: EvaluationResult, future: Future | None) -> None:
        if future is None:
            self._completed.put(result)
        else:
            future.set_result(result)

    def _retry(self, request: EvaluationRequest, future: Future | None,
               result: EvaluationResult) -> EvaluationResult | None:
        """Queue a request whose slot died under it once more, where the backend asks for it
        (``retries_dead_slot``: a Ray actor or node can die for reasons of its own); the next
        free slot takes it. None when queued again; else the result to deliver (a second death says so)."""
        retries = getattr(BACKENDS[self.backend], "retries_dead_slot", Launcher.retries_dead_slot)
        if result.status != "killed" or not retries:
            return result
        with self._lock:
            again = request.id in self._retried
            if not again and not self._closing:  # close() has not queued its stop marks yet
                self._retried.add(request.id)
                self._requests.put((request, future))
                return None
        return dataclasses.replace(result, reason=result.reason + " (again: retried once already)") if again else result

    def _start(self, index: int) -> tuple[SlotConnection | None, str]:
        """A warm slot, or None and why not. Runs on the slot's own thread, which the
        worker's parent-death signal is tied to."""
        launcher = self._launchers[index]
        if self._closing:
            return None, "the pool is closed"
        try:
            channel = launcher.start()  # seconds for a container: not under the lock
            with self._lock:
                closing = self._closing
                if not closing:
                    self._channels[index] = channel
            if closing:
                channel.kill()
                return None, "the pool is closed"
            progress = lambda done, total: self._progress(index, done, total)  # noqa: E731
            return SlotConnection.connect(channel, launcher.notes(), self.limits, progress), ""
        except Exception as exc:  # noqa: BLE001 - every request routed here gets the reason
            with self._lock:
                self._channels.pop(index, None)
            return None, f"evaluator slot {index} could not start: {exc}"

    def _stop(self, index: int, slot: SlotConnection) -> None:
        with self._lock:
            self._channels.pop(index, None)
        slot.close()

    def _serve(self, index: int) -> None:
        slot, why = self._start(index)  # warm before the first request arrives
        self._warm[index].set()
        try:
            while (item := self._requests.get()) is not None:
                request, future = item
                if slot is None:
                    slot, why = self._start(index)
                if slot is None:
                    self._deliver(failure(request.id, "error", why), future)
                    continue
                started = time.perf_counter()
                result = slot.evaluate(request)
                result = dataclasses.replace(
                    result, timings={**result.timings, "roundtrip_s": time.perf_counter() - started})
                died = slot.dead
                if died:
                    self._stop(index, slot)
                    with self._lock:
                        self.restarts += 1
                    slot, why = self._start(index)
                if died:
                    result = self._retry(request, future, result)
                if result is not None:
                    self._retried.discard(request.id)  # delivered: the id may come again
                    self._deliver(result, future)
        finally:
            if slot is not None:
                self._stop(index, slot)
