"""K quantized variants of one network, run as one network ("channel stacking").

Reconstructing the final model is cheap per image but launch-bound on a GPU,
and a leaderboard needs it for many allocations (proxies x budgets x
calibration seeds). So K variants of the BN-folded model are stacked along
the channel axis: an activation of shape ``[B, C, H, W]`` becomes
``[B, K*C, H, W]`` (variant-major), every conv becomes a grouped conv with
``K * groups`` groups and its own weights per variant, every linear layer a
batched matmul. Element-wise ops (ReLU, residual adds), pooling and flatten
act per channel, so the float model's own ``forward`` runs unchanged; any
module that mixes channels other than conv / linear (BatchNorm left unfolded,
LayerNorm, attention) is refused. Each variant has its own bit-widths, weight
scales, rounding variables, activation ranges and input images.

Weights follow AdaRound (Nagel et al. 2020, "Up or Down? Adaptive Rounding
for Post-Training Quantization", Eq. 22-23): ``w_q = s * clamp(floor(w / s) +
h(alpha), lo, hi)`` with the rectified sigmoid ``h(alpha) = clamp(sigmoid(alpha)
* (zeta - gamma) + gamma, 0, 1)``, zeta = 1.1, gamma = -0.1; ``alpha`` starts
where ``h`` equals the fractional part of ``w / s`` (so ``hard`` mode before
any training is round-to-nearest). Scales are per output channel, zero point 0
(as ``mpq.quant``), on a two's-complement grid ``lo = -2^(b-1) .. hi = 2^(b-1) - 1``
or, per channel, its mirror (``sign = -1``: ``1 - 2^(b-1) .. 2^(b-1)``): at 2 bits
the grid {-2, -1, 0, 1} has one positive level, and a channel whose large
weights are positive (a depthwise filter's centre tap) loses them; choosing the
side is what BRECQ's per-channel zero point does; activations are quantized at the input of
every layer, per tensor and per variant, asymmetric, with fixed calibrated
ranges (straight-through gradient inside the range).
"""
from __future__ import annotations

import copy
from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mpq.quant import QUANTIZABLE, Clipping, channel_scales, fake_quant_per_channel, qmax

ZETA, GAMMA = 1.1, -0.1
Mode = Literal["fp", "soft", "hard"]
# modules allowed next to conv / linear: they act per channel or per element
CHANNELWISE = (nn.Identity, nn.ReLU, nn.ReLU6, nn.Hardswish, nn.SiLU, nn.Hardsigmoid, nn.Sigmoid, nn.Dropout,
               nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.Flatten, nn.Sequential)


class StackError(ValueError):
    """The model has a module that the channel stacking cannot run per variant."""


def rectified_sigmoid(alpha: torch.Tensor) -> torch.Tensor:
    return torch.clamp(torch.sigmoid(alpha) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)


def alpha_init(fraction: torch.Tensor) -> torch.Tensor:
    """alpha with ``rectified_sigmoid(alpha) == fraction`` (AdaRound's initialisation)."""
    return -torch.log((ZETA - GAMMA) / (fraction - GAMMA) - 1)


def grid_of(weight: torch.Tensor, bits: int, clipping: Clipping, orient: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Per output channel: (scale, orientation +1 / -1) of the ``bits``-bit grid.

    With ``orient``, each channel takes the orientation of the grid (module doc) whose
    clipped round-to-nearest weights are closer to its own (squared error), with that orientation's
    scale: BRECQ's per-channel zero point, restricted to the two choices of a zero-containing grid.
    Measured at 2 bits (MSE scales, relative weight error): MobileNetV2's depthwise convs
    0.154 -> 0.074 and 0.116 -> 0.066, the model's mean 0.136 -> 0.110; ResNet18 0.172 -> 0.149."""
    scale = channel_scales(weight, bits, clipping)
    sign = torch.ones_like(scale)
    if not orient:
        return scale, sign
    flat = weight.detach().reshape(weight.shape[0], -1)
    mirrored = channel_scales(-weight, bits, clipping)
    error = (fake_quant_per_channel(flat, scale, bits) - flat).pow(2).sum(1)
    error_mirrored = (fake_quant_per_channel(-flat, mirrored, bits) + flat).pow(2).sum(1)
    flip = error_mirrored < error
    return torch.where(flip, mirrored, scale), torch.where(flip, -sign, sign)


class StackedQuantLayer(nn.Module):
    """K quantized variants of one conv / linear layer (channel-stacked, see the module doc)."""

    def __init__(self, layer: nn.Module, scales: torch.Tensor, bits: Sequence[int], signs: torch.Tensor | None = None):
        super().__init__()
        self.k = len(bits)
        self.is_conv = isinstance(layer, nn.Conv2d)
        if self.is_conv:
            self.conv_args = (layer.stride, layer.padding, layer.dilation, layer.groups * self.k)
        weight = layer.weight.detach()
        bias = layer.bias.detach() if layer.bias is not None else torch.zeros(weight.shape[0], device=weight.device)
        view = (self.k, weight.shape[0]) + (1,) * (weight.dim() - 1)
        self.register_buffer("weight_fp", weight.clone())
        self.register_buffer("bias", bias.repeat(self.k))
        self.register_buffer("scale", scales.reshape(view).clone())
        # per-channel grid orientation (+1: levels -2^(b-1)..2^(b-1)-1; -1: the mirror, 1-2^(b-1)..2^(b-1))
        self.register_buffer("sign", (torch.ones_like(scales) if signs is None else signs.to(scales)).reshape(view))
        levels = torch.tensor([qmax(b) for b in bits], dtype=weight.dtype, device=weight.device)
        self.register_buffer("q_hi", levels.reshape((self.k,) + (1,) * (weight.dim())))
        self.register_buffer("q_lo", -self.q_hi - 1)
        self.bits = list(bits)
        ratio = self.sign * weight.unsqueeze(0) / self.scale
        self.alpha = nn.Parameter(alpha_init(ratio - torch.floor(ratio)))
        self.register_buffer("act_scale", torch.ones(0, device=weight.device))
        self.register_buffer("act_zero", torch.zeros(0, dtype=torch.int32, device=weight.device))
        self.act_levels = 255
        self.act_on = False
        self.mode: Mode = "fp"

    # ----------------------------------------------------------------- weights

    def integer_weight(self, soft: bool = False) -> torch.Tensor:
        """[K, O, ...] integer levels (float dtype): floor + rounding decision, clamped to the bit range
        (of the channel's orientation: computed on sign * w, then mirrored back)."""
        ratio = self.sign * self.weight_fp.unsqueeze(0) / self.scale
        up = rectified_sigmoid(self.alpha) if soft else (self.alpha >= 0).to(ratio.dtype)
        return self.sign * torch.clamp(torch.floor(ratio) + up, self.q_lo, self.q_hi)

    def stacked_weight(self) -> torch.Tensor:
        if self.mode == "fp":
            w = self.weight_fp.unsqueeze(0).expand((self.k,) + self.weight_fp.shape)
        else:
            w = self.integer_weight(soft=self.mode == "soft") * self.scale
        return w.reshape((-1,) + self.weight_fp.shape[1:])

    def round_regulariser(self, beta: float) -> torch.Tensor:
        """AdaRound Eq. 24: sum of 1 - |2 h(alpha) - 1|^beta (pushes every h to 0 or 1)."""
        return (1 - (2 * rectified_sigmoid(self.alpha) - 1).abs().pow(beta)).sum()

    # ----------------------------------------------------------------- activations

    def set_act_ranges(self, lo: torch.Tensor, hi: torch.Tensor, bits: int, channels: int) -> None:
        """Per-variant ranges [K] (containing 0) -> per-channel parameters of the stacked input."""
        self.act_levels = 2**bits - 1
        scale = (hi - lo).clamp_min(1e-8) / self.act_levels
        zero = torch.round(-lo / scale).to(torch.int32)
        self.act_scale = scale.float().repeat_interleave(channels)
        self.act_zero = zero.repeat_interleave(channels)

    def quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        """Per-variant fake quantization of the input; straight-through gradient inside the range.

        On a CPU written out instead of ``torch.fake_quantize_per_channel_affine``, whose CPU kernel
        took ~50 ms per call here (about 30% of a reconstruction step on the embedded model)."""
        if x.is_cuda:  # one fused kernel on a GPU (same arithmetic: x * (1 / scale), round half to even)
            return torch.fake_quantize_per_channel_affine(x, self.act_scale, self.act_zero, 1, 0, self.act_levels)
        shape = (1, -1) + (1,) * (x.dim() - 2)
        scale, zero = self.act_scale.reshape(shape), self.act_zero.reshape(shape).to(x.dtype)
        lo, hi = -zero * scale, (self.act_levels - zero) * scale
        inside = torch.minimum(torch.maximum(x, lo), hi)
        levels = torch.clamp(torch.round(x * (1.0 / scale)) + zero, 0, self.act_levels)
        return inside + ((levels - zero) * scale - inside).detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.act_on and self.act_scale.numel():
            x = self.quantize_input(x)
        w = self.stacked_weight()
        if self.is_conv:
            stride, padding, dilation, groups = self.conv_args
            return F.conv2d(x, w, self.bias, stride, padding, dilation, groups)
        if x.dim() != 2:
            raise StackError("stacked linear layers take [batch, features] inputs only")
        batch = x.shape[0]
        w = w.reshape(self.k, -1, w.shape[-1])
        y = torch.einsum("bki,koi->bko", x.reshape(batch, self.k, -1), w)
        return y.reshape(batch, -1) + self.bias


def stack_model(folded: nn.Module, names: Sequence[str], scales: dict[str, torch.Tensor],
                bits: dict[str, Sequence[int]], signs: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """A copy of the BN-folded ``folded`` with each layer in ``names`` replaced by its K variants.

    ``scales[name]``: [K, O] per-channel weight scales; ``bits[name]``: K bit-widths; ``signs[name]``:
    [K, O] grid orientations (+1 / -1, default +1).
    """
    model = copy.deepcopy(folded).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        layer = getattr(parent, child)
        if not isinstance(layer, QUANTIZABLE):
            raise StackError(f"{name} is not a conv / linear layer")
        setattr(parent, child, StackedQuantLayer(layer, scales[name], bits[name], (signs or {}).get(name)))
    check_stackable(model)
    return model


def check_stackable(model: nn.Module) -> None:
    for name, m in model.named_modules():
        if isinstance(m, QUANTIZABLE):
            raise StackError(f"layer {name} has no bit-width in the allocation")
        if not isinstance(m, CHANNELWISE + (StackedQuantLayer,)) and not list(m.children()) and name:
            raise StackError(f"module {name} ({type(m).__name__}) mixes channels: "
                             "reconstruction supports conv nets with BatchNorm folded")


def stacked_layers(model: nn.Module) -> dict[str, StackedQuantLayer]:
    return {n: m for n, m in model.named_modules() if isinstance(m, StackedQuantLayer)}


def set_mode(model: nn.Module, mode: Mode, act_on: bool) -> None:
    for m in stacked_layers(model).values():
        m.mode, m.act_on = mode, act_on


def stack_inputs(images: torch.Tensor | Sequence[torch.Tensor], k: int) -> torch.Tensor:
    """[B, C, H, W] -> [B, K*C, H, W]: the same images for every variant, or one tensor per variant."""
    if isinstance(images, torch.Tensor):
        return images.repeat(1, k, 1, 1)
    if len(images) != k:
        raise StackError(f"{len(images)} image tensors for {k} variants")
    return torch.cat(list(images), dim=1)


@torch.no_grad()
def top1_per_variant(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, k: int,
                     batch_size: int = 250) -> list[float]:
    """Top-1 (0..1) of each of the K stacked variants on the same (normalized) images."""
    correct = torch.zeros(k, device=images.device)
    for start in range(0, len(images), batch_size):
        x = stack_inputs(images[start:start + batch_size], k)
        logits = model(x).reshape(x.shape[0], k, -1)
        correct += (logits.argmax(-1) == labels[start:start + batch_size, None]).sum(0)
    return (correct / max(len(images), 1)).tolist()

