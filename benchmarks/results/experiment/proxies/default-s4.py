"""Best discovered proxy of search default-s4: g4-c7 (crossover), phi=0.6794, rho_sens=0.0797, acc_quant=0.7460.

Child Proxy:
"""
import math
import torch


def score(layer):
    w = layer.weight.detach().double()
    if layer.grad is None:
        return float(1e5)  # or any other large number indicating no gradient
    g = layer.grad.double()
    s = (w * g).abs().sum()  # <- replace with your idea
    return float(s) + 1e-12
