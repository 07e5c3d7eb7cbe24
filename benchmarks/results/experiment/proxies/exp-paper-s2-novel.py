"""Best proxy with an allocation of its own of search exp-paper-s2: g4-c3 (crossover), phi=0.6192, rho_sens=0.0631, acc_quant=0.6810.

One child proxy that combines A and B could be:
"""
import math
import torch

def score(layer):
    w = layer.weight.detach().double()
    s_a = float(w.sum().abs() / len(w))  # compute average absolute value of weights from Parent A
    s_b = float((w * layer.grad.double()).abs().sum()) + 1e-12  # compute average absolute value of gradients from Parent B
    s = s_a * s_b  # combine with Parent A and B
    return s + 1e-12
