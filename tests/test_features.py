"""The proxy contract: LayerFeatures attributes, gradients, Hessian-vector products, the prompt table."""
import pytest
import torch
import torch.nn.functional as F
from mpq_tiny import tiny_setup

from mpq.features import LayerFeatures, describe_layers, extract_features
from mpq.quant import fold_batchnorm

CONTRACT = ["name", "index", "depth", "num_layers", "kind", "weight", "bias", "input", "output", "grad", "params",
            "macs", "in_channels", "out_channels", "kernel_size", "stride", "groups", "feature_map"]


@pytest.fixture(scope="module")
def features() -> list[LayerFeatures]:
    s = tiny_setup()
    return extract_features(s.model, s.calib_images, s.calib_labels)


def test_every_contract_attribute_with_the_documented_meaning(features):
    assert [f.kind for f in features] == ["conv", "conv", "depthwise", "conv", "linear"]
    assert [f.index for f in features] == list(range(5)) == [f.depth for f in features]
    for f in features:
        for attr in CONTRACT:
            assert hasattr(f, attr), attr
        assert f.num_layers == 5 and f.params == f.weight.numel()
        assert f.input.shape[0] == f.output.shape[0] == 16
        assert f.grad.shape == f.weight.shape and f.bias is not None  # BN folded into a bias
    first, second, dw, pw, fc = features
    assert first.weight.shape == (8, 1, 3, 3) and first.stride == (2, 2) and first.feature_map == (14, 14)
    assert first.macs == 14 * 14 * 8 * 9 and first.in_channels == 1 and first.out_channels == 8
    assert dw.groups == 16 and dw.macs == 7 * 7 * 16 * 9 and dw.kernel_size == (3, 3)
    assert fc.kernel_size == (1, 1) and fc.feature_map == (1, 1) and fc.macs == 512 * 10
    assert fc.input.shape == (16, 512) and fc.output.shape == (16, 10)


def test_features_are_those_of_the_bn_folded_model(features):
    s = tiny_setup()
    folded = fold_batchnorm(s.model, s.calib_images[:1])
    conv = folded[1][0]
    torch.testing.assert_close(features[1].weight, conv.weight.detach())
    torch.testing.assert_close(features[1].output, conv(features[1].input))
    # the gradient is d(mean cross-entropy on the calibration batch)/d(folded weight)
    weights = [p for n, p in folded.named_parameters() if n.endswith("weight") and p.dim() > 1]
    loss = F.cross_entropy(folded(s.calib_images), s.calib_labels)
    grads = torch.autograd.grad(loss, weights)
    for f, g in zip(features, grads):
        torch.testing.assert_close(f.grad, g, rtol=1e-4, atol=1e-7)


def test_hvp_matches_a_finite_difference_of_the_gradient(features):
    s = tiny_setup()
    folded = fold_batchnorm(s.model, s.calib_images[:1]).double()
    target = folded[3][0].weight  # the pointwise conv
    torch.manual_seed(0)
    v = torch.randn_like(features[3].weight)

    def grad_at(delta):
        with torch.no_grad():
            original = target.clone()
            target.add_(delta)
        loss = F.cross_entropy(folded(s.calib_images.double()), s.calib_labels)
        (g,) = torch.autograd.grad(loss, target)
        with torch.no_grad():
            target.copy_(original)
        return g

    eps = 1e-7  # small: a larger step moves some ReLU inputs across the kink
    numeric = (grad_at(eps * v.double()) - grad_at(-eps * v.double())) / (2 * eps)
    hv = features[3].hvp(v)
    assert hv.shape == v.shape
    cos = F.cosine_similarity(hv.double().flatten(), numeric.flatten(), dim=0)
    assert cos > 0.999 and hv.double().norm() == pytest.approx(float(numeric.norm()), rel=1e-2)
    with pytest.raises(ValueError, match="shape"):
        features[3].hvp(torch.zeros(3))


def test_without_gradients_there_is_no_grad_and_no_hessian():
    s = tiny_setup()
    plain = extract_features(s.model, s.calib_images, s.calib_labels, with_grad=False)
    assert all(f.grad is None for f in plain)
    with pytest.raises(RuntimeError, match="without gradients"):
        plain[0].hvp(torch.zeros_like(plain[0].weight))


def test_copy_protects_the_originals(features):
    copy = features[0].copy()
    copy.weight.mul_(0)
    assert features[0].weight.abs().sum() > 0
    assert copy.hvp(torch.ones_like(copy.weight)).shape == copy.weight.shape


def test_describe_layers_is_a_compact_table(features):
    table = describe_layers(features)
    lines = table.splitlines()
    assert len(lines) == len(features) + 2
    assert "depthwise" in lines[3] and "16x1x3x3" in lines[3] and "linear" in lines[5]
    assert "5 layers" in lines[-1] and f"{sum(f.params for f in features):,}" in lines[-1]


def test_network_hvp_blocks_are_the_full_hessian_times_v(features):
    """network_hvp returns (H v)_l = sum_k H_lk v_k: with v zero outside layer 3 its block 3 is
    that layer's own hvp, and it is linear in v (so Hutchinson's cross terms average out)."""
    torch.manual_seed(0)
    v = torch.randn_like(features[3].weight)
    alone = [torch.zeros_like(f.weight) for f in features]
    alone[3] = v
    assert torch.allclose(features[0].network_hvp(alone)[3], features[3].hvp(v), rtol=1e-4, atol=1e-6)
    a = [torch.randn_like(f.weight) for f in features]
    b = [torch.randn_like(f.weight) for f in features]
    summed = features[0].network_hvp([x + y for x, y in zip(a, b)])
    for index, (ha, hb) in enumerate(zip(features[0].network_hvp(a), features[0].network_hvp(b))):
        assert torch.allclose(summed[index], ha + hb, rtol=1e-4, atol=1e-5), index
    coupled = features[0].network_hvp(a)[3]
    assert not torch.allclose(coupled, features[3].hvp(a[3]), rtol=1e-3, atol=1e-6)  # off-diagonal blocks count
    with pytest.raises(ValueError, match="network_hvp"):
        features[0].network_hvp(alone[:2])
