"""A pool of warm evaluator slots: requests queue, results come back as they finish.

Each slot is one worker (a process, or a container with one GPU) that loads the
task once and then answers requests; a thread per slot feeds it. A slot whose
worker dies or overruns is killed and replaced by a fresh one; the request it
was serving gets a ``killed`` / ``timeout`` result, never lost.
"""
from __future__ import annotations

import dataclasses
import queue
import sys
import threading
import time
import uuid
from concurrent.futures import Future
from pathlib import Path
from typing import Callable, Iterator, Protocol

from sandbox.channel import Channel
from sandbox.gate import GateRejection, check_source
from sandbox.protocol import (
    EvaluationRequest, EvaluationResult, Limits, ProtocolError, SlotMessage, failure,
    request_to_json, result_from_json, slot_message_from_json, validate,
)

BACKENDS = ("process", "docker", "auto")
ANSWER_GRACE_S = 10.0
"""Beyond proxy time + fitness time, before a silent slot is declared dead."""

Log = Callable[[str], None]
Progress = Callable[[int, int, int], None]
"""(slot, done, total) while a slot computes ground truth on first use."""


class Launcher(Protocol):
    def start(self) -> Channel: ...
    def notes(self) -> list[str]: ...


class PoolError(RuntimeError):
    """The pool cannot be built as asked (unknown backend, no engine ...)."""


def _stderr_log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def resolve_backend(backend: str, log: Log = _stderr_log) -> str:
    """``process`` or ``docker``; ``auto`` picks docker when an engine answers (said once)."""
    if backend not in BACKENDS:
        raise PoolError(f"unknown sandbox backend {backend!r}: use {', '.join(BACKENDS)}")
    if backend != "auto":
        return backend
    from sandbox.docker_backend import engine_answers

    answers, detail = engine_answers()
    chosen = "docker" if answers else "process"
    log(f"sandbox: {chosen} backend ({detail})")
    return chosen


class SlotConnection:
    """One started worker: its ready message, and request/answer over its channel."""

    def __init__(self, channel: Channel, ready: SlotMessage, notes: list[str]):
        self.channel = channel
        self.ready = ready
        self.notes = notes + ready.isolation_notes
        self.dead = False

    @classmethod
    def connect(cls, channel: Channel, notes: list[str], limits: Limits,
                progress: Callable[[int, int], None]) -> "SlotConnection":
        """Wait until a just-started worker is warm; RuntimeError with the reason if not."""
        deadline = time.monotonic() + limits.startup_s
        try:
            while True:
                line = channel.receive(max(0.0, deadline - time.monotonic()))
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
        if line is None:
            self.dead = True
            return failure(request.id, "killed", "the evaluator slot died during the evaluation; replaced",
                           self.channel.stderr_tail(), isolation_notes=self.notes)
        result = result_from_json(line, request.id)
        return validate(dataclasses.replace(result, isolation_notes=self.notes), self.ready.num_layers)

    def close(self) -> None:
        self.channel.kill()


class EvaluatorPool:
    """N evaluator slots for one task, on the process or Docker backend."""

    def __init__(self, task, backend: str = "auto", workers: int | None = None, limits: Limits = Limits(), *,
                 cache_dir: Path | None = None, gpus: list[str] | None = None, docker=None,
                 worker_mode: str = "auto", progress: Progress | None = None, log: Log = _stderr_log):
        """``worker_mode``: ``auto`` (fork per evaluation on CPU, in-process on GPU), or
        ``fork`` / ``in-process`` to force one (tests run the GPU path on a CPU)."""
        from mpq.cache import default_cache_dir

        self.task = task
        self.limits = limits
        self.backend = resolve_backend(backend, log)
        cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        gpus = list(gpus or [])
        count = workers or max(1, len(gpus))
        self._launchers = [self._launcher(cache_dir, gpus[i % len(gpus)] if gpus else None, docker, worker_mode)
                           for i in range(count)]
        self._progress = progress or (lambda slot, done, total: None)
        self._requests: queue.Queue = queue.Queue()
        self._completed: queue.Queue = queue.Queue()
        self._pending = 0
        self._lock = threading.Lock()
        self.restarts = 0
        self._warm = [threading.Event() for _ in range(count)]
        self._starting: dict[int, Channel] = {}
        self._closing = False
        self._threads = [threading.Thread(target=self._serve, args=(i,), daemon=True) for i in range(count)]
        for thread in self._threads:
            thread.start()

    def _launcher(self, cache_dir: Path, gpu: str | None, docker, mode: str) -> Launcher:
        if self.backend == "docker":
            from sandbox.docker_backend import DockerLauncher, DockerSettings

            return DockerLauncher(self.task.to_dict(), self.limits, cache_dir, docker or DockerSettings(), gpu, mode)
        from sandbox.process_backend import ProcessLauncher

        return ProcessLauncher(self.task.to_dict(), self.limits, cache_dir, gpu, mode)

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
        """Evaluate one proxy and wait for its result."""
        future: Future = Future()
        self._enqueue(self.request(source, request_id), future)
        return future.result()

    def wait_ready(self, timeout_s: float | None = None) -> bool:
        """Block until every slot has finished its first start (warm or failed)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        return all(event.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))
                   for event in self._warm)

    def close(self) -> None:
        """Stop every slot; one still loading its task is killed rather than waited for."""
        for _ in self._threads:
            self._requests.put(None)
        with self._lock:
            self._closing = True
            starting = list(self._starting.values())
        for channel in starting:
            channel.kill()
        for thread in self._threads:
            thread.join()

    def __enter__(self) -> "EvaluatorPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- slots

    def _enqueue(self, request: EvaluationRequest, future: Future | None) -> None:
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

    def _start(self, index: int) -> tuple[SlotConnection | None, str]:
        launcher = self._launchers[index]
        try:
            channel = launcher.start()  # seconds for a container: not under the lock
            with self._lock:
                closing = self._closing
                if not closing:
                    self._starting[index] = channel
            if closing:
                channel.kill()
                return None, "the pool is closed"
            progress = lambda done, total: self._progress(index, done, total)  # noqa: E731
            return SlotConnection.connect(channel, launcher.notes(), self.limits, progress), ""
        except Exception as exc:  # noqa: BLE001 - every request routed here gets the reason
            return None, f"evaluator slot {index} could not start: {exc}"
        finally:
            with self._lock:
                self._starting.pop(index, None)

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
                if slot.dead:
                    slot.close()
                    with self._lock:
                        self.restarts += 1
                    slot, why = self._start(index)
                self._deliver(result, future)
        finally:
            if slot is not None:
                slot.close()
