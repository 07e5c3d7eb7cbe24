"""Training-time augmentation, batched on the device (no data loader, no PIL).

- ``crop_flip``: random crop after zero padding, horizontal flip, Cutout
  (DeVries & Taylor 2017); works on uint8 images.
- ``rand_augment_lite``: a batched RandAugment (Cubuk et al. 2020): each image
  gets ``ops`` operations drawn uniformly from ``RAND_OPS`` (identity, colour
  enhancements, solarize, autocontrast, rotate, shear), at one fixed magnitude
  ``RAND_MAGNITUDE`` (RandAugment's m; as fractions of each op's range below);
  works on float images in [0, 1].
- ``mix_batch``: Mixup (Zhang et al. 2018) or CutMix (Yun et al. 2019), one
  of them per batch with probability 1/2 each, as in DeiT's recipe (Touvron et
  al. 2021, timm ``Mixup`` in batch mode): returns the mixed batch, the partner
  order and the label weight ``lam``.

These are what vision transformers trained from scratch on small data need
(DeiT, and Lee et al. 2021 "Vision Transformer for Small-Size Datasets"); the
CNN recipes use ``crop_flip`` alone.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

RAND_OPS = ("identity", "brightness", "contrast", "color", "solarize", "autocontrast",
            "rotate", "shear_x", "shear_y")
RAND_MAGNITUDE = 0.5
"""Fraction of each op's full range: enhancement factors 1 +- 0.45 (full: +-0.9, i.e.
PIL's 0.1..1.9), rotation +-15 degrees (full 30), shear +-0.15 (full 0.3), solarize
threshold down to 0.75 (full: 0.5)."""


def crop_flip(images: torch.Tensor, flip: bool, pad: int, generator: torch.Generator,
              cutout: int = 0) -> torch.Tensor:
    """Random crop after zero padding (+ horizontal flip, + Cutout), batched on the device."""
    n, _, h, w = images.shape
    dev = images.device
    padded = F.pad(images, (pad, pad, pad, pad))
    dx = torch.randint(0, 2 * pad + 1, (n,), device=dev, generator=generator)
    dy = torch.randint(0, 2 * pad + 1, (n,), device=dev, generator=generator)
    rows = (torch.arange(h, device=dev).view(1, h) + dy.view(n, 1))
    cols = (torch.arange(w, device=dev).view(1, w) + dx.view(n, 1))
    batch_index = torch.arange(n, device=dev).view(n, 1, 1)
    out = padded.permute(0, 2, 3, 1)[batch_index, rows.view(n, h, 1), cols.view(n, 1, w)]
    out = out.permute(0, 3, 1, 2)
    if flip:
        mirrored = torch.rand(n, device=dev, generator=generator) < 0.5
        out = torch.where(mirrored.view(n, 1, 1, 1), out.flip(3), out)
    if cutout:  # the square's centre may fall near the border
        cy = torch.randint(0, h, (n, 1, 1), device=dev, generator=generator)
        cx = torch.randint(0, w, (n, 1, 1), device=dev, generator=generator)
        ys = torch.arange(h, device=dev).view(1, h, 1)
        xs = torch.arange(w, device=dev).view(1, 1, w)
        hole = ((ys - cy).abs() <= cutout // 2) & ((xs - cx).abs() <= cutout // 2)
        out = out.masked_fill(hole.unsqueeze(1), 0)
    return out.contiguous()


def _signed(n: int, scale: float, device, generator) -> torch.Tensor:
    """Per-image magnitudes ``scale`` with a random sign (RandAugment's random negation)."""
    sign = torch.randint(0, 2, (n,), device=device, generator=generator).float() * 2 - 1
    return sign * scale


def _gray(x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 1:
        return x
    return (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])


def _color_ops(x: torch.Tensor, chosen: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    n, dev = x.shape[0], x.device
    factor = (1 + _signed(n, 0.9 * RAND_MAGNITUDE, dev, generator)).view(n, 1, 1, 1)
    gray = _gray(x)
    candidates = {
        "brightness": x * factor,
        "contrast": (x - gray.mean(dim=(1, 2, 3), keepdim=True)) * factor + gray.mean(dim=(1, 2, 3), keepdim=True),
        "color": gray + (x - gray) * factor,
        "solarize": torch.where(x >= 1 - 0.5 * RAND_MAGNITUDE, 1 - x, x),
        "autocontrast": (x - x.amin(dim=(2, 3), keepdim=True))
        / (x.amax(dim=(2, 3), keepdim=True) - x.amin(dim=(2, 3), keepdim=True)).clamp_min(1e-3),
    }
    for name, value in candidates.items():
        x = torch.where(chosen[:, RAND_OPS.index(name)].view(n, 1, 1, 1), value, x)
    return x.clamp(0, 1)


def _affine_ops(x: torch.Tensor, chosen: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Rotation and shears of the chosen images, composed into one resampling."""
    n, dev = x.shape[0], x.device
    angle = _signed(n, math.radians(30 * RAND_MAGNITUDE), dev, generator) * chosen[:, RAND_OPS.index("rotate")]
    shear_x = _signed(n, 0.3 * RAND_MAGNITUDE, dev, generator) * chosen[:, RAND_OPS.index("shear_x")]
    shear_y = _signed(n, 0.3 * RAND_MAGNITUDE, dev, generator) * chosen[:, RAND_OPS.index("shear_y")]
    cos, sin = torch.cos(angle), torch.sin(angle)
    rotation = torch.stack([torch.stack([cos, -sin], 1), torch.stack([sin, cos], 1)], 1)
    shear = torch.stack([torch.stack([torch.ones_like(shear_x), shear_x], 1),
                         torch.stack([shear_y, torch.ones_like(shear_y)], 1)], 1)
    theta = torch.cat([rotation @ shear, torch.zeros(n, 2, 1, device=dev)], dim=2)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def rand_augment_lite(x: torch.Tensor, generator: torch.Generator, ops: int = 2) -> torch.Tensor:
    """``ops`` random operations per image (float images in [0, 1], ``[N, C, H, W]``)."""
    n = x.shape[0]
    draws = torch.randint(0, len(RAND_OPS), (n, ops), device=x.device, generator=generator)
    chosen = torch.zeros(n, len(RAND_OPS), device=x.device)
    chosen.scatter_(1, draws, 1.0)
    chosen = chosen.bool()
    x = _color_ops(x, chosen, generator)
    if chosen[:, RAND_OPS.index("rotate"):].any():
        x = _affine_ops(x, chosen.float(), generator)
    return x


def mix_batch(x: torch.Tensor, mixup_alpha: float, cutmix_alpha: float,
              generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(mixed images, partner index, lam): the loss is lam * CE(y) + (1 - lam) * CE(y[partner])."""
    n, _, h, w = x.shape
    partner = torch.randperm(n, device=x.device, generator=generator)
    use_cutmix = cutmix_alpha > 0 and (mixup_alpha <= 0 or
                                       float(torch.rand((), device=x.device, generator=generator)) < 0.5)
    alpha = cutmix_alpha if use_cutmix else mixup_alpha
    beta = torch.distributions.Beta(torch.tensor(alpha), torch.tensor(alpha))
    lam = float(beta.sample())
    if not use_cutmix:
        return lam * x + (1 - lam) * x[partner], partner, lam
    cut_h, cut_w = int(h * math.sqrt(1 - lam)), int(w * math.sqrt(1 - lam))
    cy, cx = (torch.rand(2, device=x.device, generator=generator) * torch.tensor([h, w], device=x.device)).long().tolist()
    y0, y1 = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, h)
    x0, x1 = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, w)
    mixed = x.clone()
    mixed[:, :, y0:y1, x0:x1] = x[partner][:, :, y0:y1, x0:x1]
    lam = 1 - (y1 - y0) * (x1 - x0) / (h * w)   # the area actually pasted
    return mixed, partner, lam
