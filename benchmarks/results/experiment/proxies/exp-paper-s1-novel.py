"""Best proxy with an allocation of its own of search exp-paper-s1: g3-c4 (mutation), phi=0.4071, rho_sens=0.2550, acc_quant=0.4240.

Post-training mixed-precision quantization of mobilenetv2 on the cifar10-mini data set. Each layer's weights get 2/4/8 bits, activations 8 bits; budget: average weight bits <= 3. Bits go to the layers your proxy scores highest. Fitness = 0.1 * rho_sens (Spearman correlation of your scores with each layer's measured quantization sensitivity) + 0.9 * top-1 accuracy of the quantized model. Higher is better.

New parent proxy (fitness 0.7543, rho_sens 0.120, acc_quant 0.7584):
"""
import torch

def score(layer):
    w = layer.weight.detach().double()
    # compute ONE number for this layer from w, layer.grad, layer.output, layer.params, ...
    s = (w * layer.grad.double()).abs().sum() / layer.params  # <- replace with your idea
    return float(s) + 1e-12
