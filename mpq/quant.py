"""Post-training fake quantization of a bit configuration, and its evaluation.

Pipeline (all on a copy of the model, in eval mode):

1. BatchNorm folding: every ``Conv2d`` whose output goes straight into a
   ``BatchNorm2d`` absorbs it (Jacob et al. 2018, Sec. 3.2); the BN becomes
   ``nn.Identity``. Pairs are found with hooks on one calibration image, so any
   model whose conv output feeds only its BN is handled without tracing.
2. Weights: per-output-channel symmetric fake quantization, round to nearest,
   integer range ``[-2**(b-1), 2**(b-1) - 1]``, scale ``c / (2**(b-1) - 1)``
   where the clipping value ``c`` of each channel is its max |w| (``minmax``)
   or the value on a grid in (0, max |w|] that minimises the channel's squared
   rounding + clipping error (``mse``), or the squared error of the channel's
   output on the calibration images (``output_mse``: clipping judged by what
   it does to the layer's result, as in AdaQuant / BRECQ's layer objective).
3. Optional bias correction (Nagel et al. 2019, "Data-Free Quantization",
   Sec. 4.2, empirical variant): the per-channel mean shift of the layer's
   output caused by weight rounding, ``mean(F(x, W_q - W))``, is measured on the
   calibration images with the FP model's input ``x`` of that layer and
   subtracted from the bias. Using the FP input makes a layer's correction
   independent of the other layers' bits, so it is cached per (layer, bits).
4. Activations: the input of every quantizable layer is fake-quantized
   per-tensor, asymmetric, ``act_bits`` bits, range = min / max on the
   calibration images (FP model).

``Quantizer`` keeps one folded working copy and a cache of quantized weights
per (layer, bits): switching to another configuration only copies weights, which
is what makes the search's inner loop (quantize + evaluate) cheap.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

Clipping = Literal["minmax", "mse", "output_mse"]
QUANTIZABLE = (nn.Conv2d, nn.Linear)


@dataclass(frozen=True)
class QuantConfig:
    """How weights and activations are quantized (defaults chosen by benchmarks/quantizer.py)."""

    clipping: Clipping = "minmax"
    """Per-channel clipping value: ``minmax`` (max |w|), ``mse`` (grid search on the weight error) or
    ``output_mse`` (grid search on the layer's output error on the calibration images).
    On the embedded MobileNetV2 (benchmarks/results/quantizer.json, W3/W4 A8, with bias correction)
    weight-MSE clipping lost 2 points at W3 (it clips the few largest weights of a channel, and a
    depthwise channel has only 9); output-MSE and min-max tie (output-MSE: +0.2 points top-1 but
    +0.005 loss, within the noise of 1,000 images), so the default is the cheaper min-max.
    Re-decide with the CIFAR-10 rows of the same file."""
    bias_correction: bool = True
    """Subtract the output mean shift caused by weight rounding (calibration images); +2 points
    top-1 at W3A8 on the embedded MobileNetV2 (benchmarks/results/quantizer.json)."""
    act_bits: int | None = 8
    """Bits of every quantizable layer's input (per tensor); None = FP activations."""
    first_last_bits: int | None = None
    """Floor on the weight bits of the first and last layer; None = quantized like the rest."""
    fold_bn: bool = True
    """Fold BatchNorm into the convs before quantizing (False: quantize the raw conv weights, BN kept FP).
    Per-channel weight quantization is invariant to the per-channel BN scale, so this changes little."""
    mse_grid: int = 16
    """Clipping search for ``mse``: ``mse_grid`` coarse steps of max|w|, then as many fine ones."""


@dataclass(frozen=True)
class EvalResult:
    top1: float
    """Fraction of correctly classified images, 0..1."""
    loss: float
    """Mean cross-entropy."""
    images: int
    correct: torch.Tensor | None = None
    """Per image (bool, CPU), in the order given; only when ``evaluate(..., per_image=True)``."""


def quantizable_layers(model: nn.Module, example_input: torch.Tensor | None = None) -> list[tuple[str, nn.Module]]:
    """Conv2d / Linear modules with their names, in forward order.

    Without ``example_input`` the registration order is used (it is the forward
    order for torchvision's ResNets and MobileNets); with it, the order of the
    first call in one forward pass (modules never called are dropped).
    """
    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, QUANTIZABLE)]
    if example_input is None:
        return layers
    order: dict[str, int] = {}
    forward_with_hooks(model, example_input,
                       [m.register_forward_pre_hook(_record_order(order, name)) for name, m in layers])
    return sorted((nm for nm in layers if nm[0] in order), key=lambda nm: order[nm[0]])


def forward_with_hooks(model: nn.Module, images: torch.Tensor, hooks: list,
                       grad: bool = False) -> torch.Tensor:
    """One forward pass that the just-registered ``hooks`` observe; they are
    removed afterwards, also when the pass fails."""
    try:
        with torch.set_grad_enabled(grad):
            return model(images)
    finally:
        for h in hooks:
            h.remove()


def _record_order(order: dict[str, int], name: str):
    def hook(_module, _inputs):
        order.setdefault(name, len(order))
    return hook


# --------------------------------------------------------------------------- BN folding

def fold_batchnorm(model: nn.Module, example_input: torch.Tensor) -> nn.Module:
    """A copy of ``model`` (eval mode) with each conv -> BN pair folded into the conv."""
    model = copy.deepcopy(model).eval()
    modules = dict(model.named_modules())
    produced: dict[int, str] = {}      # id(conv output) -> conv name
    consumers: dict[str, list[str]] = {}
    keep_alive: list[torch.Tensor] = []  # so ids of recorded outputs are not reused

    def conv_hook(name):
        def hook(_m, _inp, out):
            produced[id(out)] = name
            keep_alive.append(out)
        return hook

    def consumer_hook(name):
        def hook(_m, inputs):
            if inputs and isinstance(inputs[0], torch.Tensor) and id(inputs[0]) in produced:
                consumers.setdefault(produced[id(inputs[0])], []).append(name)
        return hook

    hooks = []
    for name, m in modules.items():
        if isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(conv_hook(name)))
        if name and not list(m.children()):
            hooks.append(m.register_forward_pre_hook(consumer_hook(name)))
    forward_with_hooks(model, example_input, hooks)

    for conv_name, users in consumers.items():
        if len(users) != 1 or not isinstance(modules[users[0]], nn.BatchNorm2d):
            continue
        conv, bn = modules[conv_name], modules[users[0]]
        if bn.running_mean is None:
            continue
        weight, bias = fuse_conv_bn_weights(conv.weight, conv.bias, bn.running_mean, bn.running_var,
                                            bn.eps, bn.weight, bn.bias)
        conv.weight, conv.bias = weight, bias
        _set_module(model, users[0], nn.Identity())
    return model


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


# --------------------------------------------------------------------------- fake quantization

def qmax(bits: int) -> int:
    return 2 ** (bits - 1) - 1


def fake_quant_per_channel(weight: torch.Tensor, scale: torch.Tensor, bits: int) -> torch.Tensor:
    """Symmetric per-output-channel fake quantization (zero point 0)."""
    shape = (-1,) + (1,) * (weight.dim() - 1)
    s = scale.reshape(shape)
    return torch.clamp(torch.round(weight / s), -qmax(bits) - 1, qmax(bits)) * s


ErrorFn = Callable[[torch.Tensor], torch.Tensor]  # per-channel scales [C] -> per-channel error [C]


def channel_scales(weight: torch.Tensor, bits: int, clipping: Clipping = "minmax", grid: int = 16,
                   output_error: ErrorFn | None = None) -> torch.Tensor:
    """Per-output-channel scale for ``bits``-bit symmetric quantization.

    ``output_mse`` needs ``output_error(scales) -> [C]`` (see ``Quantizer``): the
    squared error each output channel's result suffers on the calibration inputs.
    """
    weight = weight.detach()
    flat = weight.reshape(weight.shape[0], -1)
    max_abs = flat.abs().amax(dim=1).clamp_min(1e-12)
    if clipping == "minmax":
        return max_abs / qmax(bits)
    if clipping == "mse":
        def error(scales: torch.Tensor) -> torch.Tensor:
            return (fake_quant_per_channel(flat, scales, bits) - flat).pow_(2).sum(dim=1)
    elif clipping == "output_mse" and output_error is not None:
        error = output_error
    else:
        raise ValueError(f"unknown clipping {clipping!r}: use 'minmax', 'mse' or 'output_mse' (in a Quantizer)")
    # Coarse-to-fine: ``grid`` fractions k/grid of max|w|, then ``grid`` steps
    # within one coarse step either side of each channel's best (resolution
    # 2 / grid**2), so the search costs about 2 * grid error evaluations.
    coarse = torch.arange(1, grid + 1, dtype=flat.dtype, device=flat.device) / grid
    best = _best_fraction(max_abs, bits, coarse.expand(len(max_abs), -1), error)
    offsets = torch.linspace(-1.0, 1.0, grid + 1, dtype=flat.dtype, device=flat.device) / grid
    fine = (best[:, None] + offsets[None, :]).clamp(1.0 / grid**2, 1.0)
    return max_abs * _best_fraction(max_abs, bits, fine, error) / qmax(bits)


def _best_fraction(max_abs: torch.Tensor, bits: int, fractions: torch.Tensor, error: ErrorFn) -> torch.Tensor:
    """Per channel, the clipping fraction (one of the row ``fractions[c]``) with the least error."""
    best_err = torch.full_like(max_abs, float("inf"))
    best = fractions[:, -1].clone()
    for k in range(fractions.shape[1] - 1, -1, -1):  # from no clipping down: ties keep less clipping
        err = error(max_abs * fractions[:, k] / qmax(bits))
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best = torch.where(better, fractions[:, k], best)
    return best


def quantize_weight(weight: torch.Tensor, bits: int, clipping: Clipping = "minmax", grid: int = 16) -> torch.Tensor:
    """Fake-quantized copy of a conv / linear weight."""
    return fake_quant_per_channel(weight.detach(), channel_scales(weight, bits, clipping, grid), bits)


def fake_quant_activation(x: torch.Tensor, lo: float, hi: float, bits: int) -> torch.Tensor:
    """Asymmetric per-tensor fake quantization to ``bits`` bits on [lo, hi] (which contains 0)."""
    levels = 2**bits - 1
    scale = max(hi - lo, 1e-8) / levels
    zero_point = round(-lo / scale)
    return torch.fake_quantize_per_tensor_affine(x, scale, zero_point, 0, levels)


def layer_op(module: nn.Module, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The module's linear map applied with another weight and no bias."""
    if isinstance(module, nn.Conv2d):
        return F.conv2d(x, weight, None, module.stride, module.padding, module.dilation, module.groups)
    return F.linear(x, weight)


# --------------------------------------------------------------------------- the quantizer

class Quantizer:
    """One BN-folded working copy of a model that can be switched between bit configurations.

    ``apply(bits)`` sets every layer named in ``bits`` to its quantized weight
    (cached per (layer, bits)) and every other layer to its FP weight, and
    returns the working model. The model is shared: apply again to switch.
    """

    def __init__(self, model: nn.Module, calib_images: torch.Tensor, config: QuantConfig = QuantConfig()):
        self.config = config
        self.model = (fold_batchnorm(model, calib_images[:1]) if config.fold_bn
                      else copy.deepcopy(model).eval())
        self.layers = quantizable_layers(self.model, calib_images[:1])
        self.names = [name for name, _ in self.layers]
        self._modules = dict(self.layers)
        for _, m in self.layers:  # bias correction needs a bias everywhere
            if m.bias is None:
                m.bias = nn.Parameter(torch.zeros(m.weight.shape[0], device=m.weight.device))
        self._fp = {n: (m.weight.detach().clone(), m.bias.detach().clone()) for n, m in self.layers}
        self._inputs = self._calibration_inputs(calib_images)
        self.act_ranges = {n: (min(float(x.min()), 0.0), max(float(x.max()), 0.0)) for n, x in self._inputs.items()}
        if not config.bias_correction and config.clipping != "output_mse":
            self._inputs = {}
        self._cache: dict[tuple[str, int], tuple[torch.Tensor, torch.Tensor]] = {}
        self._scales: dict[tuple[str, int], torch.Tensor] = {}
        self._act_on = False
        for name, m in self.layers:
            m.register_forward_pre_hook(self._act_hook(name))

    def _calibration_inputs(self, calib_images: torch.Tensor) -> dict[str, torch.Tensor]:
        inputs: dict[str, torch.Tensor] = {}
        forward_with_hooks(self.model, calib_images,
                           [m.register_forward_pre_hook(_store_input(inputs, n)) for n, m in self.layers])
        return inputs

    def _act_hook(self, name: str):
        def hook(_module, inputs):
            if self._act_on and self.config.act_bits is not None:
                lo, hi = self.act_ranges[name]
                return (fake_quant_activation(inputs[0], lo, hi, self.config.act_bits),) + tuple(inputs[1:])
            return None
        return hook

    @property
    def first_last(self) -> tuple[str, str]:
        return self.names[0], self.names[-1]

    def effective_bits(self, bits: dict[str, int]) -> dict[str, int]:
        """``bits`` after the first / last layer floor of the config."""
        floor = self.config.first_last_bits
        if floor is None:
            return dict(bits)
        return {n: max(b, floor) if n in self.first_last else b for n, b in bits.items()}

    def quantized(self, name: str, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(weight, bias) of layer ``name`` at ``bits`` bits, computed once."""
        key = (name, bits)
        if key not in self._cache:
            w, b = self._fp[name]
            wq = fake_quant_per_channel(w, self.scales(name, bits), bits)
            if self.config.bias_correction:
                with torch.no_grad():
                    shift = layer_op(self._modules[name], self._inputs[name], wq - w)
                    b = b - _per_channel(shift, self._modules[name], "mean")
            self._cache[key] = (wq, b)
        return self._cache[key]

    def scales(self, name: str, bits: int) -> torch.Tensor:
        """Per-output-channel weight scales of layer ``name`` at ``bits`` bits (computed once;
        mpq.ptq_model exports them with the integer weights)."""
        key = (name, bits)
        if key not in self._scales:
            w = self._fp[name][0]
            self._scales[key] = channel_scales(w, bits, self.config.clipping, self.config.mse_grid,
                                               output_error=self._output_error(name, w, bits))
        return self._scales[key]

    def _output_error(self, name: str, w: torch.Tensor, bits: int) -> ErrorFn | None:
        """Per output channel, the squared error of the layer's output on the calibration inputs."""
        if self.config.clipping != "output_mse":
            return None
        module, x = self._modules[name], self._inputs[name]

        def error(scales: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                diff = layer_op(module, x, fake_quant_per_channel(w, scales, bits) - w)
            return _per_channel(diff.pow_(2), module, "sum")
        return error

    def apply(self, bits: dict[str, int], act_quant: bool = True) -> nn.Module:
        """Set the working model to ``bits`` (layers not named stay FP) and return it."""
        unknown = set(bits) - set(self.names)
        if unknown:
            raise KeyError(f"not quantizable layers: {', '.join(sorted(unknown))}")
        bits = self.effective_bits(bits)
        with torch.no_grad():
            for name, m in self.layers:
                w, b = self.quantized(name, bits[name]) if name in bits and bits[name] < 32 else self._fp[name]
                m.weight.copy_(w)
                m.bias.copy_(b)
        self._act_on = act_quant
        return self.model


def _per_channel(y: torch.Tensor, module: nn.Module, reduce: str) -> torch.Tensor:
    """Sum or mean of a layer output over everything but its channel axis (1 for convs, last for linear)."""
    channel = 1 if isinstance(module, nn.Conv2d) else y.dim() - 1
    dims = [d for d in range(y.dim()) if d != channel]
    return y.sum(dim=dims) if reduce == "sum" else y.mean(dim=dims)


def _store_input(store: dict[str, torch.Tensor], name: str):
    def hook(_module, inputs):
        store.setdefault(name, inputs[0].detach())
    return hook


def quantize_model(model: nn.Module, bits: dict[str, int], calib_images: torch.Tensor,
                   config: QuantConfig = QuantConfig()) -> nn.Module:
    """A BN-folded, fake-quantized copy of ``model`` with weight bits ``bits`` ({layer: bits})."""
    return Quantizer(model, calib_images, config).apply(bits)


# --------------------------------------------------------------------------- evaluation

def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, device: str | torch.device | None = None,
             batch_size: int = 500, mean: tuple[float, ...] | None = None,
             std: tuple[float, ...] | None = None, per_image: bool = False) -> EvalResult:
    """Top-1 and mean cross-entropy of ``model`` on ``images`` (and which images it got right, with
    ``per_image``: the top-1 of any subset without another pass).

    ``images`` are float (already normalized) or uint8 with ``mean`` / ``std``
    (per channel, on the 0..1 scale). The whole set is moved to ``device`` once
    (pass tensors already there to avoid even that), then evaluated in batches.
    """
    device = torch.device(device) if device is not None else images.device
    # channels-last: about 2x faster for depthwise / 1x1 convs on a CPU (measured), no loss on a GPU
    layout = torch.channels_last if images.dim() == 4 else torch.contiguous_format
    model.to(device, memory_format=layout).eval()
    images, labels = images.to(device), labels.to(device)
    if images.dtype == torch.uint8:
        if mean is None or std is None:
            raise ValueError("uint8 images need mean and std to be normalized")
        m = torch.tensor(mean, device=device).view(1, -1, 1, 1)
        s = torch.tensor(std, device=device).view(1, -1, 1, 1)
    hits = []
    loss = torch.zeros((), device=device)
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            x = images[start:start + batch_size]
            if x.dtype == torch.uint8:
                x = (x.float() / 255 - m) / s
            x = x.contiguous(memory_format=layout)
            y = labels[start:start + batch_size]
            logits = model(x)
            loss += F.cross_entropy(logits, y, reduction="sum")
            hits.append(logits.argmax(dim=1) == y)
    correct = torch.cat(hits) if hits else torch.zeros(0, dtype=torch.bool, device=device)
    n = max(len(images), 1)
    return EvalResult(top1=float(correct.sum()) / n, loss=float(loss) / n, images=len(images),
                      correct=correct.cpu() if per_image else None)
