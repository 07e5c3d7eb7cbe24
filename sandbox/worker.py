"""``python -m sandbox.worker``: one warm evaluator slot.

Imports only mpq, torch and the standard library, so it runs unchanged in a
container built from the GPU machine's image.

The worker loads the task's ``mpq.fitness.Evaluator`` once (model, data,
features, ground truth), optionally locks down its mount namespace, says
``ready`` and then answers newline-delimited JSON requests on stdin with
results on stdout (``sandbox.protocol``). The proxy never runs against the warm
state itself:

- ``fork`` mode (CPU): each evaluation forks a child (copy-on-write: the
  model is already loaded) that gets rlimits, a scrubbed environment, a fresh
  empty working directory and the ``nobody`` user, and computes only the
  proxy's scores. The parent, untouched by proxy code, validates the scores and
  computes the fitness. A child that exits, crashes or overruns is killed with
  its process group; the slot stays warm.
- ``in-process`` mode (CUDA, where a forked child cannot use the GPU): the
  worker itself drops privileges and limits once after loading, and evaluates
  in place; a proxy that kills it costs a cold restart of the slot.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import queue
import resource
import select
import shutil
import signal
import sys
import tempfile
import threading
import time
import traceback
import warnings
from pathlib import Path

from mpq.proxy import ProxyError
from sandbox import isolation
from sandbox.gate import GateRejection, check_source
from sandbox.protocol import (
    EvaluationRequest,
    EvaluationResult,
    Limits,
    ProtocolError,
    SlotMessage,
    failure,
    request_from_json,
    result_to_json,
    slot_message_to_json,
    validate,
)

MAX_REPLY_BYTES = 1 << 20
"""Largest answer a forked child may send (scores of a few thousand layers)."""

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class ParentLink:
    """The worker's end of the protocol (the orchestrator's is ``sandbox.channel.WorkerChannel``).

    Requests come in on a private copy of stdin, answers go out on one of stdout;
    fds 0 and 1 become /dev/null, so nothing the proxy prints or reads can touch
    the protocol. A thread reads the requests: the end of the input means the
    orchestrator is gone (it died, or its pool closed), and the worker exits at
    once, also while it is still loading the task (a container has no
    parent-death signal; its engine closes the input when the orchestrator goes)."""

    def __init__(self) -> None:
        self._in = os.fdopen(os.dup(0), "rb")
        self._out = os.fdopen(os.dup(1), "wb")
        devnull = os.open(os.devnull, os.O_RDWR)
        os.dup2(devnull, 0)
        os.dup2(devnull, 1)
        os.close(devnull)
        self._requests: queue.SimpleQueue[bytes] = queue.SimpleQueue()
        threading.Thread(target=self._read, name="parent-link", daemon=True).start()

    def _read(self) -> None:
        for line in self._in:
            if line.strip():
                self._requests.put(line)
        os._exit(0)  # the orchestrator is gone: so is this slot (PID 1: with all its processes)

    def send(self, line: str) -> None:
        self._out.write(line.encode() + b"\n")
        self._out.flush()

    def lines(self):
        while True:
            yield self._requests.get()


class Slot:
    """Answers requests for one task with one warm ``Evaluator``."""

    def __init__(self, evaluator, task_dict: dict, mode: str, scratch_root: str, notes: list[str]):
        self.evaluator = evaluator
        self.task_dict = task_dict
        self.mode = mode
        self.scratch_root = scratch_root
        self.notes = notes

    def handle(self, line: bytes) -> EvaluationResult:
        try:
            request = request_from_json(line)
        except ProtocolError as exc:
            return failure(_request_id(line), "error", f"bad request: {exc}")
        if _normalized_task(request.task) != self.task_dict:
            return failure(request.id, "error", "request is for another task than this slot's")
        if request.limits.static_gate:
            try:
                check_source(request.proxy_source)
            except GateRejection as exc:
                return failure(request.id, "rejected", str(exc))
        start = time.perf_counter()
        run = self._forked if self.mode == "fork" else self._in_process
        result = run(request)
        result = dataclasses.replace(result, isolation_notes=list(self.notes),
                                     timings={**result.timings, "sandbox_s": time.perf_counter() - start})
        return validate(result, len(self.evaluator.layers))

    # --- fork mode: the proxy computes scores in a child, the parent the fitness

    def _forked(self, request: EvaluationRequest) -> EvaluationResult:
        scratch = isolation.make_scratch(self.scratch_root)
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: never returns
            code = 70
            try:
                os.close(read_end)
                _child_scores(self.evaluator, request, scratch, write_end)
                code = 0
            finally:
                os._exit(code)
        os.close(write_end)
        try:
            os.setpgid(pid, pid)
        except OSError:
            pass  # the child did it first (or is gone)
        try:
            reply, timed_out = _read_reply(read_end, request.limits.timeout_s)
        finally:
            os.close(read_end)
            isolation.kill_group(pid)
            _, wait_status = os.waitpid(pid, 0)
            isolation.reap_children()  # as PID 1 of the namespace: the proxy's killed grandchildren
            shutil.rmtree(scratch, ignore_errors=True)
        if timed_out:
            return failure(request.id, "timeout", f"wall-clock limit of {request.limits.timeout_s:g} s exceeded")
        if reply is None:
            return failure(request.id, "killed", _death_reason(wait_status, request.limits))
        return self._fitness(request, reply)

    def _fitness(self, request: EvaluationRequest, reply: bytes) -> EvaluationResult:
        try:
            answer = json.loads(reply)
            if "error" in answer:
                return failure(request.id, "error", str(answer["error"]), str(answer.get("traceback_tail", "")))
            scores, score_s = answer["scores"], float(answer["score_s"])
            if not isinstance(scores, list):
                raise ValueError("scores are not a list")
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            return failure(request.id, "error", f"malformed answer from the proxy process: {exc}")
        return self._fitness_of(request.id, scores, score_s)

    def _fitness_of(self, request_id: str, scores: list, score_s: float) -> EvaluationResult:
        try:
            fitness = self.evaluator.fitness_of_scores(scores, score_s=score_s)
        except ProxyError as exc:
            return failure(request_id, "error", exc.reason, exc.traceback_tail)
        except Exception as exc:  # noqa: BLE001 - e.g. a score too large for a float; the slot lives on
            return failure(request_id, "error", f"the fitness of these scores failed: {type(exc).__name__}: {exc}",
                           traceback.format_exc())
        return _ok(request_id, fitness)

    # --- in-process mode (CUDA): the worker itself is the sandbox

    def _in_process(self, request: EvaluationRequest) -> EvaluationResult:
        scratch = isolation.make_scratch(self.scratch_root)
        used = sum(resource.getrusage(resource.RUSAGE_SELF)[:2])
        _, hard = resource.getrlimit(resource.RLIMIT_CPU)
        soft = int(used + request.limits.cpu_s)
        resource.setrlimit(resource.RLIMIT_CPU, (soft if hard == resource.RLIM_INFINITY else min(soft, hard), hard))
        os.chdir(scratch)
        alarm = _Alarm(request.limits.timeout_s)
        try:
            scores, score_s = self.evaluator.proxy_scores(request.proxy_source)
        except BaseException as exc:  # noqa: BLE001 - the proxy's failure, not the worker's
            if alarm.rang:  # the proxy loader turns the alarm into a ProxyError; it is a timeout
                return failure(request.id, "timeout", f"wall-clock limit of {request.limits.timeout_s:g} s exceeded")
            if isinstance(exc, ProxyError):
                return failure(request.id, "error", exc.reason, exc.traceback_tail)
            return failure(request.id, "error", f"{type(exc).__name__}: {exc}", traceback.format_exc())
        finally:
            alarm.cancel()
            os.chdir("/")
            shutil.rmtree(scratch, ignore_errors=True)
        return self._fitness_of(request.id, scores, score_s)


class ProxyTimeout(BaseException):
    """Raised in the proxy's frame when its time is up (in-process mode)."""


class _Alarm:
    """SIGALRM after ``seconds``; the pool kills a slot whose proxy swallows it."""

    def __init__(self, seconds: float):
        self.rang = False
        signal.signal(signal.SIGALRM, self._ring)
        signal.setitimer(signal.ITIMER_REAL, seconds)

    def _ring(self, signum, frame):
        self.rang = True
        raise ProxyTimeout()

    def cancel(self) -> None:
        signal.setitimer(signal.ITIMER_REAL, 0)


def _child_scores(evaluator, request: EvaluationRequest, scratch: str, write_end: int) -> None:
    """In the forked child: isolate, run the proxy on copies of the layers, send its scores."""
    import torch

    parent_pid = os.getppid()
    os.setpgid(0, 0)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.closerange(3, write_end)
    os.closerange(write_end + 1, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    torch.set_num_threads(1)  # GNU OpenMP hangs in a forked child that goes parallel
    os.chdir(scratch)
    isolation.scrub_environment(scratch)
    isolation.set_limits(request.limits)
    isolation.drop_privileges()
    isolation.die_with_parent(parent_pid)  # no namespace around us: the worker's death must end us too
    try:
        scores, score_s = evaluator.proxy_scores(request.proxy_source)
        answer = {"scores": scores, "score_s": score_s}
    except ProxyError as exc:
        answer = {"error": exc.reason, "traceback_tail": exc.traceback_tail}
    except BaseException as exc:  # noqa: BLE001 - MemoryError, RecursionError, SystemExit ...
        answer = {"error": f"{type(exc).__name__}: {exc}", "traceback_tail": traceback.format_exc()}
    data = (json.dumps(answer) + "\n").encode()
    while data:
        data = data[os.write(write_end, data):]


def _read_reply(fd: int, timeout_s: float) -> tuple[bytes | None, bool]:
    """The child's one-line answer: (line or None if it died first, timed out?)."""
    deadline = time.monotonic() + timeout_s
    buffer = b""
    while b"\n" not in buffer:
        left = deadline - time.monotonic()
        if left <= 0:
            return None, True
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            return None, False
        buffer += chunk
        if len(buffer) > MAX_REPLY_BYTES:
            return b'{"error": "the proxy process sent more than 1 MB"}', False
    return buffer.split(b"\n", 1)[0], False


def _death_reason(wait_status: int, limits: Limits) -> str:
    if os.WIFSIGNALED(wait_status):
        sig = os.WTERMSIG(wait_status)
        known = {
            signal.SIGXCPU: f"CPU-time limit of {limits.cpu_s} s",
            signal.SIGXFSZ: f"file-size limit of {limits.file_size_mb} MB",
            signal.SIGSEGV: "segmentation fault (e.g. a C stack overflow)",
            signal.SIGKILL: "SIGKILL (out of memory or killed)",
        }
        return f"the proxy process died: {known.get(sig, signal.Signals(sig).name)}"
    code = os.WEXITSTATUS(wait_status)
    return f"the proxy process exited with code {code} before answering (did it call exit?)"


def _ok(request_id: str, fitness) -> EvaluationResult:
    return EvaluationResult(
        id=request_id, status="ok", scores=list(fitness.scores), rho_sens=fitness.rho_sens,
        acc_quant=fitness.acc_quant, phi=fitness.phi, bits=dict(fitness.bits), size_mb=fitness.size_mb,
        avg_bits=fitness.avg_bits, bops=fitness.bops, timings=dict(fitness.timings))


def _request_id(line: bytes) -> str:
    try:
        value = json.loads(line).get("id")
    except (ValueError, AttributeError):
        return "?"
    return value if isinstance(value, str) else "?"


def _normalized_task(task: dict) -> dict:
    from mpq.task import Task

    try:
        return Task.from_dict(task).to_dict()
    except (TypeError, ValueError):
        return {}


# --- start-up -----------------------------------------------------------------------

def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m sandbox.worker", description=__doc__.splitlines()[0])
    parser.add_argument("--task", required=True, help="the task, as Task.to_dict() JSON")
    parser.add_argument("--limits", default="{}", help="slot limits, as Limits JSON")
    parser.add_argument("--cache-dir", default=None, help="ground-truth cache (mpq.cache)")
    parser.add_argument("--lockdown", action="store_true",
                        help="root in a fresh mount namespace: make everything but the scratch read-only")
    parser.add_argument("--mode", choices=("auto", "fork", "in-process"), default="auto")
    return parser.parse_args(argv)


def _start(args: argparse.Namespace, channel: ParentLink) -> Slot:
    from mpq.fitness import Evaluator
    from mpq.task import Task

    task = Task.from_dict(json.loads(args.task))
    limits = Limits.from_dict(json.loads(args.limits))
    start = time.perf_counter()

    def progress(done: int, total: int) -> None:
        channel.send(slot_message_to_json(SlotMessage("progress", done=done, total=total)))

    cache_dir = Path(args.cache_dir) if args.cache_dir else None
    evaluator = Evaluator(task, cache_dir=cache_dir, progress=progress)
    mode = args.mode if args.mode != "auto" else ("fork" if task.device == "cpu" else "in-process")
    notes = [f"{mode} mode" + (": a child per evaluation, scores only; fitness by the warm parent"
                               if mode == "fork" else ": the proxy runs in the slot process")]
    if args.lockdown:
        keep = [sys.base_prefix, sys.prefix, str(PROJECT_ROOT), task.data_root or "/"]
        notes += isolation.lockdown_mounts("/tmp", limits.scratch_mb, keep)
        scratch_root = "/tmp"
    else:
        scratch_root = tempfile.mkdtemp(prefix="tap-mpq-slot-")
        if isolation.is_root():
            os.chown(scratch_root, isolation.SANDBOX_UID, isolation.SANDBOX_UID)
        notes.append(f"no mount lockdown by the worker; scratch dirs under {scratch_root}")
    if mode == "in-process":
        isolation.scrub_environment(scratch_root)
        notes += isolation.set_limits(limits, address_space=False, cpu=False)
        notes.append(isolation.drop_privileges())
        isolation.die_with_parent(args.parent_pid)  # the change of user cleared it
    else:
        notes.append("rlimits, scrubbed environment, fresh scratch dir and the nobody user per evaluation"
                     if isolation.is_root() else "rlimits, scrubbed environment, fresh scratch dir per evaluation")
    channel.send(slot_message_to_json(SlotMessage(
        "ready", num_layers=len(evaluator.layers), load_s=time.perf_counter() - start, mode=mode,
        isolation_notes=notes)))
    return Slot(evaluator, task.to_dict(), mode, scratch_root, notes)


def _exit_on_signal(signum: int, frame) -> None:
    os._exit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    # As PID 1 of its namespace the worker gets no signal it has no handler for
    # (SIGKILL aside): with these, SIGTERM / SIGINT / SIGHUP end the slot at once.
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, _exit_on_signal)
    # Forking next to the ParentLink thread is safe here: the child never touches its stream.
    warnings.filterwarnings("ignore", message=".*multi-threaded.*fork", category=DeprecationWarning)
    channel = ParentLink()
    args = _parse(argv)
    args.parent_pid = os.getppid()
    try:
        slot = _start(args, channel)
    except Exception as exc:  # noqa: BLE001 - reported to the pool, which decides
        channel.send(slot_message_to_json(SlotMessage(
            "failed", reason=f"{type(exc).__name__}: {exc}"[:300], traceback_tail=traceback.format_exc()[-2000:])))
        return 1
    for line in channel.lines():
        channel.send(result_to_json(slot.handle(line)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
