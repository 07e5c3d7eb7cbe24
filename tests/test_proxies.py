"""Baseline proxies: each runs through the real loader on every model's real
features (embedded data, a few calibration images) and returns valid scores;
the formulas are checked against independent computations where one exists."""
from __future__ import annotations

import importlib.util
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from mpq.data import calibration_batch, load_splits
from mpq.features import extract_features
from mpq.models import MODEL_NAMES, TIMM_MODELS, build_model
from mpq.proxies import BASELINES, baseline_source, random_source
from mpq.proxy import load_proxy

CALIB = 4          # images: enough for every statistic, cheap for second order
HAWQ_PROBES = 1    # Hutchinson probes per layer in the smoke runs (the stopping rule: the trace tests below)


@pytest.fixture(scope="session")
def splits():
    return load_splits("embedded")


@pytest.fixture(scope="session")
def features_of(splits):
    """Features of an (untrained, seeded) model per name, extracted once."""
    cache: dict[str, list] = {}

    def get(name: str):
        if name not in cache:
            if name in TIMM_MODELS and importlib.util.find_spec("timm") is None:
                pytest.skip(f"{name} needs timm, which is not installed")
            torch.manual_seed(0)
            model = build_model(name, splits.spec).eval()
            images, labels = calibration_batch(splits, CALIB, seed=0)
            cache[name] = extract_features(model, images, labels)
        return cache[name]

    return get


def cheap_source(name: str) -> str:
    source = baseline_source(name)
    if name == "hawq_v2":
        cheaper = source.replace("MAX_SAMPLES = 16", f"MAX_SAMPLES = {HAWQ_PROBES}")
        assert cheaper != source, "hawq_v2 no longer has a 'MAX_SAMPLES = 16' line"
        return cheaper
    return source


@pytest.mark.parametrize("model", MODEL_NAMES)
@pytest.mark.parametrize("proxy", list(BASELINES))
def test_every_baseline_runs_on_every_model(proxy, model, features_of):
    layers = features_of(model)
    scores = load_proxy(cheap_source(proxy))(layers)   # the loader validates count and finiteness
    assert len(scores) == len(layers)
    assert all(isinstance(s, float) and math.isfinite(s) for s in scores)
    if proxy == "uniform":
        assert len(set(scores)) == 1
    else:
        assert len(set(scores)) > 1, f"{proxy} gives every layer of {model} the same score"


def test_proxies_leave_the_features_untouched(features_of):
    layers = features_of("resnet18")
    before = [(layer.weight.clone(), layer.output.clone(), layer.grad.clone()) for layer in layers]
    for name in BASELINES:
        load_proxy(cheap_source(name))(layers)
    for layer, (w, out, g) in zip(layers, before):
        assert torch.equal(layer.weight, w) and torch.equal(layer.output, out) and torch.equal(layer.grad, g)


def test_random_is_deterministic_per_seed(features_of):
    layers = features_of("resnet18")
    first = load_proxy(random_source(3))(layers)
    assert load_proxy(random_source(3))(layers) == first
    assert load_proxy(random_source(4))(layers) != first
    assert load_proxy(baseline_source("random"))(layers) == load_proxy(random_source(0))(layers)


def test_unknown_baseline_names_the_valid_ones():
    with pytest.raises(KeyError, match="hawq_v2"):
        baseline_source("hawq")


# ---------------------------------------------------------------- formulas

def fake_layer(weight, **extra):
    return SimpleNamespace(weight=weight, params=weight.numel(), **extra)


def test_hawq_trace_is_exact_for_a_diagonal_hessian():
    # v^T D v = sum(diag D) for every Rademacher v, so the estimate is exact.
    torch.manual_seed(0)
    weight = torch.randn(3, 2, 3, 3)
    diag = torch.rand_like(weight) * 5
    layer = fake_layer(weight, hvp=lambda v: diag * v)
    namespace: dict = {}
    exec(baseline_source("hawq_v2"), namespace)
    trace = namespace["block_trace"](layer, torch.Generator().manual_seed(0))
    assert trace == pytest.approx(float(diag.sum()), rel=1e-6)
    # score = Tr(H) / n * ||Q_4(W) - W||^2 with per-channel symmetric min-max rounding
    w = weight.reshape(3, -1)
    scale = w.abs().amax(dim=1, keepdim=True) / 7
    expected_dw2 = float(((torch.round(w / scale).clamp(-8, 7) * scale - w) ** 2).sum())
    (score,) = namespace["score_all"]([layer])
    assert score == pytest.approx(float(diag.sum()) / weight.numel() * expected_dw2, rel=1e-5)


def test_hawq_trace_converges_for_a_dense_hessian_block():
    # A dense (non-diagonal) block: each probe is noisy, the mean over many is the trace.
    torch.manual_seed(1)
    a = torch.randn(12, 12)
    hessian = a @ a.T
    layer = fake_layer(torch.zeros(3, 4), hvp=lambda v: (hessian @ v.reshape(-1)).reshape(3, 4))
    namespace: dict = {}
    exec(baseline_source("hawq_v2").replace("MAX_SAMPLES = 16", "MAX_SAMPLES = 4000")
         .replace("TOL = 1e-2", "TOL = 0.0"), namespace)
    trace = namespace["block_trace"](layer, torch.Generator().manual_seed(0))
    assert trace == pytest.approx(float(torch.trace(hessian)), rel=0.05)
    one = namespace["block_trace"]  # with one probe the estimate is off: the test above is not vacuous
    namespace["MAX_SAMPLES"] = 1
    assert one(layer, torch.Generator().manual_seed(0)) != pytest.approx(float(torch.trace(hessian)), rel=0.05)


def test_ompq_orm_is_linear_cka_in_feature_space():
    # Gram-space ORM (OMPQ's `orm`) equals the feature-space form with centred columns.
    torch.manual_seed(2)
    x = torch.randn(16, 40, dtype=torch.float64)
    y = torch.randn(16, 25, dtype=torch.float64) + torch.randn(16, 1, dtype=torch.float64)
    namespace: dict = {}
    exec(baseline_source("ompq"), namespace)
    gx, gy = namespace["centered_gram"](x), namespace["centered_gram"](y)
    gram_orm = float((gx * gy).sum() / (gx.norm() * gy.norm()))
    xc, yc = x - x.mean(0), y - y.mean(0)
    feature_orm = float((yc.T @ xc).norm() ** 2 / ((xc.T @ xc).norm() * (yc.T @ yc).norm()))
    assert gram_orm == pytest.approx(feature_orm, rel=1e-9)


def test_ompq_favours_orthogonal_layers_and_is_monotone_in_depth():
    torch.manual_seed(3)
    shared = torch.randn(16, 30)
    outputs = [shared, shared * 2.0, torch.randn(16, 30), shared + 0.01 * torch.randn(16, 30)]
    layers = [SimpleNamespace(output=o) for o in outputs]
    namespace: dict = {}
    exec(baseline_source("ompq"), namespace)
    scores = namespace["score_all"](layers)
    # c_i is the mean of theta over layers i..L-1, theta_2 (the independent layer) the largest:
    gamma = [sum(float((namespace["centered_gram"](a) * namespace["centered_gram"](b)).sum()
                       / (namespace["centered_gram"](a).norm() * namespace["centered_gram"](b).norm()))
                 for b in outputs if b is not a) for a in outputs]
    theta = [math.exp(-g) for g in gamma]
    expected = [np.mean(theta[i:]) for i in range(4)]
    assert scores == pytest.approx([e / max(expected) for e in expected], rel=1e-9)
    assert theta[2] == max(theta)


def test_tap_entropy_and_formula():
    namespace: dict = {}
    exec(baseline_source("tap_formula"), namespace)
    entropy = namespace["activation_entropy"]
    assert entropy(torch.arange(256.0)) == pytest.approx(8.0)      # one value per bin
    assert entropy(torch.full((10, 10), 3.0)) == 0.0
    weight = torch.full((2, 2), 1.5)                                # ||W||_2 = 3
    layer = SimpleNamespace(weight=weight, output=torch.tensor([0.0, 1.0]), depth=2, num_layers=4)
    assert namespace["score"](layer) == pytest.approx(3.0 * 1.0 * math.exp(-0.5))


def test_snip_and_emq_formulas():
    weight = torch.tensor([[1.0, -2.0], [0.5, 0.0]])
    grad = torch.tensor([[0.1, 0.3], [-2.0, 4.0]])
    layer = SimpleNamespace(weight=weight, grad=grad)
    snip: dict = {}
    exec(baseline_source("snip"), snip)
    assert snip["score"](layer) == pytest.approx(0.1 + 0.6 + 1.0 + 0.0)
    emq: dict = {}
    exec(baseline_source("emq"), emq)
    log_g = torch.log(grad.abs().double())
    expected = (torch.softmax(log_g, dim=0) * torch.sqrt(torch.relu(weight.double()))).sum()
    assert emq["score"](layer) == pytest.approx(float(expected))
    with pytest.raises(ValueError, match="grad"):
        emq["score"](SimpleNamespace(weight=weight, grad=None))


@pytest.mark.parametrize("proxy", list(BASELINES))
def test_every_baseline_passes_the_sandbox_gate(proxy):
    # Baselines go through the same gate as LLM proxies; they must not need an exception.
    from sandbox.gate import check_source
    check_source(baseline_source(proxy))
