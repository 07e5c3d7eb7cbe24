"""Reading one process from /proc, for the benchmarks that sample it while a command runs
(slot_starts, suite_cpu): a process may end between two reads, so each read says so by
returning an empty or None value instead of raising."""
from __future__ import annotations

from pathlib import Path


def cmdline(pid: int | str) -> list[bytes]:
    """Its arguments; one element for a title set by setproctitle (a forked slot, a fork server)."""
    try:
        return [part for part in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if part]
    except OSError:
        return []


def stat_fields(pid: int | str) -> list[str] | None:
    """Its /proc/PID/stat fields after the command name: index 0 is proc(5)'s field 3 (state),
    so field N is at N - 3 (parent 4 -> 1, utime 14 -> 11, stime 15 -> 12, start time 22 -> 19)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
