"""Best discovered proxy of search exp-paper-s2: g0-c2 (init), phi=0.6794, rho_sens=0.0797, acc_quant=0.7460.

The score for each layer is computed as the average magnitude of the weights. This approach is simple yet effective in capturing the sensitivity of the model to quantization. The scores are then combined using a fitness function that measures the correlation between the proxy scores and the actual quantization sensitivities of the layers, along with the top-1 accuracy of the quantized model.

Here's the complete implementation of the proxy:
"""
import math
import torch

def score(layer):
    w = layer.weight.detach().double()
    if layer.grad is None:
        return float(w.norm()) + 1e-12
    return float((w * layer.grad.double()).abs().sum()) + 1e-12
