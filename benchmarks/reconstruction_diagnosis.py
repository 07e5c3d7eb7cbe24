"""Per-block diagnosis of block reconstruction (issue 15's W2 collapse): one allocation, every block.

For each optimised block: its output error relative to the FP block output (squared error summed
over the block's output, averaged over the calibration images, over the FP output's energy) with
the round-to-nearest rounding on the input the reconstructed earlier blocks give, and after
reconstruction with hard and with soft rounding, and the share of rounding variables still
undecided (0.01 < h(alpha) < 0.99). A hard error far above the soft one means the regulariser did
not decide the rounding; an error that grows to ~1 block after block means the signal is lost.
Then the top-1 of the reconstructed model on an evenly strided subset of the test split (the
split is sorted by label, so its first N images are one class).

    OMP_NUM_THREADS=1 nice -n 19 python -m benchmarks.reconstruction_diagnosis --model resnet18 \\
        --calib 128 --iters 200 --test 1000 --out benchmarks/results/reconstruction_diagnosis.json

``--old-loss`` puts back the earlier loss (squared error summed over every output element) to
show its effect; ``--lr``, ``--reg-weight``, ``--orient-bits`` as ``ReconConfig``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

import mpq.reconstruct as recon
from benchmarks.quantizer import machine
from mpq.data import calibration_batch, load_splits
from mpq.models import load_model
from mpq.ptq_final import with_first_last
from mpq.ptq_stack import rectified_sigmoid
from mpq.quant import evaluate, quantizable_layers
from mpq.recon_blocks import run_chunked


def summed_loss(out: torch.Tensor, target: torch.Tensor, group_of: torch.Tensor) -> torch.Tensor:
    """The loss before the fix: squared error summed over channels AND positions (BRECQ averages positions)."""
    batch, k = out.shape[0], len(group_of)
    want = target.reshape(target.shape[0], batch, -1).index_select(0, group_of).transpose(0, 1)
    return (out.reshape(batch, k, -1) - want).pow(2).sum(-1).mean(0).sum()


def relative_error(block, layers, x: torch.Tensor, target: torch.Tensor, mode: str) -> float:
    for m in layers:
        m.mode = mode
    with torch.no_grad():
        out = run_chunked(block, x).reshape(x.shape[0], -1)
    want = target[0].reshape(x.shape[0], -1)
    return float((out - want).pow(2).sum(-1).mean() / want.pow(2).sum(-1).mean())


def instrumented(blocks_log: list[dict]):
    """``optimize_block`` wrapped to record the block's errors before and after (variant 0)."""
    optimize = recon.optimize_block

    def run(block, layers, x, target, group_of, cfg, generator):
        start = time.perf_counter()
        before = relative_error(block, layers, x, target, "hard")
        optimize(block, layers, x, target, group_of, cfg, generator)
        h = torch.cat([rectified_sigmoid(m.alpha).flatten() for m in layers])
        entry = {"shape": list(target.shape[2:]), "rtn": before,
                 "hard": relative_error(block, layers, x, target, "hard"),
                 "soft": relative_error(block, layers, x, target, "soft"),
                 "undecided": float(((h > 0.01) & (h < 0.99)).float().mean()),
                 "seconds": time.perf_counter() - start}
        for m in layers:
            m.mode = "hard"
        blocks_log.append(entry)
        print(f"  block {len(blocks_log)} {entry['shape']}: rtn {before:.4f} -> hard {entry['hard']:.4f} "
              f"soft {entry['soft']:.4f} undecided {entry['undecided']:.3f} ({entry['seconds']:.0f} s)", flush=True)
    return run


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.reconstruction_diagnosis", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet18")
    p.add_argument("--dataset", default="cifar10-mini")
    p.add_argument("--calib", type=int, default=128)
    p.add_argument("--iters", type=int, default=200)
    p.add_argument("--lr", type=float, default=recon.ReconConfig.lr)
    p.add_argument("--reg-weight", type=float, default=recon.ReconConfig.reg_weight)
    p.add_argument("--orient-bits", type=int, default=recon.ReconConfig.orient_bits)
    p.add_argument("--old-loss", action="store_true")
    p.add_argument("--test", type=int, default=1000, help="test images, evenly strided over the split")
    p.add_argument("--out", default="benchmarks/results/reconstruction_diagnosis.json")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    splits = load_splits(args.dataset)
    model = load_model(args.model, splits.spec)
    calib, _ = calibration_batch(splits, args.calib, 0)
    names = [n for n, _ in quantizable_layers(model, calib[:1])]
    bits = with_first_last({n: 2 for n in names}, names)
    index = torch.arange(0, len(splits.test), max(len(splits.test) // args.test, 1))[:args.test]
    test_x, test_y = splits.test.normalized()[index], splits.test.labels[index]
    if args.old_loss:
        recon.block_loss = summed_loss
    blocks: list[dict] = []
    recon.optimize_block = instrumented(blocks)
    config = recon.ReconConfig(iters=args.iters, lr=args.lr, reg_weight=args.reg_weight, orient_bits=args.orient_bits)
    start = time.perf_counter()
    net, _ = recon.reconstruct(model, bits, calib, config)
    record = {"model": args.model, "allocation": "uniform W2, first/last 8", "settings": vars(args) | {"out": None},
              "top1": evaluate(net.to_module(), test_x, test_y).top1, "seconds": time.perf_counter() - start,
              "blocks": blocks, "machine": machine("cpu")}
    print(json.dumps({k: record[k] for k in ("model", "top1", "seconds")}), flush=True)
    out = Path(args.out)
    runs = json.loads(out.read_text())["runs"] if out.is_file() else []
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"runs": runs + [record]}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
