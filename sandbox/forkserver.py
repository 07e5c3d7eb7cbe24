"""A fork server for CPU slots: the worker's imports paid once per orchestrator, not per slot.

Every ``python -m sandbox.worker`` imports torch, torchvision (whose ``ops`` pull in
``torch._dynamo``) and scipy before it loads its task: 5.7-10 s of CPU on the 2-core
machine, paid again by every slot start and restart (benchmarks/results/slot_starts.json).
``ForkServer`` starts ``python -m sandbox.forkserver`` once per orchestrator process and
slot environment; it imports that set and then forks one process per slot on request,
the way ``multiprocessing``'s forkserver start method does. A forked slot then does for
itself what ``unshare --net --mount --pid --fork --mount-proc --kill-child`` does for an
exec'd one (``sandbox.isolation.enter_namespaces``) and runs ``sandbox.worker.main``.

Only CPU slots come from here: a GPU slot is exec'd as before (``ProcessLauncher``), so
no slot ever shares state with a process that might have touched a CUDA driver.

What ends what (a slot dies with its orchestrator, whatever ends it):

- the server: the kernel's parent-death signal, tied to a keeper thread that lives as
  long as the orchestrator process (a slot thread may end sooner); and the end of its
  control socket, which only the orchestrator holds;
- a slot: the parent-death signal, tied to the server (single-threaded), and in its
  namespace the chain of ``enter_namespaces``; the end of its input, as any worker.

The control socket carries one request per datagram: the slot's arguments and
environment, with its stdin, stdout and stderr attached (SCM_RIGHTS); the answer is
the slot's PID with a pidfd attached, which the orchestrator uses to kill it and to
wait for its end (the server, not the orchestrator, is the slot's parent).
"""
from __future__ import annotations

import collections
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import traceback
from dataclasses import dataclass
from typing import NoReturn

from sandbox import isolation

PRELOAD = ("sandbox.worker", "mpq.fitness", "mpq.models", "mpq.data", "mpq.task")
"""What every worker imports before it loads its task (timm for a ViT is left to the slot)."""
TITLE_ROOM = 2048
"""Bytes of the server's argv kept free for a slot's process title: ``ps`` and /proc show
``sandbox.worker`` with the slot's cache folder, as for an exec'd worker."""
MAX_REQUEST_BYTES = 1 << 20
ANSWER_TIMEOUT_S = 600.0
"""Longest wait for the server: its imports (seconds; minutes on a loaded machine) or a fork."""


class ForkServerError(RuntimeError):
    """The server could not start or fork; the slot start fails with this reason."""


@dataclass(frozen=True)
class ForkedSlot:
    """One forked slot, as the orchestrator holds it."""

    pid: int
    pidfd: int
    """Readable once the slot has ended; signals go through it (no PID reuse race)."""
    stdin: int
    stdout: int
    stderr: int


class ForkServer:
    """The orchestrator's end: one server process for one slot environment."""

    def __init__(self, env: dict[str, str]):
        self._control, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._control.settimeout(ANSWER_TIMEOUT_S)
        self._process: subprocess.Popen | None = None
        self.pid: int | None = None
        self._lock = threading.Lock()
        self._stderr: collections.deque[str] = collections.deque(maxlen=20)
        self._ready = False
        self._gone = threading.Event()
        started, failure = threading.Event(), []
        command = [sys.executable, "-m", "sandbox.forkserver", str(theirs.fileno()), "." * TITLE_ROOM]
        parent = os.getpid()
        isolation.libc()  # loaded here: the child must not load libraries between fork and exec

        def keep() -> None:  # the server's parent-death signal is tied to this thread
            try:
                process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                           stderr=subprocess.PIPE, env=env, cwd="/", pass_fds=[theirs.fileno()],
                                           start_new_session=True,
                                           preexec_fn=lambda: isolation.die_with_parent(parent))
            except OSError as exc:
                failure.append(exc)
                started.set()
                return
            self._process, self.pid = process, process.pid
            started.set()
            for raw in iter(lambda: process.stderr.readline(65536), b""):
                self._stderr.append(raw.decode(errors="replace").rstrip())
            process.wait()
            self._gone.set()

        threading.Thread(target=keep, name="sandbox-forkserver", daemon=True).start()
        started.wait()
        theirs.close()
        if failure:
            raise ForkServerError(f"the fork server could not start: {failure[0]}")

    def fork(self, argv: list[str], *, namespaces: bool, title: str) -> ForkedSlot:
        """A new slot running ``sandbox.worker.main(argv)`` in the server's environment; blocks
        while the server imports."""
        stdin_read, stdin_write = os.pipe()
        stdout_read, stdout_write = os.pipe()
        stderr_read, stderr_write = os.pipe()
        ours, theirs = [stdin_write, stdout_read, stderr_read], [stdin_read, stdout_write, stderr_write]
        request = json.dumps({"argv": argv, "namespaces": namespaces, "title": title}).encode()
        try:
            with self._lock:
                if not self._ready:
                    self._receive()  # the server says it has imported
                    self._ready = True
                try:
                    socket.send_fds(self._control, [request], theirs)
                except OSError as exc:
                    self._fail(exc)
                answer, fds = self._receive()
        except BaseException:
            for fd in ours:
                os.close(fd)
            raise
        finally:
            for fd in theirs:
                os.close(fd)
        return ForkedSlot(json.loads(answer)["pid"], fds[0], *ours)

    @property
    def ended(self) -> bool:
        """True once the server is known to be gone (exited, or its socket failed)."""
        return self._gone.is_set() or self._control.fileno() < 0

    def _receive(self) -> tuple[bytes, list[int]]:
        try:
            data, fds, _, _ = socket.recv_fds(self._control, MAX_REQUEST_BYTES, 1)
        except OSError as exc:  # a timeout included: the server is not answering
            self._fail(exc)
        if not data:
            self._fail(None)
        return data, fds

    def _fail(self, error: OSError | None) -> NoReturn:
        """Give up on the server (``ended`` from now on: the next start gets a new one)."""
        self._control.close()
        if self._process is not None:
            self._process.kill()
        tail = "\n".join([*self._stderr, *([str(error)] if error else [])])
        raise ForkServerError(f"the fork server ended{': ' + tail[-500:] if tail else ''}")


_servers: dict[tuple, ForkServer] = {}
_servers_lock = threading.Lock()


def server_for(env: dict[str, str]) -> ForkServer:
    """The orchestrator's server for slots with this environment (started on first use; a
    server that ended is replaced). Process-wide, as ``multiprocessing``'s forkserver: the
    point is to import once for every pool and every restart of this process."""
    key = tuple(sorted(env.items()))
    with _servers_lock:
        server = _servers.get(key)
        if server is None or server.ended:
            server = _servers[key] = ForkServer(env)
        return server


# --- the server process --------------------------------------------------------------

def serve(control: socket.socket) -> None:
    """Import the worker's set, then fork a slot per request until the orchestrator is gone."""
    import importlib

    environment = dict(os.environ)  # the slots' (the orchestrator's worker_environment), before any import
    title = _title_setter()
    title(f"python -m sandbox.forkserver (slots of PID {os.getppid()})")  # now: it finds argv's
    # memory on its first use, and only while the environment is untouched (a slot replaces it)
    for module in PRELOAD:
        importlib.import_module(module)
    isolation.libc()
    # Slots are reaped here as they end; SIGCHLD is blocked from fork to pidfd_open, so a
    # slot that ends at once cannot be reaped (and its PID reused) before its pidfd exists.
    signal.signal(signal.SIGCHLD, lambda *_: isolation.reap_children())
    control.send(b'{"ready": true}')
    server = os.getpid()
    while True:
        data, fds, _, _ = socket.recv_fds(control, MAX_REQUEST_BYTES, 3)
        if not data:
            return  # the orchestrator closed its end: it is gone
        request = json.loads(data)
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
        pid = os.fork()
        if pid == 0:
            control.close()  # the slot must not reach the server
            _run_slot(request, fds, environment, title, server)
        pidfd = os.pidfd_open(pid)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})
        for fd in fds:
            os.close(fd)
        socket.send_fds(control, [json.dumps({"pid": pid}).encode()], [pidfd])
        os.close(pidfd)


def _run_slot(request: dict, fds: list[int], environment: dict[str, str], set_title, server: int) -> None:
    """In the forked child: become the slot (never returns)."""
    code = 1
    try:
        os.setsid()  # its own process group, killed as a whole
        isolation.die_with_parent(server)  # exits at once if the server is already gone
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        os.environ.clear()  # the server's as it started: what an import set there is dropped
        os.environ.update(environment)
        set_title(request["title"] + " (namespace holder)" if request["namespaces"] else request["title"])
        if request["namespaces"]:
            isolation.enter_namespaces()  # returns in the slot's PID 1
            set_title(request["title"])
        from sandbox import worker

        code = worker.main(request["argv"])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # noqa: BLE001 - the pool reads the stderr tail
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(code)


def _title_setter():
    """``setproctitle`` where installed (the host's venv); elsewhere titles stay the server's."""
    try:
        from setproctitle import setproctitle
    except ImportError:
        return lambda title: None
    return lambda title: setproctitle(title[:TITLE_ROOM])


if __name__ == "__main__":
    serve(socket.socket(fileno=int(sys.argv[1])))
