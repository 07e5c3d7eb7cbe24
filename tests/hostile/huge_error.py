"""Raises an exception whose message is 100 MB, so that its error report floods the channel.
Gate: passes. Contained: the answer is capped (1 MB) and the reason cut to one short line."""


def score(layer):
    raise ValueError("x" * 100_000_000)
