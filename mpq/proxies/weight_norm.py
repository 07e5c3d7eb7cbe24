"""Weight L2 norm: the magnitude of the layer's (BN-folded) weights.

    score(l) = ||W_l||_2 = sqrt(sum_k w_k^2)      (the flattened tensor, i.e. Frobenius)

The simplest weight-only magnitude criterion, as in magnitude-based pruning
(Han et al., "Learning both Weights and Connections for Efficient Neural
Networks", NeurIPS 2015) and the "l2_norm" zero-cost proxy of the NAS / MQ
proxy benchmarks (Abdelfattah et al., "Zero-Cost Proxies for Lightweight NAS",
ICLR 2021; EMQ's MQ-Bench-101 comparison). It grows with sqrt(params), so it
favours large layers.

Depends on: the weights only.
"""


def score(layer):
    return float(layer.weight.double().norm())
