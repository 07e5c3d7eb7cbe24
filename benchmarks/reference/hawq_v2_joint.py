"""HAWQ-V2 with PyHessian's network-wide Hutchinson probes: the project's baseline from
session 2 until session 4, kept as the subject of benchmarks/hawq_reference.py and
benchmarks/default_task.py. It ranked layers worse than the per-layer estimator
(Spearman 0.62 vs 0.85 against a 256-probe reference), so mpq/proxies/hawq_v2.py
went back to per-layer probes.

HAWQ-V2: average Hessian trace (Hutchinson) x weight perturbation.

Source: Dong, Yao, Arfeen, Gholami, Mahoney, Keutzer, "HAWQ-V2: Hessian Aware
trace-Weighted Quantization of Neural Networks" (NeurIPS 2020), Sec. 3; the
Hutchinson estimator as in the authors' PyHessian (github.com/amirgholami/
PyHessian, `hessian.trace`) and the sensitivities of HAWQ's released ILP
(github.com/Zhen-Dong/HAWQ, `ILP.ipynb`).

HAWQ-V2 ranks a bit configuration by the second-order loss estimate

    Omega = sum_l  Tr(H_l) / n_l  *  || Q_{b_l}(W_l) - W_l ||_2^2        (Eq. 3)

(the average curvature of the layer's loss block times the total squared weight
perturbation). The project's allocator minimises sum_l s_l * 4**(b_min - b_l)
(mpq/allocate.py): the perturbation's bit dependence (each bit divides the
rounding noise power by 4) is the allocator's, and its size per layer must be
in the score. So this proxy returns HAWQ-V2's sensitivity at a reference width:

    score(l) = Tr(H_l) / n_l  *  || Q_4(W_l) - W_l ||_2^2

- Tr(H_l) ~ (1/m) sum_{k=1..m} v_k^T H_l v_k, v_k i.i.d. Rademacher (+-1) shaped
  like W_l; H_l is the Hessian of the cross-entropy on the calibration images
  w.r.t. the layer's BN-folded weight (the contract's `layer.hvp`, one backward
  pass per call); n_l = params.
- Q_4: per-output-channel symmetric min-max rounding to REF_BITS = 4 bits (as
  HAWQ's quantizer). 4 bits, not 2: the 4**-b law of the perturbation holds from
  about 3 bits up (HAWQ's released ResNet18 values: ||dW||^2 at 4 bits is ~290x
  that at 8, 4**4 = 256), so its ratios between layers are those of every width.

Estimator (changed 2026-11-25, benchmarks/results/hawq_joint.json): one
Hutchinson probe covers the whole network, as PyHessian's ``hessian.trace``
does: draw Rademacher v_l for every layer at once, take one network-wide
Hessian-vector product (``layer.network_hvp``, one double-backward pass) and
read every layer's estimate v_l^T (H v)_l. Its mean is Tr(H_l) (the cross
terms v_l^T H_lk v_k have mean zero), so PROBES passes give every trace
instead of up to 16 passes per layer. Fixed seed: reproducible scores.
Negative estimates (a non-convex block, or noise) are kept: they rank the
layer as insensitive.

Depends on: the weights, the calibration images and labels (second order), and
the reference width REF_BITS (the only baseline that looks at a bit width).
"""
import torch

PROBES = 64
SEED = 0
REF_BITS = 4


def rademacher(shape, generator):
    return torch.randint(0, 2, shape, generator=generator).double() * 2 - 1


def block_traces(layers, generator):
    """Every layer's Hutchinson trace Tr(H_l), from PROBES network-wide probes."""
    totals = [0.0] * len(layers)
    for _ in range(PROBES):
        vs = [rademacher(tuple(layer.weight.shape), generator).to(layer.weight) for layer in layers]
        products = layers[0].network_hvp(vs)
        for i, (hv, v) in enumerate(zip(products, vs)):
            totals[i] += float((hv.double() * v.double()).sum())
    return [t / PROBES for t in totals]


def perturbation(weight, bits):
    w = weight.detach().double().reshape(weight.shape[0], -1)
    top = 2 ** (bits - 1) - 1
    scale = (w.abs().amax(dim=1, keepdim=True) / top).clamp_min(1e-12)
    q = torch.clamp(torch.round(w / scale), -top - 1, top) * scale
    return float((q - w).pow(2).sum())


def score_all(layers):
    generator = torch.Generator().manual_seed(SEED)
    traces = block_traces(layers, generator)
    return [trace / layer.params * perturbation(layer.weight, REF_BITS) for trace, layer in zip(traces, layers)]
