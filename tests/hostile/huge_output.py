"""Prints 200 MB to stdout (the protocol channel, if it could reach it) and returns valid scores.
Gate: passes. Contained: stdout is /dev/null in the proxy's process; the result is normal."""


def score(layer):
    line = "x" * 1_000_000
    if layer.index == 0:
        for _ in range(200):
            print(line)
    return float(layer.index)
