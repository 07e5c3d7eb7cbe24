"""Quantizer: fake-quant numerics, BN folding, clipping, bias correction, evaluation."""
import pytest
import torch
from mpq_tiny import tiny_cnn, tiny_setup
from torch import nn

from mpq.quant import (
    QuantConfig,
    Quantizer,
    channel_scales,
    evaluate,
    fake_quant_activation,
    fake_quant_per_channel,
    fold_batchnorm,
    quantizable_layers,
    quantize_model,
    quantize_weight,
)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("shape", [(16, 8, 3, 3), (10, 32), (4, 1, 3, 3)])
def test_fake_quant_matches_torch_per_channel_affine(bits, shape):
    torch.manual_seed(bits)
    w = torch.randn(shape) * torch.rand(shape[0]).view(-1, *[1] * (len(shape) - 1)) * 3
    for clipping in ("minmax", "mse"):
        scale = channel_scales(w, bits, clipping)
        ours = fake_quant_per_channel(w, scale, bits)
        ref = torch.fake_quantize_per_channel_affine(w, scale, torch.zeros(shape[0], dtype=torch.int32), 0,
                                                     -(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
        torch.testing.assert_close(ours, ref, rtol=0, atol=1e-6)
        levels = (ours / scale.view(-1, *[1] * (len(shape) - 1))).round()
        assert levels.unique().numel() <= 2**bits


def test_minmax_keeps_the_extremes_and_mse_is_never_worse():
    torch.manual_seed(0)
    w = torch.randn(32, 64) * torch.linspace(0.1, 2, 32).view(-1, 1)
    w[:, 0] = 8.0  # an outlier per channel: clipping helps at low bits
    for bits in (2, 3, 4):
        mm, mse = quantize_weight(w, bits, "minmax"), quantize_weight(w, bits, "mse")
        torch.testing.assert_close(mm.abs().amax(1), w.abs().amax(1))
        assert ((mse - w) ** 2).sum() < ((mm - w) ** 2).sum()
        assert torch.all(((mse - w) ** 2).sum(1) <= ((mm - w) ** 2).sum(1) + 1e-6)


def test_activation_fake_quant_matches_torch():
    x = torch.randn(4, 3, 5, 5) * 2 + 0.5
    lo, hi = float(x.min()), float(x.max())
    ours = fake_quant_activation(x, lo, hi, 8)
    assert (ours - x).abs().max() <= (hi - lo) / 255 / 2 + 1e-5
    assert fake_quant_activation(x, lo, hi, 2).unique().numel() <= 4


def _randomize_bn(model):
    torch.manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.2, 3)
            m.weight.data.uniform_(0.5, 2)
            m.bias.data.uniform_(-1, 1)
    return model.eval()


def test_bn_folding_keeps_the_function_and_removes_every_bn():
    model = _randomize_bn(tiny_cnn())
    x = torch.randn(4, 1, 28, 28)
    folded = fold_batchnorm(model, x[:1])
    torch.testing.assert_close(folded(x), model(x), rtol=1e-4, atol=1e-5)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # original untouched


def test_bn_folding_on_a_torchvision_resnet():
    torchvision = pytest.importorskip("torchvision")
    model = _randomize_bn(torchvision.models.resnet18(num_classes=10))
    x = torch.randn(2, 3, 32, 32)
    folded = fold_batchnorm(model, x[:1])
    torch.testing.assert_close(folded(x), model(x), rtol=1e-4, atol=1e-4)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in folded.modules()) == 0
    names = [n for n, _ in quantizable_layers(folded, x[:1])]
    assert names[0] == "conv1" and names[-1] == "fc" and len(names) == 21


def test_quantize_model_is_a_copy_and_8_bits_is_nearly_lossless():
    s = tiny_setup()
    before = {k: v.clone() for k, v in s.model.state_dict().items()}
    fp = evaluate(s.model, s.search_images, s.search_labels)
    names = [n for n, _ in quantizable_layers(s.model)]
    q8 = evaluate(quantize_model(s.model, {n: 8 for n in names}, s.calib_images), s.search_images, s.search_labels)
    q2 = evaluate(quantize_model(s.model, {n: 2 for n in names}, s.calib_images, QuantConfig(clipping="minmax")),
                  s.search_images, s.search_labels)
    assert fp.top1 > 0.8
    assert abs(q8.top1 - fp.top1) <= 0.01
    assert q2.loss > q8.loss + 0.1
    for k, v in s.model.state_dict().items():
        assert torch.equal(v, before[k])


def test_quantizer_switches_configurations_and_back_to_fp():
    s = tiny_setup()
    q = Quantizer(s.model, s.calib_images, QuantConfig())
    fp = evaluate(q.apply({}, act_quant=False), s.search_images, s.search_labels)
    low = evaluate(q.apply({n: 2 for n in q.names}), s.search_images, s.search_labels)
    again = evaluate(q.apply({}, act_quant=False), s.search_images, s.search_labels)
    reference = evaluate(s.model, s.search_images, s.search_labels)
    assert low.loss > fp.loss
    assert again.loss == pytest.approx(fp.loss, abs=1e-5) and fp.loss == pytest.approx(reference.loss, abs=1e-4)
    with pytest.raises(KeyError, match="not quantizable"):
        q.apply({"no.such.layer": 4})


def test_bias_correction_removes_the_output_mean_shift():
    s = tiny_setup()
    plain = Quantizer(s.model, s.calib_images, QuantConfig(bias_correction=False, act_bits=None))
    corrected = Quantizer(s.model, s.calib_images, QuantConfig(bias_correction=True, act_bits=None))
    name = plain.names[1]
    module = dict(plain.layers)[name]
    outputs = {}
    hook = module.register_forward_hook(lambda m, i, o: outputs.__setitem__("y", o.mean((0, 2, 3))))
    plain.apply({}), plain.model(s.calib_images)
    fp_mean = outputs["y"]
    plain.apply({name: 2}), plain.model(s.calib_images)
    shift_plain = (outputs["y"] - fp_mean).abs().mean()
    hook.remove()
    module_c = dict(corrected.layers)[name]
    module_c.register_forward_hook(lambda m, i, o: outputs.__setitem__("y", o.mean((0, 2, 3))))
    corrected.apply({name: 2}), corrected.model(s.calib_images)
    shift_corrected = (outputs["y"] - fp_mean).abs().mean()
    assert shift_corrected < 1e-4 < shift_plain


def test_first_last_floor_and_uint8_evaluation():
    s = tiny_setup()
    q = Quantizer(s.model, s.calib_images, QuantConfig(first_last_bits=8))
    eff = q.effective_bits({n: 2 for n in q.names})
    assert eff[q.names[0]] == 8 and eff[q.names[-1]] == 8 and eff[q.names[1]] == 2
    from mpq.data import EMBEDDED_SPEC, load_splits
    val = load_splits("embedded").val.head(200)
    a = evaluate(s.model, val.images, val.labels, mean=EMBEDDED_SPEC.mean, std=EMBEDDED_SPEC.std, batch_size=64)
    b = evaluate(s.model, val.normalized(), val.labels)
    assert a.top1 == b.top1 and a.loss == pytest.approx(b.loss, rel=1e-5) and a.images == 200
    with pytest.raises(ValueError, match="mean and std"):
        evaluate(s.model, val.images, val.labels)
    # per image: any subset's top-1 read from one pass (mpq.export's onnxruntime check reads it so)
    every = evaluate(s.model, val.normalized(), val.labels, batch_size=64, per_image=True)
    subset = torch.tensor([3, 0, 199, 64, 65, 17])
    assert every.correct.dtype == torch.bool and every.correct.shape == (200,) and b.correct is None
    assert int(every.correct.sum()) / 200 == every.top1 == b.top1
    assert int(every.correct[subset].sum()) / len(subset) == evaluate(s.model, val.normalized()[subset],
                                                                   val.labels[subset]).top1


class _TokenModel(nn.Module):
    """Linear layers on [N, tokens, features] inputs, as in a vision transformer."""

    def __init__(self):
        super().__init__()
        self.mix, self.head = nn.Linear(28, 16), nn.Linear(16, 10)

    def forward(self, x):
        return self.head(torch.relu(self.mix(x.flatten(1, 2))).mean(dim=1))


def test_token_linear_layers_quantize_with_bias_correction():
    from mpq.features import extract_features
    torch.manual_seed(0)
    model, x, y = _TokenModel().eval(), torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    q = Quantizer(model, x, QuantConfig(bias_correction=True, act_bits=None))
    mix = dict(q.layers)["mix"]
    fp_mean = mix(x.flatten(1, 2)).mean(dim=(0, 1))
    q.apply({"mix": 2})
    assert (mix(x.flatten(1, 2)).mean(dim=(0, 1)) - fp_mean).abs().max() < 1e-4
    feats = extract_features(model, x, y)
    assert [f.kind for f in feats] == ["linear", "linear"] and feats[0].macs == 28 * 28 * 16


def test_output_mse_clipping_never_increases_a_channels_output_error():
    s = tiny_setup()
    by_clipping = {c: Quantizer(s.model, s.calib_images, QuantConfig(clipping=c, bias_correction=False, act_bits=None))
                   for c in ("minmax", "output_mse")}
    q = by_clipping["minmax"]
    name, module = q.layers[1]
    inputs = {}
    hook = module.register_forward_pre_hook(lambda m, i: inputs.setdefault("x", i[0]))
    q.apply({}), q.model(s.calib_images)
    hook.remove()
    w_fp = module.weight.detach().clone()
    errors = {}
    for clipping, quantizer in by_clipping.items():
        wq, _ = quantizer.quantized(name, 2)
        diff = nn.functional.conv2d(inputs["x"], wq - w_fp, None, module.stride, module.padding, 1, module.groups)
        errors[clipping] = diff.pow(2).sum(dim=(0, 2, 3))
    assert torch.all(errors["output_mse"] <= errors["minmax"] * (1 + 1e-5))
    assert errors["output_mse"].sum() < errors["minmax"].sum()
