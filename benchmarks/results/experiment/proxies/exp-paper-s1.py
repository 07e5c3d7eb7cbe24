"""Best discovered proxy of search exp-paper-s1: g3-c1 (repair), phi=0.6794, rho_sens=0.0797, acc_quant=0.7460.

To fix the error in the proxy, we need to ensure that the gradient vector is properly scaled before computing the dot product with the weights. The original code scales the gradient vector by 16, which is correct for the given problem, but it should be applied to the squared magnitude of the gradient vector to ensure a non-negative result. Here's the corrected code:
"""
import torch


def score(layer):
    w = layer.weight.detach().double()
    if layer.grad is None:
        return float(w.norm()) + 1e-12
    return float((w * layer.grad.double()).abs().sum() / 16) + 1e-12
