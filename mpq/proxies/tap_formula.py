"""The TAP paper's reference formula: weight magnitude x activation entropy x depth decay.

    score(l) = ||W_l||_2 * H(A_l) * exp(-d_l / L)

Source: Kang, Du, Lin, "Revolutionizing Mixed Precision Quantization: Towards
Training-free Automatic Proxy Discovery via Large Language Models"
(arXiv 2512.07419), the proxy formula quoted in the project's DESIGN.md.

What is implemented, precisely:
- ||W_l||_2: the L2 norm of the flattened BN-folded weight tensor (Frobenius).
- A_l: the layer's output on the calibration images (all values pooled).
- H(A_l): Shannon entropy in bits of a 256-bin histogram of A_l over its own
  [min, max] range (256 bins = the 8-bit activation grid); 0 for a constant map.
- d_l = layer.depth (0-based forward position), L = layer.num_layers.

Depends on: the weights, the calibration activations and the position; not on
labels, gradients or the bit width.
"""
import math

import torch

BINS = 256


def activation_entropy(values):
    values = values.detach().double().flatten()
    low, high = float(values.min()), float(values.max())
    if not high > low:
        return 0.0
    counts = torch.histc(values, bins=BINS, min=low, max=high)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * torch.log2(p)).sum())


def score(layer):
    w_norm = float(layer.weight.double().norm())
    return w_norm * activation_entropy(layer.output) * math.exp(-layer.depth / layer.num_layers)
