"""Best discovered proxy of search exp-dpo-s0: g0-c4 (init), phi=0.4619, rho_sens=0.3353, acc_quant=0.4760.

A new proxy from the idea family scores each layer's output range or variance on the calibration images. This score is computed as the average of the absolute values of the layer's activations, which is a measure of the overall spread of the activations.
"""
import math
import torch


def score(layer):
    w = layer.weight.detach().double()
    # compute ONE number for this layer from w, layer.grad, layer.output, layer.params, ...
    s = float(layer.output.abs().mean())  # <- replace with your idea
    return float(s) + 1e-12
