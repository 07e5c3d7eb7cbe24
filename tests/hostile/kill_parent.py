"""Kills its parent (the warm worker), PID 1 of its namespace and its whole session.
Gate: import of os / signal. Contained: the nobody user cannot signal them; the slot stays warm."""
import os
import signal


def score(layer):
    for pid in (os.getppid(), 1):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    try:
        os.killpg(os.getpgid(os.getppid()), signal.SIGKILL)
    except OSError:
        pass
    raise RuntimeError("the parent survived")
