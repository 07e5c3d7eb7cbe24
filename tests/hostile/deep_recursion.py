"""Recurses without a base case. Gate: passes. Contained: RecursionError becomes an error result."""


def depth(n):
    return depth(n + 1) + 1


def score(layer):
    return float(depth(0))
