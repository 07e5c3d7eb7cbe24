"""``cifar10-mini``: the offline default data set, a fixed subset of CIFAR-10 that ships in the package.

Why it exists: the default search must separate good proxies from bad ones
(benchmarks/results/default_task.md), and on MNIST they all land within a few
points of each other. This subset reuses the project's CIFAR-10 checkpoints.

What it holds (``mpq/datasets/cifar10_mini.npz``, JPEG bytes copied unchanged
from the JPEG (quality 75) export of CIFAR-10 in ``shared/data/cifar10``):

- ``train``: 2,048 images, the first of the ``cifar10`` training split (seed 0):
  the calibration pool (16 for the search, 1,024 for a reconstructed final model);
- ``val``: the first 1,000 images of the ``cifar10`` search split (seed 0), in its order
  (the search split of the CPU default: the human baselines rank the same on it as on
  all 5,000, Kendall tau 1.00, benchmarks/results/default_task.md);
- ``test``: the 10,000 official test images.

So its search and training images are exactly those of ``--dataset cifar10
--data-root DIR`` (seed 0), and none of them was seen in training the
``cifar10`` checkpoints except the calibration pool, as in ``cifar10``. The
source indices into ``train.npz`` are stored in the file.

Rebuild (never needed by users)::

    python -m mpq.cifar_mini --data-root ../shared/data/cifar10
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

MINI_FILE = Path(__file__).resolve().parent / "datasets" / "cifar10_mini.npz"
SIZES = {"train": 2048, "val": 1000}
SOURCE_SEED = 0


def read_mini(path: Path = MINI_FILE) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{split: (uint8 images [N,3,32,32], int64 labels)} for train / val / test."""
    from mpq.data import DataError, decode_jpeg_blob

    if not path.is_file():
        raise DataError(f"cifar10-mini data file missing: {path} (reinstall the project)")
    out = {}
    with np.load(path, allow_pickle=False) as archive:
        for split in ("train", "val", "test"):
            images = decode_jpeg_blob(archive[f"{split}_jpeg"], archive[f"{split}_offsets"])
            out[split] = (images, archive[f"{split}_labels"].astype(np.int64))
    return out


def build(data_root: Path, out: Path = MINI_FILE) -> dict[str, int]:
    """Copy the JPEG bytes of the chosen images from ``data_root``'s train.npz / test.npz."""
    from mpq.data import CIFAR10_VAL_FRACTION, stratified_split

    arrays = {}
    with np.load(data_root / "train.npz", allow_pickle=False) as train:
        labels = train["labels"].astype(np.int64)
        parts = stratified_split(labels, {"train": 1 - CIFAR10_VAL_FRACTION, "val": CIFAR10_VAL_FRACTION},
                                 SOURCE_SEED)
        for split, size in SIZES.items():
            index = parts[split][:size]
            arrays.update(_pack(split, train["jpeg"], train["offsets"], labels, index))
            arrays[f"{split}_source_index"] = index
    with np.load(data_root / "test.npz", allow_pickle=False) as test:
        labels = test["labels"].astype(np.int64)
        arrays.update(_pack("test", test["jpeg"], test["offsets"], labels, np.arange(len(labels))))
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, **arrays)
    return {split: len(arrays[f"{split}_labels"]) for split in ("train", "val", "test")}


def _pack(split: str, blob: np.ndarray, offsets: np.ndarray, labels: np.ndarray, index: np.ndarray) -> dict:
    pieces = [blob[offsets[i]:offsets[i + 1]] for i in index]
    new_offsets = np.zeros(len(pieces) + 1, dtype=np.int64)
    new_offsets[1:] = np.cumsum([len(p) for p in pieces])
    return {f"{split}_jpeg": np.concatenate(pieces), f"{split}_offsets": new_offsets,
            f"{split}_labels": labels[index].astype(np.uint8)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mpq.cifar_mini", description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", required=True, help="folder with the JPEG-in-npz train.npz / test.npz")
    args = parser.parse_args(argv)
    root = Path(args.data_root)
    if not (root / "train.npz").is_file() or not (root / "test.npz").is_file():
        print(f"error: {root} holds no train.npz / test.npz", file=sys.stderr)
        return 2
    counts = build(root)
    print(f"wrote {MINI_FILE} ({MINI_FILE.stat().st_size / 1e6:.1f} MB): {counts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
