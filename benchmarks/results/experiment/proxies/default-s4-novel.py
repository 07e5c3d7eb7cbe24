"""Best proxy with an allocation of its own of search default-s4: g3-c4 (crossover), phi=0.5727, rho_sens=0.1741, acc_quant=0.6170.

A child proxy combines the main numbers from both parent proxies. Define a single score function. Keep imports both need.
"""
import math
import torch


def score(layer):
    w = layer.weight.detach().double()
    # compute ONE number for this layer from w, layer.grad, layer.output, layer.params, ...
    s1 = w.abs().max() / w.abs().mean()
    s2 = float((w * layer.grad.double()).abs().sum()) + 1e-12
    return float(s1 * s2) + 1e-12
