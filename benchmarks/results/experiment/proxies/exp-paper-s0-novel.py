"""Best proxy with an allocation of its own of search exp-paper-s0: g4-c7 (crossover), phi=0.6312, rho_sens=0.1197, acc_quant=0.6880.

Child Proxy:
"""
import math
import torch


def score(layer):
    w = layer.weight.detach().double()
    # compute ONE number for this layer from w, layer.grad, layer.output, layer.params, ...
    s_a = layer.output.abs().max() - layer.output.abs().min()  # range
    s_b = (w * layer.grad.double()).abs().sum()  # gradient sum
    return float(s_a) * s_b + 1e-12
