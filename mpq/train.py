"""Train a base model: the recipes behind the committed checkpoints.

    python -m mpq.train --model resnet18 --dataset cifar10 --data-root DIR --epochs 40
    python -m mpq.train --model vit --dataset cifar10 --data-root DIR --time-budget-s 300

Each model family has a recipe (``RECIPES``; ``--recipe`` picks another, any
flag overrides one field):

- ``cnn`` (ResNets, MobileNetV2): SGD (Nesterov, momentum 0.9, weight decay
  5e-4), one-cycle learning rate, label smoothing 0.1, random crop (+ flip for
  natural images, + optional Cutout).
- ``transformer`` (ViT, DeiT, Swin from scratch): DeiT's recipe scaled to small
  data (Touvron et al. 2021; Lee et al. 2021): AdamW (weight decay 0.05, none on
  norms, biases, position embeddings and relative-position tables), warm-up +
  cosine, label smoothing 0.1, crop + flip, RandAugment-lite (2 ops), Mixup 0.8 /
  CutMix 1.0, gradient clipping at norm 1. Transformers lack the convolution's
  locality prior, so without this augmentation they overfit CIFAR-10's 45,000
  images in a few epochs.

Augmentation runs batched on the device (mpq/augment.py); bf16 autocast and
channels-last on a GPU; the whole training split lives on the device, so no
data loader bottleneck.

``--time-budget-s`` makes the schedule time-aware: schedule progress is
max(step fraction, elapsed-time fraction), so the run anneals fully and ends
within the budget even on a slower machine (the epochs actually run are recorded).

Under ``torchrun --nproc-per-node N`` it trains data-parallel on N GPUs
(mpq/distributed.py); the recipe, global batch included, is unchanged.
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from mpq.augment import crop_flip, mix_batch, rand_augment_lite
from mpq.data import DataError, ImageSet, load_splits
from mpq.distributed import Ranks, Schedule
from mpq.models import MODEL_NAMES, ModelError, build_model, checkpoint_path, load_model, save_checkpoint
from mpq.quant import evaluate

SUBSET_SIZE = 1000
"""The fixed test subset (first images of the test split) whose accuracy is
recorded so a CPU test can re-check a checkpoint quickly."""

augment = crop_flip  # the CNN recipe's augmentation, under its former name


@dataclass(frozen=True)
class Recipe:
    """How one family of models is trained: the defaults of ``TrainConfig``."""

    optimizer: str = "sgd"
    """``sgd`` (Nesterov, momentum 0.9) or ``adamw`` (betas 0.9, 0.999)."""
    lr: float = 0.2
    """Peak learning rate."""
    weight_decay: float = 5e-4
    warmup: float = 0.15
    """Fraction of the schedule spent warming up linearly from lr / 10 (then cosine to 0)."""
    label_smoothing: float = 0.1
    cutout: int = 0
    """Side of a square zeroed at a random place in each training image (0 = off)."""
    rand_augment: int = 0
    """RandAugment-lite operations per image (0 = off)."""
    mixup: float = 0.0
    """Mixup's Beta(alpha, alpha) (0 = off); with CutMix on too, one of the two per batch."""
    cutmix: float = 0.0
    """CutMix's Beta(alpha, alpha) (0 = off)."""
    grad_clip: float = 0.0
    """Clip the gradient's global norm to this (0 = off)."""
    batch_size: int = 512
    """The global batch: under ``torchrun`` each of N ranks takes 1/N of it."""
    epochs: int = 40


RECIPES: dict[str, Recipe] = {
    "cnn": Recipe(),
    "transformer": Recipe(optimizer="adamw", lr=1e-3, weight_decay=0.05, warmup=0.1, rand_augment=2,
                          mixup=0.8, cutmix=1.0, grad_clip=1.0, epochs=200),
}
MODEL_RECIPES = {"vit": "transformer", "deit": "transformer", "swin": "transformer"}
"""Recipe of each model (others: ``cnn``)."""


@dataclass(frozen=True, kw_only=True)
class TrainConfig(Recipe):
    """One training run: a recipe's fields (possibly overridden) plus what and where."""

    model: str
    dataset: str = "embedded"
    data_root: str | None = None
    recipe: str = "cnn"
    time_budget_s: float | None = None
    seed: int = 0
    device: str = "cuda" if torch.cuda.is_available() else "cpu"
    out: str | None = None
    log_every: int = 10
    """Log the search-split top-1 every this many epochs (0 = only at the end)."""
    compile: bool = False
    """Train through ``torch.compile`` (GPU only): small transformers are launch-bound in eager
    mode. If compiling fails, training goes on eagerly (logged)."""


def one_cycle_lr(progress: float, peak: float, warm: float = 0.15) -> float:
    """Linear warm-up from peak / 10 over the first ``warm`` of the schedule, then cosine decay to ~0."""
    if progress < warm:
        return peak * (0.1 + 0.9 * progress / warm)
    return peak * 0.5 * (1 + math.cos(math.pi * min(1.0, (progress - warm) / (1 - warm))))


def evaluate_top1(model: torch.nn.Module, images: ImageSet, device: str, batch_size: int = 1000) -> float:
    """Top-1 of ``model`` on an image set (the quantizer's batched evaluation)."""
    return evaluate(model, images.images, images.labels, device, batch_size,
                    mean=images.spec.mean, std=images.spec.std).top1


def _no_decay_names(model: torch.nn.Module) -> set[str]:
    """Parameters kept out of weight decay: norms and biases (1-d), and what timm's models
    name in ``no_weight_decay()`` (position embeddings, class token, relative-position tables)."""
    named = {n for n, p in model.named_parameters() if p.ndim <= 1}
    listed = model.no_weight_decay() if hasattr(model, "no_weight_decay") else set()
    keywords = tuple(listed) + ("relative_position_bias_table",)
    return named | {n for n, _ in model.named_parameters() if any(k in n for k in keywords)}


OPTIMIZERS = {
    "sgd": lambda groups, lr: torch.optim.SGD(groups, lr=lr, momentum=0.9, nesterov=True),
    "adamw": lambda groups, lr: torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999)),
}


def make_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    exempt = _no_decay_names(model)
    decay = [p for n, p in model.named_parameters() if n not in exempt]
    no_decay = [p for n, p in model.named_parameters() if n in exempt]
    return OPTIMIZERS[config.optimizer]([{"params": decay, "weight_decay": config.weight_decay},
                                         {"params": no_decay, "weight_decay": 0.0}], config.lr)


def training_batch(images_uint8: torch.Tensor, config: TrainConfig, spec, generator: torch.Generator) -> torch.Tensor:
    """Augmented, normalized float batch (crop + flip [+ Cutout] [+ RandAugment-lite])."""
    natural = spec.in_channels == 3
    x = crop_flip(images_uint8, flip=natural, pad=4 if natural else 2, generator=generator,
                  cutout=config.cutout).float() / 255
    if config.rand_augment:
        x = rand_augment_lite(x, generator, config.rand_augment)
    mean = torch.tensor(spec.mean, device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(spec.std, device=x.device).view(1, -1, 1, 1)
    return (x - mean) / std


def training_loss(model, x: torch.Tensor, y: torch.Tensor, config: TrainConfig,
                  generator: torch.Generator) -> torch.Tensor:
    """Cross-entropy with label smoothing; with Mixup / CutMix, the lam-weighted pair of losses."""
    if config.mixup > 0 or config.cutmix > 0:
        x, partner, lam = mix_batch(x, config.mixup, config.cutmix, generator)
        logits = model(x)
        return (lam * F.cross_entropy(logits, y, label_smoothing=config.label_smoothing)
                + (1 - lam) * F.cross_entropy(logits, y[partner], label_smoothing=config.label_smoothing))
    return F.cross_entropy(model(x), y, label_smoothing=config.label_smoothing)


def train_step(forward, model, optimizer, x: torch.Tensor, y: torch.Tensor, config: TrainConfig,
               generator: torch.Generator) -> torch.Tensor:
    """One optimizer step (bf16 autocast on a GPU); ``forward`` is ``model`` or its compiled form."""
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=x.is_cuda):
        loss = training_loss(forward, x, y, config, generator)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if config.grad_clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
    optimizer.step()
    return loss


def train(config: TrainConfig, log=print) -> dict:
    """Train ``config.model``; under ``torchrun`` one rank per GPU (mpq/distributed.py)."""
    ranks = Ranks.from_env()
    torch.manual_seed(config.seed)
    config = replace(config, device=ranks.start(config.device))
    try:
        return _train(config, ranks, log if ranks.is_main else (lambda line: None))
    finally:
        ranks.finish()


def _train(config: TrainConfig, ranks: Ranks, log) -> dict:
    device = config.device
    splits = load_splits(config.dataset, config.data_root, seed=0)
    model = build_model(config.model, splits.spec).to(device)
    on_gpu = device.startswith("cuda")
    if on_gpu:
        model = model.to(memory_format=torch.channels_last)
        torch.backends.cudnn.benchmark = True
    train_x, train_y = splits.train.images.to(device), splits.train.labels.to(device)
    optimizer = make_optimizer(model, config)
    steps_per_epoch = math.ceil(len(train_y) / config.batch_size)
    schedule = Schedule(steps_per_epoch * config.epochs, config.time_budget_s, ranks, device)
    # one permutation for all ranks (each takes its slice), augmentation drawn per rank
    order_generator = torch.Generator(device=device).manual_seed(config.seed)
    generator = torch.Generator(device=device).manual_seed(config.seed + 1 + ranks.rank)
    # the wrapped / compiled module shares the parameters; evaluation and saving use the plain one
    trained = ranks.wrap(model)
    forward = torch.compile(trained, dynamic=False) if config.compile and on_gpu else trained
    step, epochs_run, progress = 0, 0, 0.0
    while progress < 1.0:
        model.train()
        order = torch.randperm(len(train_y), device=device, generator=order_generator)
        for i in range(steps_per_epoch):
            progress = schedule.progress(step)
            if progress >= 1.0:
                break
            index = ranks.batch_slice(order, i, config.batch_size)
            x = training_batch(train_x[index], config, splits.spec, generator)
            if on_gpu:
                x = x.contiguous(memory_format=torch.channels_last)
            for group in optimizer.param_groups:
                group["lr"] = one_cycle_lr(progress, config.lr, config.warmup)
            loss, forward = _guarded_step(forward, trained, model, optimizer, x, train_y[index], config,
                                          generator, log)
            step += 1
        else:
            epochs_run += 1
            if ranks.is_main:
                _log_epoch(config, model, splits, epochs_run, step, schedule, progress, loss, log)
            continue
        break
    train_seconds = time.time() - schedule.start
    meta = {}
    if ranks.is_main:
        meta = _save_and_report(config, model.float().to(memory_format=torch.contiguous_format),
                                splits, train_seconds, epochs_run, step, log, ranks.world)
    ranks.barrier()
    return meta


def _guarded_step(forward, trained, model, optimizer, x, y, config, generator, log):
    """One step through ``forward``; torch.compile fails in many ways, and then the run goes on
    eagerly (through ``trained``, the plain or DDP-wrapped module). Returns (loss, the forward used)."""
    try:
        return train_step(forward, model, optimizer, x, y, config, generator), forward
    except Exception as error:
        if forward is trained:
            raise
        log(f"torch.compile failed ({type(error).__name__}: {str(error)[:200]}); training eagerly")
        return train_step(trained, model, optimizer, x, y, config, generator), trained


def _log_epoch(config, model, splits, epochs_run, step, schedule, progress, loss, log) -> None:
    line = (f"[{config.model}/{config.dataset}] epoch {epochs_run} step {step}/{schedule.total_steps} "
            f"progress {progress:.2f} loss {loss.item():.3f} {time.time() - schedule.start:.0f}s")
    if config.log_every and epochs_run % config.log_every == 0:
        line += f" val_top1 {evaluate_top1(model, splits.val, config.device):.4f}"
    log(line)


def _save_and_report(config, model, splits, train_seconds, epochs_run, steps, log, gpus: int = 1) -> dict:
    out = Path(config.out) if config.out else checkpoint_path(config.model, config.dataset)
    meta = {
        "model": config.model, "dataset": config.dataset,
        "params": sum(p.numel() for p in model.parameters()),
        "epochs": epochs_run, "steps": steps, "train_seconds": round(train_seconds, 1), "processes": gpus,
        "device": torch.cuda.get_device_name() if config.device.startswith("cuda") else platform.processor() or "cpu",
        "torch": str(torch.__version__), "recipe": asdict(config) | {"out": None, "data_root": None},
    }
    save_checkpoint(model, out, meta)
    # Accuracy is measured on the saved (fp16) weights, exactly what users load.
    reloaded = load_model(config.model, splits.spec, str(out)).to(config.device)
    meta["top1"] = round(evaluate_top1(reloaded, splits.test, config.device), 4)
    meta["top1_val"] = round(evaluate_top1(reloaded, splits.val, config.device), 4)
    meta["top1_test_subset"] = {"n": SUBSET_SIZE,
                                "top1": round(evaluate_top1(reloaded, splits.test.head(SUBSET_SIZE),
                                                            config.device), 4)}
    save_checkpoint(reloaded, out, meta)
    log(json.dumps({k: meta[k] for k in ("model", "dataset", "top1", "top1_val", "epochs", "train_seconds")}))
    return meta


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line and exit code 2 (argparse would print the usage too)
        self.exit(2, f"error: {message}\n")


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    parser = _Parser(prog="python -m mpq.train", description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help=f"one of {', '.join(MODEL_NAMES)}")
    parser.add_argument("--dataset", default="embedded")
    parser.add_argument("--data-root")
    parser.add_argument("--recipe", choices=sorted(RECIPES),
                        help="training recipe (default: the model's, see MODEL_RECIPES)")
    for field in fields(Recipe):  # every recipe field can be overridden; unset = the recipe's value
        parser.add_argument("--" + field.name.replace("_", "-"), type=type(getattr(Recipe(), field.name)),
                            help=f"default: the recipe's ({', '.join(f'{k} {getattr(r, field.name)}' for k, r in RECIPES.items())})")
    parser.add_argument("--time-budget-s", type=float)
    parser.add_argument("--compile", action="store_true", default=None,
                        help="train through torch.compile (GPU only; falls back to eager if it fails)")
    parser.add_argument("--log-every", type=int, default=10, help="log the search-split top-1 every N epochs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", help="checkpoint path (default: mpq/checkpoints/<model>_<dataset>.pt)")
    args = vars(parser.parse_args(argv))
    if args["model"] not in MODEL_NAMES:
        parser.error(f"unknown model '{args['model']}'; valid: {', '.join(MODEL_NAMES)}")
    if args["optimizer"] is not None and args["optimizer"] not in OPTIMIZERS:
        parser.error(f"unknown optimizer '{args['optimizer']}'; valid: {', '.join(OPTIMIZERS)}")
    args["recipe"] = args["recipe"] or MODEL_RECIPES.get(args["model"], "cnn")
    values = asdict(RECIPES[args["recipe"]]) | {k: v for k, v in args.items() if v is not None}
    return TrainConfig(**values)


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    try:
        train(config, log=lambda line: print(line, flush=True))
    except (DataError, ModelError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
