"""Ignores every catchable signal, then loops forever. Gate: import of signal.
Contained: the timeout uses SIGKILL, which cannot be ignored."""
import signal


def score(layer):
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGALRM, signal.SIGXCPU, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    while True:
        pass
