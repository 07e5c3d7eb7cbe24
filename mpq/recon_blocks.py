"""Which blocks BRECQ reconstructs, and what flows into them (Li et al. 2021, "BRECQ: Pushing the
Limit of Post-Training Quantization by Block Reconstruction").

The structure and data side of ``mpq.reconstruct``, which does the optimisation: the blocks in
forward order (``BLOCK_TYPES``, BRECQ's table of specials), the FP model's output of every block
(the targets), each block's input on the partly quantized model (captured, or run on from the
previous block when it feeds this one directly), and the activation ranges from the FP model.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torchvision.models.mobilenetv2 import InvertedResidual
from torchvision.models.resnet import BasicBlock, Bottleneck
from torchvision.ops.misc import Conv2dNormActivation

from mpq.ptq_stack import StackedQuantLayer, set_mode, stacked_layers

BLOCK_TYPES: tuple[type, ...] = (InvertedResidual, BasicBlock, Bottleneck, Conv2dNormActivation)
"""Modules reconstructed as one block (outermost match wins); add a residual unit type here to support it."""


def find_blocks(model: nn.Module, granularity: str = "block") -> list[tuple[str, nn.Module]]:
    """Reconstruction units in forward (registration) order."""
    if granularity == "layer":
        return list(stacked_layers(model).items())
    blocks: list[tuple[str, nn.Module]] = []

    def walk(module: nn.Module, prefix: str) -> None:
        for name, child in module.named_children():
            full = f"{prefix}{name}"
            if isinstance(child, BLOCK_TYPES + (StackedQuantLayer,)):
                if any(isinstance(m, StackedQuantLayer) for m in child.modules()):
                    blocks.append((full, child))
            else:
                walk(child, full + ".")
    walk(model, "")
    return blocks


class _Captured(Exception):
    """Stops the forward pass once the block of interest has run."""


def calibration_groups(calibs: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Distinct calibration tensors (e.g. one per seed) and, per variant, the index of its own."""
    groups: list[torch.Tensor] = []
    index: list[int] = []
    for calib in calibs:
        found = next((g for g, t in enumerate(groups) if t is calib or torch.equal(t, calib)), None)
        if found is None:
            groups.append(calib)
            found = len(groups) - 1
        index.append(found)
    return groups, torch.tensor(index, device=calibs[0].device)


@torch.no_grad()
def fp_block_outputs(folded: nn.Module, names: list[str], groups: list[torch.Tensor],
                     chunk: int = 256) -> dict[str, torch.Tensor]:
    """The FP model's output of every block, per calibration group: {block: [G, N, ...]} (one pass per group)."""
    outputs: dict[str, list[list[torch.Tensor]]] = {n: [[] for _ in groups] for n in names}
    current = [0]

    def hook(name: str):
        def record(_m, _args, out):
            outputs[name][current[0]].append(out.detach())
        return record

    handles = [folded.get_submodule(n).register_forward_hook(hook(n)) for n in names]
    try:
        for g, images in enumerate(groups):
            current[0] = g
            for s in range(0, images.shape[0], chunk):
                folded(images[s:s + chunk])
    finally:
        for h in handles:
            h.remove()
    return {n: torch.stack([torch.cat(parts) for parts in per_group]) for n, per_group in outputs.items()}


@torch.no_grad()
def chain_links(model: nn.Module, blocks: list[tuple[str, nn.Module]], example: torch.Tensor) -> list[bool]:
    """Per block: is its input exactly the previous block's output (so it can be propagated block by block)?"""
    seen_in: dict[int, int] = {}
    seen_out: dict[int, int] = {}
    keep: list[torch.Tensor] = []

    def hook(i: int):
        def record(_m, args, out):
            seen_in[i], seen_out[i] = id(args[0]), id(out)
            keep.extend((args[0], out))
        return record

    set_mode(model, "fp", act_on=False)
    handles = [b.register_forward_hook(hook(i)) for i, (_, b) in enumerate(blocks)]
    try:
        model(example)
    finally:
        for h in handles:
            h.remove()
    return [i > 0 and seen_in.get(i) == seen_out.get(i - 1) for i in range(len(blocks))]


@torch.no_grad()
def run_chunked(block: nn.Module, x: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    return torch.cat([block(x[s:s + chunk]) for s in range(0, x.shape[0], chunk)])


@torch.no_grad()
def capture(model: nn.Module, block: nn.Module, inputs: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """The block's input on all ``inputs`` with the model quantized (earlier blocks already hard)."""
    pieces: list[torch.Tensor] = []

    def hook(_m, args):
        pieces.append(args[0].detach())
        raise _Captured

    handle = block.register_forward_pre_hook(hook)
    try:
        for s in range(0, inputs.shape[0], chunk):
            try:
                model(inputs[s:s + chunk])
            except _Captured:
                pass
    finally:
        handle.remove()
    return torch.cat(pieces)


@torch.no_grad()
def calibrate_activations(model: nn.Module, inputs: torch.Tensor, bits: int, chunk: int = 256) -> None:
    """Per-variant min / max of every layer's input over the calibration images (FP model)."""
    set_mode(model, "fp", act_on=False)
    layers = stacked_layers(model)
    ranges: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def record(name: str, k: int):
        def hook(_m, args):
            x = args[0]
            x = x.reshape(x.shape[0], k, -1).transpose(0, 1).reshape(k, -1)
            lo, hi = x.amin(1), x.amax(1)
            old = ranges.get(name)
            ranges[name] = (lo, hi) if old is None else (torch.minimum(old[0], lo), torch.maximum(old[1], hi))
        return hook

    handles = [m.register_forward_pre_hook(record(n, m.k)) for n, m in layers.items()]
    try:
        for s in range(0, inputs.shape[0], chunk):
            model(inputs[s:s + chunk])
    finally:
        for h in handles:
            h.remove()
    for name, m in layers.items():
        lo, hi = ranges[name]
        channels = m.weight_fp.shape[1] * (m.conv_args[3] // m.k if m.is_conv else 1)
        m.set_act_ranges(lo.clamp(max=0.0), hi.clamp(min=0.0), bits, channels)

