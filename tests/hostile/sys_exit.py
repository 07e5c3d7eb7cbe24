"""Exits the interpreter from inside score(). Gate: import of sys.
Contained: SystemExit is caught as the proxy's error; the slot stays warm."""
import sys


def score(layer):
    sys.exit(0)
