"""The orchestrator's end of a worker's JSON-lines stream, with timeouts.

A backend supplies ``read_chunk(timeout_s) -> bytes`` (b"" at end of stream,
``TimeoutError`` when nothing came in time), ``write`` and ``kill``; ``Channel``
splits lines, caps their size and keeps the last lines of the worker's stderr
for error messages.
"""
from __future__ import annotations

import collections
import threading
import time
from typing import Callable

MAX_LINE_BYTES = 8 << 20


class Channel:
    """One worker: send request lines, receive result lines."""

    def __init__(self, read_chunk: Callable[[float], bytes], write: Callable[[bytes], None],
                 kill: Callable[[], None]):
        self._read_chunk = read_chunk
        self._write = write
        self._kill = kill
        self._buffer = b""
        self._stderr: collections.deque[str] = collections.deque(maxlen=20)
        self._stderr_lock = threading.Lock()

    def send(self, line: str) -> None:
        self._write(line.encode() + b"\n")

    def receive(self, timeout_s: float) -> bytes | None:
        """The next line (without newline); None when the worker closed its output."""
        deadline = time.monotonic() + timeout_s
        while b"\n" not in self._buffer:
            if len(self._buffer) > MAX_LINE_BYTES:
                raise ValueError(f"worker sent a line over {MAX_LINE_BYTES} bytes")
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            chunk = self._read_chunk(left)
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

    def kill(self) -> None:
        self._kill()
