"""EMQ: the evolved training-free proxy of Dong et al.

Source: Dong, Li, Wei, Niu, Tian, Pan, "EMQ: Evolving Training-free Proxies for
Automated Mixed Precision Quantization" (ICCV 2023). The best searched proxy is
released as a genotype in the authors' code (github.com/lliai/EMQ-series,
`exps/rank/rank_mqbench/rank_emq_zc.py`, "tree_genov1"):

    op_geno = [[1, 11], [6, 14], 2],  input_geno = ['virtual_grad', 'weight']

i.e. a two-branch tree: branch 1 applies unary ops #1, #11 to the gradient,
branch 2 applies unary ops #6, #14 to the weight, and binary op #2 joins them.
The module that names these indices (`emq.operators`) is not part of the public
release; decoded with the operator tables of the same authors' zero-cost-proxy
code (UNARY_KEYS: 1 element_wise_abslog, 6 element_wise_relu, 11 softmax
(dim 0), 14 element_wise_sqrt; BINARY_KEYS: 2 element_wise_product), the
proxy is

    score(l) = sum_k [ softmax_0( log|G_l| ) * sqrt( relu(W_l) ) ]_k

where softmax_0 normalises over the output-channel axis and the sum reduces the
layer to one number (the per-layer reduction of the tree is not in the public
code either: a sum, as EMQ's other reductions).

Differences from the original, on purpose and documented:
- G: EMQ's "virtual_grad" is dL'/dW with L' = sum of logits on an all-ones input
  (data free). The proxy contract exposes no model, so G here is the contract's
  `layer.grad`: the cross-entropy gradient on the calibration images.
- EMQ scores a whole bit configuration on the fake-quantized model; this proxy
  scores each layer once on the FP model, and the bit widths come from the
  project's allocator, as for every other proxy.
Both the decoding and these substitutions are reconstruction, not the authors'
executable proxy: read the leaderboard's EMQ row with that in mind.

Depends on: the weights and the loss gradient (calibration images and labels).
"""
import torch


def abslog(values):
    values = values.abs()
    return torch.log(torch.where(values == 0, torch.ones_like(values), values))


def score(layer):
    if layer.grad is None:
        raise ValueError("emq needs layer.grad (features extracted with gradients)")
    grad = layer.grad.detach().double()
    weight = layer.weight.detach().double()
    grad_branch = torch.softmax(abslog(grad), dim=0)
    weight_branch = torch.sqrt(torch.relu(weight))
    return float((grad_branch * weight_branch).sum())
