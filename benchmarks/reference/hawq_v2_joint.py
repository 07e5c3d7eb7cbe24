"""HAWQ-V2 with PyHessian's network-wide Hutchinson probes: the project's baseline from
session 2 until session 4, kept as the subject of benchmarks/hawq_reference.py and
benchmarks/default_task.py. It ranked layers worse than the per-layer estimator
(Spearman 0.62 vs 0.85 against a 256-probe reference), so mpq/proxies/hawq_v2.py
went back to per-layer probes.

The score is HAWQ-V2's, Tr(H_l) / n_l * ||Q_4(W_l) - W_l||^2 (sources and derivation in
mpq/proxies/hawq_v2.py); only the trace estimator differs.

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

from mpq.proxies.hawq_v2 import REF_BITS, perturbation, rademacher  # the same score; only the traces differ

PROBES = 64
SEED = 0


def block_traces(layers, generator):
    """Every layer's Hutchinson trace Tr(H_l), from PROBES network-wide probes."""
    totals = [0.0] * len(layers)
    for _ in range(PROBES):
        vs = [rademacher(tuple(layer.weight.shape), generator).to(layer.weight) for layer in layers]
        products = layers[0].network_hvp(vs)
        for i, (hv, v) in enumerate(zip(products, vs)):
            totals[i] += float((hv.double() * v.double()).sum())
    return [t / PROBES for t in totals]


def score_all(layers):
    generator = torch.Generator().manual_seed(SEED)
    traces = block_traces(layers, generator)
    return [trace / layer.params * perturbation(layer.weight, REF_BITS) for trace, layer in zip(traces, layers)]
