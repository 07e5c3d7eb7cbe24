"""Best discovered proxy of search exp-a4-s0: g4-c7 (crossover), phi=0.3787, rho_sens=-0.0202, acc_quant=0.4230.

Child Proxy:
"""
import math
import torch


def score(layer):
    # compute ONE number for this layer from w, layer.grad, layer.output, layer.params, ...
    s = (layer.weight.std() / layer.weight.mean()) * 100  # multiply the standard deviation by the reciprocal of the mean and multiply by 100 to get a percentage
    return float(s) + 1e-12
