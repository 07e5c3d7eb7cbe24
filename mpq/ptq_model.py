"""A quantized network as integers: what the final step produces and what is exported.

``QuantizedNet`` holds, per conv / linear layer of the BN-folded model, the
integer weights (int8 storage, values in the layer's ``bits`` range), the
per-output-channel scales (dequantized weight = ``weight_int * scale``), the
float bias (BN folded in) and the activation quantization of the layer's input
(scale, zero point, bits; per tensor, asymmetric, uint). Weights below 4 bits may use,
per channel, the mirrored grid 1-2^(b-1)..2^(b-1) (reconstruction's orientation choice;
still 2^b levels, still inside INT4). ``to_module()`` gives
a fake-quantized torch model that computes exactly what the integers say (it is
what is evaluated and exported); ``from_quantizer`` turns the round-to-nearest
``mpq.quant.Quantizer`` into the same form, so both final-PTQ modes export alike.

Checkpoint (``save`` / ``load``; plain tensors, ``torch.load(weights_only=True)``)::

    {"format": "tap-mpq-quantized/1",
     "model": "mobilenetv2", "spec": {DatasetSpec fields}, "meta": {...},
     "layers": {name: {"weight_int": int8 [O, ...], "scale": float32 [O],
                       "bias": float32 [O], "bits": int,
                       "act_scale": float | None, "act_zero": int | None, "act_bits": int | None}}}

Loading rebuilds the architecture with ``mpq.models.build_model``, folds its
BatchNorms (the folded model has no other parameters) and sets every layer.
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from mpq.data import DatasetSpec
from mpq.quant import QUANTIZABLE, Quantizer, fold_batchnorm, qmax

FORMAT = "tap-mpq-quantized/1"


@dataclass
class LayerQuant:
    weight_int: torch.Tensor
    scale: torch.Tensor
    bias: torch.Tensor
    bits: int
    act: tuple[float, int, int] | None
    """(scale, zero point, bits) of the layer's input, or None for FP activations."""
    orientation: torch.Tensor | None = None
    """[O] +1 / -1: the grid of each channel (``mpq.ptq_stack``; -1 = mirrored, levels 1-2^(b-1)..2^(b-1)),
    kept in memory to restack reconstructed networks; the integers alone define the weights (not saved)."""

    def dequantized(self) -> torch.Tensor:
        shape = (-1,) + (1,) * (self.weight_int.dim() - 1)
        return self.weight_int.float() * self.scale.reshape(shape)


class FakeQuantLayer(nn.Module):
    """A conv / linear layer with dequantized weights behind its input's fake quantization."""

    def __init__(self, layer: nn.Module, act: tuple[float, int, int] | None):
        super().__init__()
        self.layer = layer
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.act is not None:
            scale, zero, bits = self.act
            if bits < 8:  # the same integers in an 8-bit container: ONNX QuantizeLinear has no narrower
                # range for activations, so the b-bit range becomes a Clip before it (mpq.export)
                x = torch.clamp(x, -zero * scale, (2**bits - 1 - zero) * scale)
            x = torch.fake_quantize_per_tensor_affine(x, scale, zero, 0, max(2**bits - 1, 255))
        return self.layer(x)


@dataclass
class QuantizedNet:
    skeleton: nn.Module
    """The BN-folded float model (only its structure and non-layer modules are used)."""
    layers: dict[str, LayerQuant]
    meta: dict = field(default_factory=dict)

    @property
    def bits(self) -> dict[str, int]:
        return {n: q.bits for n, q in self.layers.items()}

    def to_module(self) -> nn.Module:
        """A fake-quantized copy of the skeleton (eval mode) computing what the integers say."""
        model = copy.deepcopy(self.skeleton).cpu().eval()
        for name, q in self.layers.items():
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            layer = getattr(parent, child)
            with torch.no_grad():
                layer.weight.copy_(q.dequantized())
                if layer.bias is None:
                    layer.bias = nn.Parameter(torch.zeros_like(q.bias))
                layer.bias.copy_(q.bias)
            setattr(parent, child, FakeQuantLayer(layer, q.act))
        return model

    def weight_bytes(self) -> int:
        """Bytes of the packed integer weights (bits per weight, rounded up per layer) and their scales."""
        return sum((q.weight_int.numel() * q.bits + 7) // 8 + 4 * q.scale.numel() for q in self.layers.values())

    def save(self, path: str | Path, model: str, spec: DatasetSpec) -> Path:
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        layers = {n: {"weight_int": q.weight_int, "scale": q.scale, "bias": q.bias, "bits": q.bits,
                      "act_scale": q.act[0] if q.act else None, "act_zero": q.act[1] if q.act else None,
                      "act_bits": q.act[2] if q.act else None} for n, q in self.layers.items()}
        torch.save({"format": FORMAT, "model": model, "spec": asdict(spec), "meta": self.meta,
                    "layers": layers}, out)
        return out


def load_quantized(path: str | Path) -> tuple[QuantizedNet, str, DatasetSpec]:
    """A checkpoint written by ``QuantizedNet.save``: the network, its model name and data spec."""
    from mpq.models import build_model

    data = torch.load(path, map_location="cpu", weights_only=True)
    if data.get("format") != FORMAT:
        raise ValueError(f"{path} is not a {FORMAT} checkpoint")
    spec = DatasetSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in data["spec"].items()})
    example = torch.zeros(1, spec.in_channels, spec.image_size, spec.image_size)
    skeleton = fold_batchnorm(build_model(data["model"], spec), example)
    layers = {n: LayerQuant(weight_int=d["weight_int"], scale=d["scale"], bias=d["bias"], bits=int(d["bits"]),
                            act=None if d["act_scale"] is None else
                            (float(d["act_scale"]), int(d["act_zero"]), int(d["act_bits"])))
              for n, d in data["layers"].items()}
    unknown = set(layers) - {n for n, m in skeleton.named_modules() if isinstance(m, QUANTIZABLE)}
    if unknown:
        raise ValueError(f"{path}: layers {', '.join(sorted(unknown)[:3])} are not in {data['model']}")
    return QuantizedNet(skeleton=skeleton, layers=layers, meta=data.get("meta", {})), data["model"], spec


def from_quantizer(quantizer: Quantizer, bits: dict[str, int]) -> QuantizedNet:
    """The round-to-nearest model of ``quantizer.apply(bits)`` as integers (bias correction included)."""
    bits = quantizer.effective_bits(bits)
    act_bits = quantizer.config.act_bits
    layers = {}
    for name in quantizer.names:
        b = bits[name]
        weight, bias = quantizer.quantized(name, b)
        scale = quantizer.scales(name, b)
        shape = (-1,) + (1,) * (weight.dim() - 1)
        integer = torch.clamp(torch.round(weight / scale.reshape(shape)), -qmax(b) - 1, qmax(b))
        act = None
        if act_bits is not None:
            lo, hi = quantizer.act_ranges[name]
            act = activation_params(lo, hi, act_bits)
        layers[name] = LayerQuant(weight_int=integer.to(torch.int8).cpu(), scale=scale.float().cpu(),
                                  bias=bias.float().cpu(), bits=b, act=act)
    quantizer.apply({}, act_quant=False)  # the skeleton must hold FP weights; apply() again to use it
    return QuantizedNet(skeleton=copy.deepcopy(quantizer.model), layers=layers)


def activation_params(lo: float, hi: float, bits: int) -> tuple[float, int, int]:
    """(scale, zero point, bits) exactly as ``mpq.quant.fake_quant_activation`` computes them."""
    levels = 2**bits - 1
    scale = max(hi - lo, 1e-8) / levels
    return scale, round(-lo / scale), bits

