"""Operating-system isolation used by the worker: mounts, limits, privileges.

Standard library only. What the worker does with these, in order:

1. ``lockdown_mounts`` (root in the slot's own mount namespace, started by
   ``unshare``): a private tmpfs on /tmp (the slot's scratch) and /dev/shm,
   tmpfs over the home directories (``~/.ssh`` disappears) with only the
   interpreter, venv, project and data bound back, then every other mount
   read-only. Nothing outside the scratch tmpfs can change.
2. per evaluation, in the process that runs the proxy: ``set_limits`` (rlimits),
   ``scrub_environment`` and a fresh empty working directory, then
   ``drop_privileges`` to the ``nobody`` user (so RLIMIT_NPROC holds, the
   worker cannot be signalled, root-owned files are out of reach).

And for every process of a slot: ``die_with_parent`` (the kernel's
parent-death signal), so that no slot outlives the orchestrator that started it.
A slot forked by ``sandbox.forkserver`` enters its namespaces with
``enter_namespaces`` (an exec'd one with util-linux ``unshare``).
"""
from __future__ import annotations

import ctypes
import functools
import os
import resource
import select
import signal
import subprocess
import sys
from pathlib import Path

from sandbox.protocol import Limits

SANDBOX_UID = 65534
"""``nobody``: the user the proxy runs as when the worker is root."""

HIDDEN_DIRS = ("/root", "/home")
"""Home directories replaced by an empty tmpfs inside the slot."""

WRITABLE_MOUNTS = ("/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue")
"""Mounts not remounted read-only (device nodes and the slot's private shm)."""

MB = 1 << 20
PR_SET_PDEATHSIG = 1
"""prctl option (linux/prctl.h): a signal for this process when its parent thread exits."""
CLONE_NEWNS, CLONE_NEWPID, CLONE_NEWNET = 0x00020000, 0x20000000, 0x40000000  # linux/sched.h
MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REC, MS_PRIVATE = 2, 4, 8, 1 << 14, 1 << 18  # linux/mount.h


class LockdownError(RuntimeError):
    """A mount step failed; the slot must not serve requests without it."""


def is_root() -> bool:
    return os.geteuid() == 0


def lockdown_mounts(scratch: str, scratch_mb: int, keep: list[str]) -> list[str]:
    """Make every mount read-only except a fresh tmpfs at ``scratch``.

    ``keep``: paths under a hidden home directory that must stay readable
    (interpreter, venv, project, data). Returns isolation notes.
    """
    _mount("--make-rprivate", "/")
    _mount("-t", "tmpfs", "-o", f"size={scratch_mb}m,mode=1777,nosuid,nodev", "tmpfs", scratch)
    _mount("-t", "tmpfs", "-o", f"size={scratch_mb}m,mode=1777,nosuid,nodev", "tmpfs", "/dev/shm")
    hidden = [d for d in HIDDEN_DIRS if os.path.isdir(d)]
    kept = sorted({os.path.realpath(p) for p in keep if _under(os.path.realpath(p), hidden)})
    staging = os.path.join(scratch, ".keep")
    for i, path in enumerate(kept):
        os.makedirs(f"{staging}/{i}")
        _mount("--rbind", path, f"{staging}/{i}")
    for directory in hidden:
        _mount("-t", "tmpfs", "-o", "size=1m,mode=755,nosuid,nodev", "tmpfs", directory)
    for i, path in enumerate(kept):
        os.makedirs(path, exist_ok=True)
        _mount("--move", f"{staging}/{i}", path)
    if kept:
        for i in range(len(kept)):
            os.rmdir(f"{staging}/{i}")
        os.rmdir(staging)
    shadowed = [scratch, "/dev/shm", *hidden]  # what was mounted under these is hidden now
    readonly = [m for m in _mount_points()
                if m not in WRITABLE_MOUNTS and m != scratch
                and (not _under(m, shadowed) or _under(m, kept) or m in hidden)]
    for mount_point in readonly:
        _mount("-o", "remount,bind,ro", mount_point)
    return [f"mount namespace: {len(readonly)} mounts read-only, private tmpfs scratch "
            f"{scratch} ({scratch_mb} MB), {', '.join(hidden) or 'no home'} hidden"]


def set_limits(limits: Limits, *, address_space: bool = True, cpu: bool = True) -> list[str]:
    """rlimits for the process that runs the proxy (before dropping privileges).

    ``cpu=False`` for a long-lived slot process: it sets a fresh soft CPU limit
    per evaluation instead (a hard limit could never be raised again)."""
    # On top of what the process already holds (a GPU slot keeps its driver's files and threads).
    files = len(os.listdir("/proc/self/fd")) + limits.open_files
    threads = _status_value("Threads") + limits.processes
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits.file_size_mb * MB,) * 2)
    resource.setrlimit(resource.RLIMIT_NOFILE, (files, files))
    resource.setrlimit(resource.RLIMIT_NPROC, (threads, threads))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    notes = [f"rlimits: file size {limits.file_size_mb} MB, {files} open files, {threads} processes/threads"]
    if cpu:
        resource.setrlimit(resource.RLIMIT_CPU, (int(limits.cpu_s), int(limits.cpu_s) + 5))  # SIGXCPU, SIGKILL
        notes.append(f"cpu {int(limits.cpu_s)} s")
    else:
        notes.append(f"cpu {int(limits.cpu_s)} s per evaluation (soft limit)")
    if address_space:
        ceiling = _status_value("VmSize") * 1024 + limits.memory_mb * MB
        resource.setrlimit(resource.RLIMIT_AS, (ceiling, ceiling))
        notes.append(f"address space: warm worker + {limits.memory_mb} MB")
    else:
        notes.append("no address-space limit (GPU drivers reserve large virtual ranges); "
                     "memory is bounded by the container or machine")
    return notes


def drop_privileges() -> str:
    """Become ``nobody`` when root; otherwise stay the (unprivileged) user we are."""
    if not is_root():
        return f"runs as uid {os.getuid()} (not root: no privilege drop needed or possible)"
    os.setgroups([])
    os.setgid(SANDBOX_UID)
    os.setuid(SANDBOX_UID)
    return f"runs as uid {SANDBOX_UID} (nobody)"


@functools.lru_cache(maxsize=1)
def libc() -> ctypes.CDLL | None:
    """The C library, loaded once (load it before ``fork``: a child must not ``dlopen``)."""
    if sys.platform != "linux":
        return None
    return ctypes.CDLL(None, use_errno=True)


def die_with_parent(parent_pid: int | None = None) -> bool:
    """Have the kernel SIGKILL this process as soon as its parent *thread* exits
    (prctl ``PR_SET_PDEATHSIG``, Linux). The setting survives ``exec`` (so it holds
    through ``unshare``), but a change of user clears it: call again after
    ``drop_privileges``. ``parent_pid``: if the parent already died before this call
    (its signal was never armed), exit now. False where the platform has no such thing."""
    c = libc()
    if c is None or c.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
        return False
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(1)
    return True


def enter_namespaces() -> None:
    """What ``unshare --net --mount --pid --fork --mount-proc --kill-child`` does, from a
    forked process (root, Linux): new network, mount and PID namespaces, then a fork. The
    calling process stays outside as the holder: it waits for the child and exits with it,
    and its death kills the child (parent-death signal), PID 1 of the new namespace, whose
    death ends every process in it. Returns in that child, with a fresh /proc mounted."""
    c = libc()
    if c.unshare(CLONE_NEWNET | CLONE_NEWNS | CLONE_NEWPID) != 0:
        raise OSError(ctypes.get_errno(), f"unshare: {os.strerror(ctypes.get_errno())}")
    _libc_mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing mounted here reaches the host
    holder_alive, holder_end = os.pipe()
    pid = os.fork()
    if pid:  # the holder
        os.close(holder_alive)
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):  # the orchestrator sees the end of the slot's output when PID 1 ends
            os.dup2(devnull, fd)
        _, status = os.waitpid(pid, 0)
        os._exit(os.waitstatus_to_exitcode(status) & 0xFF)
    os.close(holder_end)
    die_with_parent()
    if select.select([holder_alive], [], [], 0)[0]:  # end of file: the holder died before that
        os._exit(1)
    os.close(holder_alive)
    _libc_mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)


def _libc_mount(source: str | None, target: str, kind: str | None, flags: int) -> None:
    encode = lambda text: None if text is None else text.encode()  # noqa: E731
    if libc().mount(encode(source), encode(target), encode(kind), flags, None) != 0:
        raise LockdownError(f"mount {target}: {os.strerror(ctypes.get_errno())}")


def kill_group(pid: int) -> None:
    """SIGKILL the process group led by ``pid`` (gone already, or not ours to kill: nothing to do)."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def reap_children() -> None:
    """Collect every child that has ended, without waiting for the others (the fork server's
    slots; PID 1's orphaned grandchildren)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def scrub_environment(home: str) -> None:
    """Only what Python and torch need; no API keys, tokens or paths of the host."""
    keep = {k: os.environ[k] for k in ("CUDA_VISIBLE_DEVICES", "LANG") if k in os.environ}
    os.environ.clear()
    os.environ.update(keep, HOME=home, TMPDIR=home, PATH="/usr/bin:/bin")


def make_scratch(root: str) -> str:
    """A fresh empty directory the proxy may write to (owned by the sandbox user)."""
    import tempfile

    path = tempfile.mkdtemp(prefix="eval-", dir=root)
    if is_root():
        os.chown(path, SANDBOX_UID, SANDBOX_UID)
    return path


def _under(path: str, directories: list[str]) -> bool:
    return any(path == d or path.startswith(d + "/") for d in directories)


def _mount(*args: str) -> None:
    done = subprocess.run(["mount", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise LockdownError(f"mount {' '.join(args)}: {done.stderr.strip()}")


def _mount_points() -> list[str]:
    """Mount points of this namespace, in mount order, without duplicates."""
    points: list[str] = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point not in points:
            points.append(point)
    return points


def _status_value(key: str) -> int:
    """An integer field of /proc/self/status (``VmSize`` in kB, ``Threads``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0
