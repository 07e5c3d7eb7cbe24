"""The orchestrator's end of a worker's JSON-lines stream, with timeouts.

A backend supplies ``read_chunk(timeout_s) -> bytes`` (b"" at end of stream,
``TimeoutError`` when nothing came in time), ``write`` and ``kill``;
``WorkerChannel`` splits lines, caps their size and keeps the last lines of the
worker's stderr for error messages. (The worker's end is ``sandbox.worker.ParentLink``.)

Waits are cut into short slices so that ``abort`` (another thread closing the
pool) ends them within ``POLL_S``: a thread blocked on a worker that is still
loading never holds up ``EvaluatorPool.close``, on any backend.
"""
from __future__ import annotations

import collections
import threading
import time
from typing import Callable

MAX_LINE_BYTES = 8 << 20
POLL_S = 0.25
"""Longest a receive goes without noticing ``abort``."""


class WorkerChannel:
    """One worker: send request lines, receive result lines."""

    def __init__(self, read_chunk: Callable[[float], bytes], write: Callable[[bytes], None],
                 kill: Callable[[], None]):
        self._read_chunk = read_chunk
        self._write = write
        self._kill = kill
        self._buffer = b""
        self._stderr: collections.deque[str] = collections.deque(maxlen=20)
        self._stderr_lock = threading.Lock()
        self._aborted = threading.Event()
        self._killed = False
        self._kill_lock = threading.Lock()

    @property
    def aborted(self) -> bool:
        return self._aborted.is_set()

    def send(self, line: str) -> None:
        self._write(line.encode() + b"\n")

    def receive(self, timeout_s: float) -> bytes | None:
        """The next line (without newline); None when the worker closed its output or
        the channel was aborted; TimeoutError after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while b"\n" not in self._buffer:
            if len(self._buffer) > MAX_LINE_BYTES:
                raise ValueError(f"worker sent a line over {MAX_LINE_BYTES} bytes")
            if self._aborted.is_set():
                return None
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            try:
                chunk = self._read_chunk(min(left, POLL_S))
            except TimeoutError:
                continue
            except (OSError, ValueError):  # the stream was closed under us by kill()
                return None
            if not chunk:
                return None
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line

    def note_stderr(self, text: str) -> None:
        with self._stderr_lock:
            self._stderr.extend(text.splitlines())

    def stderr_tail(self) -> str:
        with self._stderr_lock:
            return "\n".join(self._stderr)

    def abort(self) -> None:
        """Make every wait on this channel end now (from any thread); ``kill`` still needed."""
        self._aborted.set()

    def kill(self) -> None:
        """Stop the worker (once; later calls return at once)."""
        self._aborted.set()
        with self._kill_lock:
            if self._killed:
                return
            self._killed = True
        self._kill()
