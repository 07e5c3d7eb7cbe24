"""Best discovered proxy of search exp-paper-s0: g0-c7 (repair), phi=0.6794, rho_sens=0.0797, acc_quant=0.7460.

The proxy is fine, but it should be adjusted to handle the case where `layer.grad` is `None`. In such cases, we can return a high value to indicate that the layer is not sensitive to quantizing its weights. Here's the fixed module:
"""
import torch


def score(layer):
    if layer.grad is None:
        return float(1e5)  # or any other large number indicating no gradient
    w = layer.weight.detach().double()
    return float((w * layer.grad.double()).abs().sum()) + 1e-12
