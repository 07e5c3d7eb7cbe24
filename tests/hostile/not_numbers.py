"""Returns strings and infinities. Gate: passes. Contained: error result."""


def score_all(layers):
    return ["high"] + [float("inf")] * (len(layers) - 1)
