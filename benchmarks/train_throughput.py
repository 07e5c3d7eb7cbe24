"""Training throughput of one model with its real recipe step (augmentation, loss,
optimizer), on random CIFAR-sized images: sizes the time budgets of ``mpq.train``.

    python -m benchmarks.train_throughput --model vit --seconds 20 [--json OUT]

Run several at once to see what each gets while they share one GPU.
"""
from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from mpq.data import CIFAR10_SPEC
from mpq.models import build_model
from mpq.train import make_optimizer, parse_args, training_batch, training_loss

TRAIN_IMAGES = 45_000


def measure(model_name: str, seconds: float, batch_size: int | None) -> dict:
    config = parse_args(["--model", model_name, "--dataset", "cifar10"]
                        + (["--batch-size", str(batch_size)] if batch_size else []))
    device = config.device
    on_gpu = device.startswith("cuda")
    model = build_model(model_name, CIFAR10_SPEC).to(device)
    if on_gpu:
        model = model.to(memory_format=torch.channels_last)
        torch.backends.cudnn.benchmark = True
    optimizer = make_optimizer(model, config)
    generator = torch.Generator(device=device).manual_seed(0)
    images = torch.randint(0, 256, (config.batch_size, 3, 32, 32), dtype=torch.uint8, device=device)
    labels = torch.randint(0, 10, (config.batch_size,), device=device)

    def step():
        x = training_batch(images, config, CIFAR10_SPEC, generator)
        if on_gpu:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=on_gpu):
            loss = training_loss(model, x, labels, config, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(3):  # cudnn autotuning, allocator warm-up
        step()
    if on_gpu:
        torch.cuda.synchronize()
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        step()
        steps += 1
        if on_gpu and steps % 10 == 0:
            torch.cuda.synchronize()
    if on_gpu:
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    images_per_s = steps * config.batch_size / elapsed
    return {"model": model_name, "recipe": config.recipe, "batch_size": config.batch_size,
            "params": sum(p.numel() for p in model.parameters()), "steps": steps,
            "images_per_s": round(images_per_s), "epoch_s": round(TRAIN_IMAGES / images_per_s, 2),
            "peak_mem_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2) if on_gpu else None,
            "device": torch.cuda.get_device_name() if on_gpu else platform.processor() or "cpu",
            "torch": torch.__version__}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.train_throughput")
    parser.add_argument("--model", required=True)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--json", dest="json_out")
    args = parser.parse_args()
    result = measure(args.model, args.seconds, args.batch_size)
    print(json.dumps(result))
    if args.json_out:
        with open(args.json_out, "w") as handle:
            json.dump(result, handle, indent=2)


if __name__ == "__main__":
    main()
