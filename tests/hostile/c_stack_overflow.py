"""Lifts the recursion limit and overflows the C stack (segmentation fault).
Gate: import of sys. Contained: the child dies by SIGSEGV (status killed); the slot stays warm."""
import sys


def depth(n):
    return depth(n + 1) + 1


def score(layer):
    sys.setrecursionlimit(10 ** 8)
    return float(depth(0))
