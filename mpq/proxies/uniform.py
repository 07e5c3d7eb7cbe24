"""Uniform: every layer equally sensitive (the "no proxy" control).

    score(l) = 1

With equal scores the allocator is left with its own penalty model only (the
quantization penalty of each bit width, weighted by nothing), so this row shows
what the allocation alone achieves. Spearman against the measured sensitivity
is undefined for constant scores (reported as 0 by the fitness).

Depends on: nothing (no weights, no data, no bit width).
"""


def score(layer):
    return 1.0
