"""Returns NaN for some layers. Gate: passes. Contained: validation makes it an error result."""


def score(layer):
    return float("nan") if layer.index % 2 else 1.0
