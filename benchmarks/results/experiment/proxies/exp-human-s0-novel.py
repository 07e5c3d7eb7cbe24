"""Best proxy with an allocation of its own of search exp-human-s0: g4-c2 (crossover), phi=0.5810, rho_sens=0.3557, acc_quant=0.6060.

Child proxy: score layer by taking the product of its weight and its gradient.
"""
import math
import torch


def score(layer):
    w = layer.weight.detach().double()
    grad = layer.grad.detach().double()

    # Compute the mean of the variances
    activation_variance = grad.var(dim=0)

    # Compute the mean of the variances
    mean_variance = activation_variance.mean()

    # Compute the sum of absolute values of the weights
    weight_sum_abs = w.abs().sum()

    # Combine these measures to create a proxy score
    s = mean_variance * weight_sum_abs

    return float(s) + 1e-12
