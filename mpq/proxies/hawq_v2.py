"""HAWQ-V2: average Hessian trace of the layer's loss block (Hutchinson).

Source: Dong, Yao, Arfeen, Gholami, Mahoney, Keutzer, "HAWQ-V2: Hessian Aware
trace-Weighted Quantization of Neural Networks" (NeurIPS 2020), Sec. 3; the
Hutchinson estimator as in the authors' PyHessian (github.com/amirgholami/
PyHessian, `hessian.trace`) and the sensitivities of HAWQ's released ILP
(github.com/Zhen-Dong/HAWQ, `ILP.ipynb`).

HAWQ-V2 measures a layer's sensitivity by the average trace of its Hessian
block, Tr(H_l) / n_l, and ranks a bit configuration by

    Omega = sum_l  Tr(H_l) / n_l  *  || Q_{b_l}(W_l) - W_l ||_2^2        (Eq. 3)

This proxy returns the first factor,

    score(l) = Tr(H_l) / n_l,    Tr(H_l) ~ (1/m) sum_{k=1..m} v_k^T H_l v_k,
    v_k i.i.d. Rademacher (+-1) shaped like W_l,

with H_l the Hessian of the cross-entropy on the calibration images w.r.t. the
layer's BN-folded weight (the contract's `layer.hvp`, one backward pass per
call). The second factor, the weight perturbation at each bit width, is the
allocator's per-(layer, bits) penalty (mpq/allocate.py), so the allocation
minimises HAWQ-V2's Omega under the budget.

Estimator settings: PyHessian's stopping rule (stop when the running mean moves
by less than TOL relative), with at most MAX_SAMPLES probes per layer (PyHessian:
tol 1e-3, 100 probes; fewer here so a CPU run of a 50-layer network stays in
minutes) and a fixed seed, so the scores are reproducible. Negative estimates
(a non-convex block, or noise) are kept: they rank the layer as insensitive.

Depends on: the weights, the calibration images and labels (second order).
"""
import torch

MAX_SAMPLES = 16
TOL = 1e-2
SEED = 0


def rademacher(shape, generator):
    return torch.randint(0, 2, shape, generator=generator).double() * 2 - 1


def block_trace(layer, generator):
    estimates, mean = [], 0.0
    for _ in range(MAX_SAMPLES):
        v = rademacher(tuple(layer.weight.shape), generator).to(layer.weight)
        estimates.append(float((layer.hvp(v).double() * v.double()).sum()))
        new_mean = sum(estimates) / len(estimates)
        if len(estimates) > 1 and abs(new_mean - mean) / (abs(mean) + 1e-6) < TOL:
            return new_mean
        mean = new_mean
    return mean


def score_all(layers):
    generator = torch.Generator().manual_seed(SEED)
    return [block_trace(layer, generator) / layer.params for layer in layers]
