"""Random: seeded uniform noise per layer (the chance-level control).

    score(l) ~ U(0, 1), i.i.d. per layer, from numpy's PCG64 seeded with SEED

Deterministic: the same SEED and the same number of layers give the same
scores on every machine. ``mpq.proxies.random_source(seed)`` gives this source
with another seed, so a leaderboard can average over several draws.

Depends on: the number of layers only.
"""
import numpy as np

SEED = 0


def score_all(layers):
    rng = np.random.default_rng(SEED)
    return [float(x) for x in rng.random(len(layers))]
