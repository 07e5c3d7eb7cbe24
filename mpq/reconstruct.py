"""Block reconstruction of the final quantized model (BRECQ with AdaRound rounding).

    nets, stats = reconstruct_many(model, [Variant(bits, calib_images), ...], ReconConfig())

Method (Li et al. 2021, "BRECQ: Pushing the Limit of Post-Training Quantization
by Block Reconstruction"; Nagel et al. 2020, "AdaRound"):

- BatchNorm folded into the convs (``mpq.quant.fold_batchnorm``), per-channel
  weight scales (``mpq.quant.channel_scales``, MSE clipping below 8 bits by
  default) on a zero-containing grid whose orientation each channel of a layer
  of at most 3 bits chooses (``mpq.ptq_stack.grid_of``), activations ``act_bits`` per tensor on the input of every
  layer with ranges from the FP model on the calibration images.
- Blocks in forward order (``mpq.recon_blocks``, which also gives each block its
  input and FP target): residual units (``BLOCK_TYPES``, BRECQ's table of
  specials) and conv+activation units are one block each; any layer outside
  them is a block of its own. ``granularity="layer"`` makes every layer a block
  (plain AdaRound, the layer-wise anchor of the issue).
- Per block, the rounding variables of its layers minimise
  ``||block_q(x_q) - block_fp(x_fp)||^2 + lambda * sum(1 - |2 h(alpha) - 1|^beta)``
  where ``x_q`` is the block input of the model whose earlier blocks are already
  quantized (BRECQ's asymmetric reconstruction) and the target is the FP
  model's block output. Adam on alpha, lambda = 0.01, beta annealed linearly
  from 20 to 2 after a warm-up of 20% of the iterations without the
  regulariser (BRECQ's ``LinearTempDecay`` and defaults). After a block, its
  rounding is made hard (alpha >= 0 rounds up).
- Many allocations (and calibration seeds) are reconstructed at once, stacked
  along the channels (``mpq.ptq_stack``): each variant has its own bits, images,
  scales and rounding, and its losses touch only its own variables.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from typing import Callable, Literal, Sequence

import torch
from torch import nn

from mpq.ptq_model import LayerQuant, QuantizedNet
from mpq.ptq_stack import StackedQuantLayer, grid_of, set_mode, stack_inputs, stack_model, stacked_layers
from mpq.quant import Clipping, fold_batchnorm, quantizable_layers
from mpq.recon_blocks import (
    calibrate_activations,
    calibration_groups,
    capture,
    chain_links,
    find_blocks,
    fp_block_outputs,
    run_chunked,
)

DEFAULT_ITERS = 600
"""Adam steps per block unless told otherwise: with lr 1e-2 and lambda 0.1 (below) every accuracy target
of issue 15 was met at 597 steps on MobileNetV2 and 1,209 on ResNet18, and ResNet18 reached 90.2-91.2%
at 310 (benchmarks/results/reconstruction_summary.md, experiment/heldout.json); 2,000 tripled the
final step's time for nothing measurable."""


class ReconstructionError(ValueError):
    """Inputs that cannot be reconstructed (bits missing, images of different sizes); one line for the user."""


@dataclass(frozen=True)
class ReconConfig:
    """How the final model is reconstructed (the CLI's --recon-iters etc. end up here)."""

    iters: int = DEFAULT_ITERS
    """Adam steps per block (BRECQ uses 20,000 on ImageNet at lr 1e-3)."""
    batch_size: int = 32
    """Calibration images per step (BRECQ: 32)."""
    lr: float = 1e-2
    """Adam learning rate of the rounding variables. BRECQ uses 1e-3 over 20,000 steps; Adam moves
    alpha by about lr per step, and a rounding is decided only once |alpha| passes ~2.4 (where the
    rectified sigmoid reaches 0 or 1), so at the few hundred steps a GPU budget allows, 1e-3 leaves the
    rounding where it started (ResNet18 W2, 200 steps: 94% undecided, block error 0.149 vs 0.209 for
    round-to-nearest; 1e-2: 0.048)."""
    reg_weight: float = 0.1
    """lambda of the rounding regulariser (AdaRound / BRECQ: 0.01 over 20,000 steps). In a few hundred
    steps 0.01 leaves many roundings undecided and the hard rounding far from the soft one (CPU,
    cifar10-mini, W2, 128 images: MobileNetV2 features.1 after 600 steps hard 0.94 / soft 0.03 relative
    error, 32% undecided; at 0.1: 0.52 / 0.05, 15%; features.2 0.19 -> 0.11; ResNet18 layer1.0 at
    200 steps 0.030 -> 0.024, layer2.0 0.129 vs 0.132)."""
    beta_start: float = 20.0
    beta_end: float = 2.0
    warmup: float = 0.2
    """Fraction of the iterations without the regulariser (BRECQ: 0.2)."""
    act_bits: int | None = 8
    """Activation bits (per tensor, input of every layer); None = FP activations."""
    clipping: Clipping = "mse"
    """Initial per-channel scale below 8 bits (``mpq.quant.channel_scales``); 8 bits use min-max."""
    orient_bits: int = 3
    """Layers with at most this many bits choose, per channel, the orientation of their grid
    (``mpq.ptq_stack.grid_of``); 3 keeps every level inside INT4 for the ONNX export; 0 turns it off."""
    granularity: Literal["block", "layer"] = "block"
    skip_bits: int = 8
    """Blocks whose layers all have at least this many bits in every variant keep round-to-nearest."""
    seed: int = 0
    """Seed of the mini-batch sampling."""
    time_budget_s: float | None = None
    """If set, fewer steps than ``iters`` (at least ``min_iters``) so that the optimisation fits this
    many seconds, from timed steps of every block before it starts (``step_seconds``)."""
    min_iters: int = 200

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Variant:
    """One model to reconstruct: its allocation and its (normalized) calibration images."""

    bits: dict[str, int]
    calib: torch.Tensor


@dataclass(frozen=True)
class ReconStats:
    seconds: float
    blocks: int
    blocks_optimized: int
    variants: int
    iters: int
    calib_images: int
    step_s: float | None = None
    """Timed seconds of one step of every block (when the iterations were fitted to a time budget)."""


Progress = Callable[[int, int, str], None]


def reconstruct(model: nn.Module, bits: dict[str, int], calib: torch.Tensor,
                config: ReconConfig = ReconConfig(), progress: Progress | None = None
                ) -> tuple[QuantizedNet, ReconStats]:
    """One allocation: the reconstructed quantized network and what it cost."""
    nets, stats = reconstruct_many(model, [Variant(bits, calib)], config, progress)
    return nets[0], stats


def reconstruct_many(model: nn.Module, variants: Sequence[Variant], config: ReconConfig = ReconConfig(),
                     progress: Progress | None = None) -> tuple[list[QuantizedNet], ReconStats]:
    """Reconstruct every variant (stacked, see the module doc); the networks come back in order."""
    start = time.perf_counter()
    folded, stacked, inputs = _prepare(model, variants, config)
    blocks = find_blocks(stacked, config.granularity)
    groups, group_of = calibration_groups([v.calib for v in variants])
    targets = fp_block_outputs(folded, [name for name, _ in blocks], groups)
    chained = chain_links(stacked, blocks, inputs[:1])
    step_s = step_seconds(stacked, blocks, inputs[:1], config) if config.time_budget_s is not None else None
    if step_s is not None:
        config = replace(config, iters=max(config.min_iters, min(config.iters, int(config.time_budget_s / step_s))))
    generator = torch.Generator().manual_seed(config.seed)
    optimized, block_input = 0, None
    set_mode(stacked, "hard", act_on=config.act_bits is not None)
    for i, (block_name, block) in enumerate(blocks):
        if block_input is not None and chained[i]:  # input = previous block's output: run that block only
            block_input = run_chunked(blocks[i - 1][1], block_input)
        else:
            block_input = capture(stacked, block, inputs)
        layers = [m for m in block.modules() if isinstance(m, StackedQuantLayer)]
        target = targets.pop(block_name)
        if all(b >= config.skip_bits for m in layers for b in m.bits):
            continue
        optimize_block(block, layers, block_input, target, group_of, config, generator)
        optimized += 1
        if progress:
            progress(i + 1, len(blocks), block_name)
    set_mode(stacked, "hard", act_on=config.act_bits is not None)
    nets = [extract_variant(stacked, folded, k, config.act_bits) for k in range(len(variants))]
    stats = ReconStats(seconds=time.perf_counter() - start, blocks=len(blocks), blocks_optimized=optimized,
                       variants=len(variants), iters=config.iters, calib_images=int(inputs.shape[0]), step_s=step_s)
    return nets, stats


def estimate_seconds(model: nn.Module, variants: Sequence[Variant], config: ReconConfig) -> dict:
    """What reconstructing ``variants`` would cost, from timed steps (no optimisation is run):
    {"setup_s": measured, "step_s": one step of every block, "estimated_s": setup_s + iters x step_s}."""
    start = time.perf_counter()
    _, stacked, inputs = _prepare(model, variants, config)
    _sync(inputs.device)
    setup_s = time.perf_counter() - start
    step_s = step_seconds(stacked, find_blocks(stacked, config.granularity), inputs[:1], config)
    return {"setup_s": setup_s, "step_s": step_s, "iters": config.iters,
            "estimated_s": setup_s + step_s * config.iters}


def _prepare(model: nn.Module, variants: Sequence[Variant], config: ReconConfig
             ) -> tuple[nn.Module, nn.Module, torch.Tensor]:
    """(BN-folded FP model, stacked variants with calibrated activations, stacked calibration images)."""
    if not variants:
        raise ReconstructionError("nothing to reconstruct: no variants")
    calib = variants[0].calib
    if any(v.calib.shape != calib.shape for v in variants):
        raise ReconstructionError("every variant needs calibration images of the same shape")
    folded = fold_batchnorm(model.to(calib.device), calib[:1])
    names = [n for n, _ in quantizable_layers(folded, calib[:1])]
    for v in variants:
        missing = sorted(set(names) - set(v.bits))
        if missing:
            raise ReconstructionError(f"the allocation has no bits for {', '.join(missing[:3])}")
    layer_bits = {n: [int(v.bits[n]) for v in variants] for n in names}
    grids = {n: _grids(folded.get_submodule(n).weight, layer_bits[n], config) for n in names}
    stacked = stack_model(folded, names, {n: g[0] for n, g in grids.items()}, layer_bits,
                          {n: g[1] for n, g in grids.items()})
    inputs = stack_inputs([v.calib for v in variants], len(variants))
    if config.act_bits is not None:
        calibrate_activations(stacked, inputs, config.act_bits)
    return folded, stacked, inputs


def _grids(weight: torch.Tensor, bits: list[int], config: ReconConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """([K, O] per-channel scales, [K, O] grid orientations), computed once per distinct bit-width."""
    per_bits = {b: grid_of(weight, b, config.clipping if b < 8 else "minmax", b <= config.orient_bits)
                for b in set(bits)}
    return torch.stack([per_bits[b][0] for b in bits]), torch.stack([per_bits[b][1] for b in bits])


def step_seconds(model: nn.Module, blocks: list[tuple[str, nn.Module]], example: torch.Tensor,
                 cfg: ReconConfig, repeats: int = 3) -> float:
    """Seconds of one optimisation step of every block that will be optimised (summed), timed on
    random inputs of the right shapes; +15% for the optimizer step."""
    shapes: dict[int, torch.Size] = {}
    def record(i: int):
        def hook(_m, args):
            shapes.setdefault(i, args[0].shape)  # returns None: the input is left as it is
        return hook

    handles = [b.register_forward_pre_hook(record(i)) for i, (_, b) in enumerate(blocks)]
    set_mode(model, "hard", act_on=cfg.act_bits is not None)
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in handles:
            h.remove()
    total = 0.0
    for i, (_, block) in enumerate(blocks):
        layers = [m for m in block.modules() if isinstance(m, StackedQuantLayer)]
        if all(b >= cfg.skip_bits for m in layers for b in m.bits):
            continue
        x = torch.randn((cfg.batch_size,) + tuple(shapes[i][1:]), device=example.device)
        for m in layers:
            m.mode = "soft"
            m.alpha.requires_grad_(True)
        for r in range(repeats + 1):
            if r == 1:
                _sync(x.device)
                begin = time.perf_counter()
            loss = block(x).pow(2).mean() + sum(m.round_regulariser(2.0) for m in layers)
            loss.backward()
        _sync(x.device)
        total += (time.perf_counter() - begin) / repeats
        for m in layers:
            m.alpha.grad = None
            m.alpha.requires_grad_(False)
            m.mode = "hard"
    return max(total * 1.15, 1e-6)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)



def optimize_block(block: nn.Module, layers: list[StackedQuantLayer], x: torch.Tensor, target: torch.Tensor,
                   group_of: torch.Tensor, cfg: ReconConfig, generator: torch.Generator) -> None:
    """AdaRound's objective on one block (see the module doc); its rounding is hard afterwards.

    ``x``: stacked quantized input [N, K*C, ...]; ``target``: FP output per calibration group
    [G, N, ...]; ``group_of``: [K] group of each variant."""
    for m in layers:
        m.mode = "soft"
        m.alpha.requires_grad_(True)
    optimizer = torch.optim.Adam([m.alpha for m in layers], lr=cfg.lr)
    batches = torch.randint(x.shape[0], (cfg.iters, cfg.batch_size), generator=generator).to(x.device)
    warm = int(cfg.warmup * cfg.iters)
    with torch.enable_grad():
        for it in range(cfg.iters):
            idx = batches[it]
            loss = block_loss(block(x[idx]), target[:, idx], group_of)
            if it >= warm:
                beta = cfg.beta_end + (cfg.beta_start - cfg.beta_end) * (1 - (it - warm) / max(cfg.iters - warm, 1))
                loss = loss + cfg.reg_weight * sum(m.round_regulariser(beta) for m in layers)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    for m in layers:
        m.alpha.requires_grad_(False)
        m.mode = "hard"


def block_loss(out: torch.Tensor, target: torch.Tensor, group_of: torch.Tensor) -> torch.Tensor:
    """Reconstruction error, summed over variants: per variant BRECQ's ``lp_loss`` (p=2), the squared
    error summed over the channels and averaged over the batch and the spatial positions.

    The average over positions matters: summed over them as well (an earlier version), the error of a
    32x32 CIFAR block is 1,024 times larger against the rounding regulariser than BRECQ's, lambda = 0.01
    no longer forces the rounding to 0 / 1, and the hard rounding taken at the end differs from the soft
    one that was optimised (ResNet18 W2, first block, 200 steps at lr 1e-2: relative error soft 0.036,
    hard 0.168, round-to-nearest 0.209; averaged: soft 0.039, hard 0.048).

    ``out``: [B, K*C, ...] stacked block output; ``target``: [G, B, C, ...] FP output per calibration
    group; ``group_of``: [K] group of each variant."""
    batch, k = out.shape[0], len(group_of)
    out = out.reshape(batch, k, target.shape[2], -1)  # [B, K, C, positions]
    want = target.reshape(target.shape[0], batch, target.shape[2], -1).index_select(0, group_of).transpose(0, 1)
    return (out - want).pow(2).sum(2).mean((0, 2)).sum()


def extract_variant(stacked: nn.Module, folded: nn.Module, k: int, act_bits: int | None) -> QuantizedNet:
    """Variant ``k`` as integer weights, scales and activation parameters."""
    layers = {}
    for name, m in stacked_layers(stacked).items():
        out_channels = m.weight_fp.shape[0]
        act = None
        if act_bits is not None and m.act_scale.numel():
            channels = m.act_scale.numel() // m.k
            act = (float(m.act_scale[k * channels]), int(m.act_zero[k * channels]), act_bits)
        layers[name] = LayerQuant(
            weight_int=m.integer_weight()[k].detach().to(torch.int8).cpu(),
            scale=m.scale[k].reshape(-1).detach().float().cpu(),
            bias=m.bias[k * out_channels:(k + 1) * out_channels].detach().float().cpu(),
            bits=m.bits[k], act=act, orientation=m.sign[k].reshape(-1).detach().float().cpu())
    return QuantizedNet(skeleton=folded, layers=layers)
