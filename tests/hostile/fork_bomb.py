"""Forks without end. Gate: import of os. Contained: RLIMIT_NPROC for the nobody user, then
the whole process group is killed; the slot stays warm."""
import os


def score(layer):
    while True:
        os.fork()
