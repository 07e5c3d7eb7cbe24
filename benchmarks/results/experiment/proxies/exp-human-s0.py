"""Best discovered proxy of search exp-human-s0: g4-c7 (crossover), phi=0.6803, rho_sens=0.0889, acc_quant=0.7460.

Parent A's main number is the mean of the absolute values of the weights. Parent B's main number is the sum of the absolute values of the gradients. The product of these two main numbers would provide a single score for each layer. This approach balances both the sensitivity of the weights and the importance of the activations in quantization.
"""
import math
import torch


def score(layer):
    w = layer.weight.detach().double()
    grad = layer.grad.detach().double()

    # Compute the mean of the absolute values of the weights
    weight_mean = w.abs().mean()

    # Compute the sum of absolute values of the gradients
    grad_sum_abs = grad.abs().sum()

    # Combine these measures to create a proxy score
    s = weight_mean * grad_sum_abs

    return float(s) + 1e-12
