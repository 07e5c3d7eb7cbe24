"""Per-layer features on the calibration images: the proxy contract (mpq/README.md).

``extract_features`` folds BatchNorm into the convs (on a copy), runs the
calibration batch once with hooks (inputs / outputs of every conv and linear),
once backward for the gradient of the cross-entropy w.r.t. every weight, and
gives each layer an ``hvp(v)`` that multiplies ``v`` with the Hessian block of
the loss w.r.t. that layer's weight (autograd double-backward on the same
batch; the first-order graph is built on the first call and reused).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from mpq.quant import fold_batchnorm, forward_with_hooks, quantizable_layers
from mpq.roles import block_indices, fan_in, layer_role

__all__ = ["LayerFeatures", "extract_features", "quantizable_layers", "describe_layers"]


@dataclass(eq=False)
class LayerFeatures:
    """Everything a proxy may look at for one quantizable layer (see mpq/README.md)."""

    name: str
    index: int
    depth: int
    num_layers: int
    kind: str                      # conv | depthwise | linear
    weight: torch.Tensor
    bias: torch.Tensor | None
    input: torch.Tensor
    output: torch.Tensor
    grad: torch.Tensor | None
    params: int
    macs: int
    in_channels: int
    out_channels: int
    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    groups: int
    feature_map: tuple[int, int]
    fan_in: int = 0                # inputs per output unit (mpq/roles.py)
    block: int = -1                # residual / transformer block, forward order; -1 = none
    role: str = ""                 # qkv | proj | fc1 | fc2 | patch_embed | merge | head | stem | ...
    _hvp: Callable[[torch.Tensor], torch.Tensor] | None = field(default=None, repr=False)
    _network_hvp: Callable[[list[torch.Tensor]], list[torch.Tensor]] | None = field(default=None, repr=False)

    def hvp(self, v: torch.Tensor) -> torch.Tensor:
        """Hessian (of the calibration loss w.r.t. this weight) times ``v``, shaped like ``weight``."""
        if self._hvp is None:
            raise RuntimeError("features were extracted without gradients: no Hessian available")
        if tuple(v.shape) != tuple(self.weight.shape):
            raise ValueError(f"hvp: v has shape {tuple(v.shape)}, weight has {tuple(self.weight.shape)}")
        return self._hvp(v)

    def network_hvp(self, vs: list[torch.Tensor]) -> list[torch.Tensor]:
        """The whole network's Hessian times ``vs`` (one tensor per layer, shaped like each
        layer's weight, in index order), as per-layer blocks: ``out[l] = sum_k H_lk vs[k]``.

        One double-backward pass for every layer at once (the same on every layer object).
        With i.i.d. Rademacher ``vs``, ``E[(out[l] * vs[l]).sum()] = Tr(H_ll)`` (the cross
        terms have mean zero): every layer's Hutchinson trace from one pass, as PyHessian's
        ``hessian.trace`` does for the whole network (Yao et al., 2020)."""
        if self._network_hvp is None:
            raise RuntimeError("features were extracted without gradients: no Hessian available")
        return self._network_hvp(vs)

    def copy(self) -> "LayerFeatures":
        """A copy whose tensors are clones, so a proxy cannot alter the originals in place."""
        cloned = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for key, value in cloned.items():
            if isinstance(value, torch.Tensor):
                cloned[key] = value.clone()
        return LayerFeatures(**cloned)


def _kind(module: nn.Module) -> str:
    if isinstance(module, nn.Linear):
        return "linear"
    if module.groups > 1 and module.groups == module.in_channels:
        return "depthwise"
    return "conv"


def _pair(value) -> tuple[int, int]:
    return (int(value[0]), int(value[1])) if isinstance(value, tuple) else (int(value), int(value))


def _metadata(module: nn.Module, output: torch.Tensor) -> dict:
    """Shape metadata of one layer; MACs for one image."""
    w = module.weight
    if isinstance(module, nn.Linear):
        rows = output[0].numel() // module.out_features  # tokens per image (1 for a classifier)
        return dict(kind="linear", in_channels=module.in_features, out_channels=module.out_features,
                    kernel_size=(1, 1), stride=(1, 1), groups=1, feature_map=(1, 1),
                    params=w.numel(), macs=rows * w.numel())
    h, wd = int(output.shape[-2]), int(output.shape[-1])
    return dict(kind=_kind(module), in_channels=module.in_channels, out_channels=module.out_channels,
                kernel_size=_pair(module.kernel_size), stride=_pair(module.stride), groups=module.groups,
                feature_map=(h, wd), params=w.numel(), macs=h * wd * w.numel())


def extract_features(model: nn.Module, calib_images: torch.Tensor, calib_labels: torch.Tensor,
                     with_grad: bool = True) -> list[LayerFeatures]:
    """One ``LayerFeatures`` per conv / linear of the BN-folded ``model``, in forward order."""
    folded = fold_batchnorm(model, calib_images[:1])
    layers = quantizable_layers(folded, calib_images[:1])
    for p in folded.parameters():
        p.requires_grad_(False)
    weights = [m.weight for _, m in layers]
    for w in weights:
        w.requires_grad_(with_grad)

    captured: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    hooks = [m.register_forward_hook(_capture(captured, name, len(calib_images))) for name, m in layers]
    logits = forward_with_hooks(folded, calib_images, hooks, grad=with_grad)
    with torch.set_grad_enabled(with_grad):  # also when a caller runs under no_grad
        loss = F.cross_entropy(logits, calib_labels)
    grads = torch.autograd.grad(loss, weights) if with_grad else [None] * len(layers)
    hessian = _HessianBlocks(folded, weights, calib_images, calib_labels) if with_grad else None

    features = []
    blocks = block_indices([name for name, _ in layers])
    for i, ((name, m), g) in enumerate(zip(layers, grads)):
        x, y = captured[name]
        features.append(LayerFeatures(
            name=name, index=i, depth=i, num_layers=len(layers),
            weight=m.weight.detach(), bias=None if m.bias is None else m.bias.detach(),
            input=x, output=y, grad=None if g is None else g.detach(),
            _hvp=None if hessian is None else hessian.product_fn(i),
            _network_hvp=None if hessian is None else hessian.network_product,
            fan_in=fan_in(m), block=blocks[i], role=layer_role(name, m, i), **_metadata(m, y)))
    return features


def _capture(store: dict, name: str, batch: int):
    def hook(_module, inputs, output):
        store.setdefault(name, (_per_image(inputs[0].detach(), batch), _per_image(output.detach(), batch)))
    return hook


def _per_image(x: torch.Tensor, batch: int) -> torch.Tensor:
    """``x`` with the calibration images on its first axis. Windowed attention (Swin)
    runs its linears on ``[images * windows, tokens, C]``; timm partitions windows image
    by image, so the reshape concatenates each image's windows along the token axis."""
    if x.dim() >= 3 and x.shape[0] != batch and x.shape[0] % batch == 0:
        return x.reshape(batch, -1, *x.shape[2:])
    return x


class _HessianBlocks:
    """Hessian-vector products per layer; the gradient graph is built lazily once."""

    def __init__(self, model: nn.Module, weights: list[torch.Tensor], images: torch.Tensor, labels: torch.Tensor):
        self._model, self._weights, self._images, self._labels = model, weights, images, labels
        self._grads: tuple[torch.Tensor, ...] | None = None

    def _gradient_graph(self) -> tuple[torch.Tensor, ...]:
        if self._grads is None:
            # Fused attention kernels (flash / memory-efficient SDPA) have no double
            # backward; the math kernel is plain differentiable ops (transformers only).
            with torch.enable_grad(), sdpa_kernel(SDPBackend.MATH):
                loss = F.cross_entropy(self._model(self._images), self._labels)
                self._grads = torch.autograd.grad(loss, self._weights, create_graph=True)
        return self._grads

    def network_product(self, vs: list[torch.Tensor]) -> list[torch.Tensor]:
        if len(vs) != len(self._weights):
            raise ValueError(f"network_hvp: {len(vs)} tensors for {len(self._weights)} layers")
        for i, (v, w) in enumerate(zip(vs, self._weights)):
            if tuple(v.shape) != tuple(w.shape):
                raise ValueError(f"network_hvp: vs[{i}] has shape {tuple(v.shape)}, weight has {tuple(w.shape)}")
        grads = self._gradient_graph()
        with torch.enable_grad():
            vectors = [v.to(w) for v, w in zip(vs, self._weights)]
            products = torch.autograd.grad(grads, self._weights, grad_outputs=vectors, retain_graph=True)
        return [p.detach() for p in products]

    def product_fn(self, index: int) -> Callable[[torch.Tensor], torch.Tensor]:
        def hvp(v: torch.Tensor) -> torch.Tensor:
            grads = self._gradient_graph()
            w = self._weights[index]
            with torch.enable_grad():
                (hv,) = torch.autograd.grad(grads[index], w, grad_outputs=v.to(w), retain_graph=True)
            return hv.detach()
        return hvp


def describe_layers(layers: list[LayerFeatures]) -> str:
    """A compact table of the layers' metadata, for the LLM prompts.

    Columns: index, module path, kind, weight shape, kernel/stride, output map,
    weights, MACs per image, fan-in, block index (``-`` outside blocks), role."""
    header = (f"{'idx':>3} {'name':<28} {'kind':<9} {'shape':<18} {'k/s':<5} {'fmap':<7} {'params':>9} "
              f"{'MACs':>11} {'fan_in':>6} {'block':>5} role")
    rows = [header]
    for f in layers:
        shape = "x".join(str(s) for s in f.weight.shape)
        ks = "-" if f.kind == "linear" else f"{f.kernel_size[0]}/{f.stride[0]}"
        fmap = f"{f.feature_map[0]}x{f.feature_map[1]}"
        block = "-" if f.block < 0 else str(f.block)
        rows.append(f"{f.index:>3} {f.name[-28:]:<28} {f.kind:<9} {shape:<18} {ks:<5} {fmap:<7} "
                    f"{f.params:>9,} {f.macs:>11,} {f.fan_in:>6} {block:>5} {f.role}")
    total_p, total_m = sum(f.params for f in layers), sum(f.macs for f in layers)
    rows.append(f"{len(layers)} layers, {total_p:,} weights, {total_m:,} MACs per image")
    return "\n".join(rows)
