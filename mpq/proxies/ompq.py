"""OMPQ: orthogonality of the layers' features on the calibration batch.

Source: Ma et al., "OMPQ: Orthogonal Mixed Precision Quantization" (AAAI 2023);
re-implemented from the paper and the authors' released `mixed_bit/ORM.py` and
`mixed_bit/feature_extract.py` (github.com/MAC-AutoML/OMPQ).

For layer i let X_i be its output on the N calibration images, flattened to
N x D_i, and K_i = X_i X_i^T its linear Gram matrix (N x N). With centred Gram
matrices Kc = H K H (H = I - 11^T/N), the orthogonality metric between two
layers is

    ORM(i, j) = <Kc_i, Kc_j>_F / (||Kc_i||_F ||Kc_j||_F)        (linear CKA)

OMPQ then takes, per layer,

    gamma_i = sum_{j != i} ORM(i, j)                 (how redundant layer i is)
    theta_i = exp(-beta * gamma_i),  beta = 1        (more orthogonal = more important)

and maximises sum_i b_i * c_i under the size budget, with the monotone
coefficient c_i = (1 / (L - i)) * sum_{j >= i} theta_j (the average importance
from layer i to the last layer). This proxy returns c_i / max_k c_k (same
ratios, better scaled): higher = more bits.

Differences from the original: OMPQ hooks the post-ReLU outputs of the
conv-BN-ReLU units / residual blocks and uses 32-64 images; here X_i is the
contract's `layer.output` (the BN-folded conv / linear output) on the task's
calibration images (16 by default). OMPQ solves a continuous relaxation
(SLSQP) and rounds; here the coefficients go to the project's exact allocator.

Depends on: the calibration activations only (no weights, labels or bit width).
"""
import math

import torch

BETA = 1.0


def centered_gram(features):
    x = features.detach().double().reshape(features.shape[0], -1)
    gram = x @ x.T
    n = gram.shape[0]
    h = torch.eye(n, dtype=gram.dtype, device=gram.device) - 1.0 / n
    return h @ gram @ h


def score_all(layers):
    grams = [centered_gram(layer.output) for layer in layers]
    norms = [float(g.norm()) for g in grams]
    count = len(layers)
    theta = []
    for i in range(count):
        gamma = 0.0
        for j in range(count):
            if j != i and norms[i] > 0 and norms[j] > 0:
                gamma += float((grams[i] * grams[j]).sum()) / (norms[i] * norms[j])
        theta.append(math.exp(-BETA * gamma))
    scores = [sum(theta[i:]) / (count - i) for i in range(count)]
    # exp(-gamma) is tiny for deep networks (gamma sums ~L similarities);
    # dividing by the largest changes no ratio and keeps the solver well scaled.
    top = max(scores)
    return [s / top for s in scores]
