"""SNIP-like connection sensitivity: |w * g| summed over the layer.

    score(l) = sum_k | w_k * dL/dw_k |

L is the cross-entropy on the calibration images, g averaged over them (one
backward pass). This is the saliency of Lee et al., "SNIP: Single-shot Network
Pruning based on Connection Sensitivity" (ICLR 2019), Eq. 6 without the
normalisation over the whole network (a common factor that changes no order),
summed per layer as in the "snip" zero-cost proxy of Abdelfattah et al.,
"Zero-Cost Proxies for Lightweight NAS" (ICLR 2021). It is the first-order
Taylor estimate of the loss change when the layer's weights are removed.

Depends on: the weights and the loss gradient (calibration images and labels).
"""


def score(layer):
    if layer.grad is None:
        raise ValueError("snip needs layer.grad (features extracted with gradients)")
    return float((layer.weight.double() * layer.grad.double()).abs().sum())
