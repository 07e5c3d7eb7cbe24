"""Train a base model: the recipe behind the committed checkpoints.

    python -m mpq.train --model resnet18 --dataset cifar10 --data-root DIR --epochs 40

Recipe: SGD (Nesterov, momentum 0.9, weight decay 5e-4), one-cycle learning
rate, label smoothing 0.1, random-crop (+ horizontal flip for natural images)
augmentation done on the device, bf16 autocast and channels-last on a GPU.
The whole training split lives on the device, so no data loader bottleneck.

``--time-budget-s`` makes the schedule time-aware: schedule progress is
max(step fraction, elapsed-time fraction), so the run anneals fully and ends
within the budget even on a slower machine (the epochs actually run are recorded).
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from mpq.data import DataError, ImageSet, load_splits, normalize
from mpq.models import MODEL_NAMES, ModelError, build_model, checkpoint_path, load_model, save_checkpoint
from mpq.quant import evaluate

SUBSET_SIZE = 1000
"""The fixed test subset (first images of the test split) whose accuracy is
recorded so a CPU test can re-check a checkpoint quickly."""


@dataclass(frozen=True)
class TrainConfig:
    model: str
    dataset: str
    data_root: str | None = None
    epochs: int = 40
    batch_size: int = 512
    lr: float = 0.2
    weight_decay: float = 5e-4
    label_smoothing: float = 0.1
    cutout: int = 0
    """Side of a square zeroed at a random place in each training image (0 = off)."""
    time_budget_s: float | None = None
    seed: int = 0
    device: str = "cuda" if torch.cuda.is_available() else "cpu"
    out: str | None = None


def augment(images: torch.Tensor, flip: bool, pad: int, generator: torch.Generator,
            cutout: int = 0) -> torch.Tensor:
    """Random crop after zero padding (+ horizontal flip, + Cutout), batched on the device."""
    n, _, h, w = images.shape
    padded = F.pad(images, (pad, pad, pad, pad))
    dx = torch.randint(0, 2 * pad + 1, (n,), device=images.device, generator=generator)
    dy = torch.randint(0, 2 * pad + 1, (n,), device=images.device, generator=generator)
    rows = (torch.arange(h, device=images.device).view(1, h) + dy.view(n, 1))
    cols = (torch.arange(w, device=images.device).view(1, w) + dx.view(n, 1))
    batch_index = torch.arange(n, device=images.device).view(n, 1, 1)
    out = padded.permute(0, 2, 3, 1)[batch_index, rows.view(n, h, 1), cols.view(n, 1, w)]
    out = out.permute(0, 3, 1, 2)
    if flip:
        mirrored = torch.rand(n, device=images.device, generator=generator) < 0.5
        out = torch.where(mirrored.view(n, 1, 1, 1), out.flip(3), out)
    if cutout:  # DeVries & Taylor 2017: the square's centre may fall near the border
        cy = torch.randint(0, h, (n, 1, 1), device=images.device, generator=generator)
        cx = torch.randint(0, w, (n, 1, 1), device=images.device, generator=generator)
        ys = torch.arange(h, device=images.device).view(1, h, 1)
        xs = torch.arange(w, device=images.device).view(1, 1, w)
        hole = ((ys - cy).abs() <= cutout // 2) & ((xs - cx).abs() <= cutout // 2)
        out = out.masked_fill(hole.unsqueeze(1), 0)
    return out.contiguous()


def one_cycle_lr(progress: float, peak: float) -> float:
    """Linear warm-up over the first 15%, then cosine decay to ~0."""
    warm = 0.15
    if progress < warm:
        return peak * (0.1 + 0.9 * progress / warm)
    return peak * 0.5 * (1 + math.cos(math.pi * min(1.0, (progress - warm) / (1 - warm))))


def evaluate_top1(model: torch.nn.Module, images: ImageSet, device: str, batch_size: int = 1000) -> float:
    """Top-1 of ``model`` on an image set (the quantizer's batched evaluation)."""
    return evaluate(model, images.images, images.labels, device, batch_size,
                    mean=images.spec.mean, std=images.spec.std).top1


def train(config: TrainConfig, log=print) -> dict:
    torch.manual_seed(config.seed)
    device = config.device
    splits = load_splits(config.dataset, config.data_root, seed=0)
    model = build_model(config.model, splits.spec).to(device)
    on_gpu = device.startswith("cuda")
    if on_gpu:
        model = model.to(memory_format=torch.channels_last)
        torch.backends.cudnn.benchmark = True
    natural_images = splits.spec.in_channels == 3
    train_x = splits.train.images.to(device)
    train_y = splits.train.labels.to(device)
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim <= 1 else decay).append(p)
    optimizer = torch.optim.SGD([{"params": decay, "weight_decay": config.weight_decay},
                                 {"params": no_decay, "weight_decay": 0.0}],
                                lr=config.lr, momentum=0.9, nesterov=True)
    steps_per_epoch = math.ceil(len(train_y) / config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    generator = torch.Generator(device=device).manual_seed(config.seed)
    start = time.time()
    step, epochs_run, progress = 0, 0, 0.0
    while progress < 1.0:
        model.train()
        order = torch.randperm(len(train_y), device=device, generator=generator)
        steps_this_epoch = 0
        for i in range(steps_per_epoch):
            index = order[i * config.batch_size:(i + 1) * config.batch_size]
            x = augment(train_x[index], flip=natural_images, pad=4 if natural_images else 2,
                        generator=generator, cutout=config.cutout)
            x = normalize(x, splits.spec)
            if on_gpu:
                x = x.contiguous(memory_format=torch.channels_last)
            elapsed = time.time() - start
            progress = step / total_steps
            if config.time_budget_s:
                progress = max(progress, elapsed / config.time_budget_s)
            if progress >= 1.0:
                break
            for group in optimizer.param_groups:
                group["lr"] = one_cycle_lr(progress, config.lr)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=on_gpu):
                loss = F.cross_entropy(model(x), train_y[index], label_smoothing=config.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            steps_this_epoch = i + 1
        else:
            steps_this_epoch = steps_per_epoch
        if steps_this_epoch == 0:
            break
        epochs_run += 1
        log(f"[{config.model}/{config.dataset}] epoch {epochs_run} step {step}/{total_steps} "
            f"progress {progress:.2f} loss {loss.item():.3f} {time.time() - start:.0f}s")
    train_seconds = time.time() - start
    return _save_and_report(config, model.float().to(memory_format=torch.contiguous_format),
                            splits, train_seconds, epochs_run, step, log)


def _save_and_report(config, model, splits, train_seconds, epochs_run, steps, log) -> dict:
    out = Path(config.out) if config.out else checkpoint_path(config.model, config.dataset)
    meta = {
        "model": config.model, "dataset": config.dataset,
        "params": sum(p.numel() for p in model.parameters()),
        "epochs": epochs_run, "steps": steps, "train_seconds": round(train_seconds, 1),
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


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    parser = argparse.ArgumentParser(prog="python -m mpq.train", description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help=f"one of {', '.join(MODEL_NAMES)}")
    parser.add_argument("--dataset", default="embedded")
    parser.add_argument("--data-root")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--lr", type=float, default=0.2)
    parser.add_argument("--weight-decay", type=float, default=5e-4)
    parser.add_argument("--time-budget-s", type=float)
    parser.add_argument("--label-smoothing", type=float, default=0.1)
    parser.add_argument("--cutout", type=int, default=0, help="Cutout square side in pixels (0 = off)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", help="checkpoint path (default: mpq/checkpoints/<model>_<dataset>.pt)")
    args = parser.parse_args(argv)
    return TrainConfig(**{k.replace("-", "_"): v for k, v in vars(args).items()})


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
