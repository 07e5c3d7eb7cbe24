"""What each quantizable layer does in its network: block index, role, fan-in.

The layer table the LLM sees (``mpq.features.describe_layers``) and the proxy
contract (``layer.block``, ``layer.role``, ``layer.fan_in``) use these, so a
proxy can treat, say, every attention projection or every MLP output alike.
Both are read from the module path, with one table of patterns per network
family (timm's ViT / DeiT / Swin, torchvision's ResNets and MobileNetV2):
supporting another family is a few table rows, not code.

Roles:
- transformers: ``patch_embed`` (the patchifying conv), ``qkv`` (the fused
  query / key / value projection), ``proj`` (attention output projection),
  ``fc1`` / ``fc2`` (MLP expansion / contraction), ``merge`` (Swin's
  patch-merging reduction), ``head`` (classifier);
- CNNs: ``stem`` (the first conv), ``shortcut`` (ResNet's 1x1 projection
  shortcut), ``depthwise``, ``pointwise`` (1x1), ``conv`` (any other), ``head``.
"""
from __future__ import annotations

import re

from torch import nn

ROLE_PATTERNS: tuple[tuple[str, str], ...] = (
    (r"(^|\.)patch_embed\.proj$", "patch_embed"),
    (r"\.attn\.qkv$", "qkv"),
    (r"\.attn\.proj$", "proj"),
    (r"\.mlp\.fc1$", "fc1"),
    (r"\.mlp\.fc2$", "fc2"),
    (r"\.downsample\.reduction$", "merge"),             # timm Swin PatchMerging
    (r"^(head|head\.fc|fc|classifier(\.\d+)?)$", "head"),
    (r"\.downsample\.0$", "shortcut"),                  # torchvision ResNet
)
"""(regular expression on the module path, role); the first match wins."""

BLOCK_PATTERNS: tuple[str, ...] = (
    r"^blocks\.\d+\.",                  # timm ViT / DeiT: blocks.<i>.
    r"^layers\.\d+\.blocks\.\d+\.",     # timm Swin: layers.<stage>.blocks.<i>.
    r"^layer\d+\.\d+\.",                # torchvision ResNet: layer<stage>.<i>.
    r"^features\.\d+\.",                # torchvision MobileNetV2: features.<i>.
)
"""Module-path prefixes that name one residual block; layers outside any (stem,
Swin's patch merging, head) get block -1."""


def layer_role(name: str, module: nn.Module, index: int) -> str:
    """The role of the layer called ``name`` (``index`` = its forward position)."""
    for pattern, role in ROLE_PATTERNS:
        if re.search(pattern, name):
            return role
    if isinstance(module, nn.Linear):
        return "linear"
    if index == 0:
        return "stem"
    if module.groups > 1 and module.groups == module.in_channels:
        return "depthwise"
    return "pointwise" if tuple(module.kernel_size) == (1, 1) else "conv"


def block_key(name: str) -> str | None:
    """The module-path prefix of the residual block holding ``name``, if any."""
    for pattern in BLOCK_PATTERNS:
        match = re.match(pattern, name)
        if match:
            return match.group(0)
    return None


def block_indices(names: list[str]) -> list[int]:
    """Per layer (in forward order), the 0-based index of its block in forward order, or -1."""
    order: dict[str, int] = {}
    result = []
    for name in names:
        key = block_key(name)
        if key is None:
            result.append(-1)
        else:
            result.append(order.setdefault(key, len(order)))
    return result


def fan_in(module: nn.Module) -> int:
    """Inputs each output unit sums over: in_features, or in_channels / groups x kernel area."""
    if isinstance(module, nn.Linear):
        return int(module.in_features)
    kh, kw = module.kernel_size
    return int(module.in_channels // module.groups * kh * kw)
