"""Best discovered proxy of search exp-a4-recon-s0: g4-c5 (crossover), phi=0.7482, rho_sens=0.3000, acc_quant=0.7980.

Child proxy:
"""
import math
import torch


def score(layer):
    w = layer.weight.detach().double()
    # compute ONE number for this layer from w, layer.grad, layer.output, layer.params, ...
    s = (w.abs().mean() * layer.grad.norm())  # <- replace with your idea
    return float(s) + 1e-12
