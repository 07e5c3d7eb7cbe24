"""Leaves with os._exit, which no except clause can catch. Gate: import of os.
Contained: only the forked child ends (status killed); the slot stays warm."""
import os


def score(layer):
    os._exit(0)
