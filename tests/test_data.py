"""Substrate I, data: layouts, splits, calibration, errors."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from mpq import data
from mpq.data import DataError, calibration_batch, load_splits, read_cifar10

SHARED_CIFAR10 = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10"
needs_cifar10 = pytest.mark.skipif(not (SHARED_CIFAR10 / "train.npz").is_file(),
                                   reason=f"CIFAR-10 npz not found at {SHARED_CIFAR10}")


def _slice_npz(source: Path, target: Path, n: int) -> list[bytes]:
    """Write the first n images of a JPEG-in-npz file; return their JPEG bytes."""
    with np.load(source) as archive:
        offsets, blob = archive["offsets"], archive["jpeg"]
        jpegs = [blob[offsets[i]:offsets[i + 1]].tobytes() for i in range(n)]
        labels, classes = archive["labels"][:n], archive["classes"]
    new_offsets = np.concatenate([[0], np.cumsum([len(j) for j in jpegs])]).astype(np.int64)
    np.savez(target, jpeg=np.frombuffer(b"".join(jpegs), dtype=np.uint8), offsets=new_offsets,
             labels=labels, classes=classes)
    return jpegs


@pytest.fixture(scope="module")
def three_layouts(tmp_path_factory) -> dict[str, Path]:
    """The same 60 + 20 real CIFAR-10 images in all three accepted layouts."""
    base = tmp_path_factory.mktemp("layouts")
    npz = base / "npz"
    npz.mkdir()
    split_jpegs = {split: _slice_npz(SHARED_CIFAR10 / f"{split}.npz", npz / f"{split}.npz", n)
                   for split, n in (("train", 60), ("test", 20))}
    (train_x, train_y), (test_x, test_y) = read_cifar10(npz)

    folder = base / "imagefolder"
    for split, labels in (("train", train_y), ("test", test_y)):
        for i, (jpeg, label) in enumerate(zip(split_jpegs[split], labels)):
            target = folder / split / data.CIFAR10_CLASSES[label] / f"{i:05d}.jpg"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(jpeg)  # the same JPEG bytes decode to the same pixels

    batches = base / "tv" / "cifar-10-batches-py"
    batches.mkdir(parents=True)
    chunks = np.array_split(np.arange(60), 5)
    for k, index in enumerate(chunks, start=1):
        with open(batches / f"data_batch_{k}", "wb") as handle:
            pickle.dump({"data": train_x[index].reshape(len(index), -1),
                         "labels": train_y[index].tolist()}, handle)
    with open(batches / "test_batch", "wb") as handle:
        pickle.dump({"data": test_x.reshape(20, -1), "labels": test_y.tolist()}, handle)
    for name in data.CIFAR10_CLASSES:  # ImageFolder needs every class folder
        for split in ("train", "test"):
            (folder / split / name).mkdir(parents=True, exist_ok=True)
    return {"npz": npz, "imagefolder": folder, "torchvision": base / "tv"}


def _sorted_by_class(images: np.ndarray, labels: np.ndarray):
    order = np.lexsort((images.reshape(len(images), -1).sum(1), labels))
    return images[order], labels[order]


@needs_cifar10
def test_each_cifar_layout_loads_the_same_images(three_layouts):
    loaded = {name: read_cifar10(root) for name, root in three_layouts.items()}
    reference = loaded["npz"]
    assert reference[0][0].shape == (60, 3, 32, 32) and reference[1][0].shape == (20, 3, 32, 32)
    for name, (train, test) in loaded.items():
        # ImageFolder groups by class folder, so compare as class-sorted multisets.
        for got, want in ((train, reference[0]), (test, reference[1])):
            got_x, got_y = _sorted_by_class(*got)
            want_x, want_y = _sorted_by_class(*want)
            assert np.array_equal(got_y, want_y), name
            assert np.array_equal(got_x, want_x), name


@needs_cifar10
def test_layout_detection_names_the_layout(three_layouts):
    assert data.detect_cifar_layout(three_layouts["npz"])[0] == "npz"
    assert data.detect_cifar_layout(three_layouts["imagefolder"])[0] == "imagefolder"
    assert data.detect_cifar_layout(three_layouts["torchvision"])[0] == "torchvision"


def test_wrong_layout_is_one_clear_line(tmp_path):
    (tmp_path / "something.txt").write_text("not a data set")
    with pytest.raises(DataError) as error:
        load_splits("cifar10", tmp_path)
    message = str(error.value)
    assert "\n" not in message and str(tmp_path) in message
    for layout in ("cifar-10-batches-py", "ImageFolder", "npz"):
        assert layout in message


@pytest.mark.parametrize("dataset, root, fragment", [
    ("cifar10", None, "needs --data-root"),
    ("cifar10", "/nonexistent/cifar", "is not a folder"),
    ("imagenet", "EMPTY", "ImageFolder"),
    ("mnist", None, "valid: embedded, cifar10-mini, cifar10, imagenet"),
])
def test_bad_input_errors(tmp_path, dataset, root, fragment):
    root = tmp_path if root == "EMPTY" else root
    with pytest.raises(DataError, match=fragment):
        load_splits(dataset, root)


def test_embedded_splits_are_disjoint_balanced_and_deterministic(tmp_path):
    splits = load_splits("embedded", cache_dir=tmp_path)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (3000, 1000, 1000)
    assert splits.train.images.dtype == torch.uint8 and splits.train.images.shape[1:] == (1, 28, 28)
    for part in (splits.train, splits.val, splits.test):
        assert torch.bincount(part.labels, minlength=10).min() == len(part) // 10
    rows = {name: {bytes(img.numpy()) for img in part.images}
            for name, part in (("train", splits.train), ("val", splits.val), ("test", splits.test))}
    assert not rows["train"] & rows["test"] and not rows["val"] & rows["test"]
    assert not rows["train"] & rows["val"]
    again = load_splits("embedded", cache_dir=tmp_path)  # now from the disk cache
    assert torch.equal(again.val.images, splits.val.images)
    assert torch.equal(again.test.labels, splits.test.labels)
    other_seed = load_splits("embedded", cache_dir=tmp_path, seed=1)
    assert not torch.equal(other_seed.val.labels, splits.val.labels)


def test_split_indices_partition_every_class():
    labels = np.repeat(np.arange(4), 25)
    parts = data.stratified_split(labels, {"a": 0.6, "b": 0.2, "c": 0.2}, seed=3)
    joined = np.concatenate(list(parts.values()))
    assert sorted(joined.tolist()) == list(range(100))
    assert [len(p) for p in parts.values()] == [60, 20, 20]


def test_calibration_is_exactly_n_seeded_training_images():
    splits = load_splits("embedded")
    images, labels = calibration_batch(splits, n=16, seed=0)
    assert images.shape == (16, 1, 28, 28) and labels.shape == (16,)
    assert images.dtype == torch.float32
    same, _ = calibration_batch(splits, n=16, seed=0)
    other, _ = calibration_batch(splits, n=16, seed=1)
    assert torch.equal(images, same) and not torch.equal(images, other)
    train_rows = {bytes(x.numpy()) for x in splits.train.normalized()}
    assert all(bytes(x.numpy()) in train_rows for x in images)
    with pytest.raises(DataError, match="calibration size"):
        calibration_batch(splits, n=0)


def test_imagenet_imagefolder_uses_224_preprocessing(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for wnid in ("n01440764", "n01443537"):
        (tmp_path / "val" / wnid).mkdir(parents=True)
        for i in range(3):
            pixels = rng.integers(0, 255, (300, 400, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "val" / wnid / f"{i}.JPEG")
    splits = load_splits("imagenet", tmp_path, cache_dir=tmp_path / "cache")
    assert splits.spec.num_classes == 2 and splits.spec.image_size == 224
    total = len(splits.train) + len(splits.val) + len(splits.test)
    assert total == 6 and splits.train.images.shape[1:] == (3, 224, 224)


def test_cifar10_mini_ships_a_fixed_cifar10_subset():
    splits = load_splits("cifar10-mini")
    assert (len(splits.train), len(splits.val), len(splits.test)) == (2048, 1000, 10000)
    assert splits.spec.name == "cifar10" and splits.val.images.shape[1:] == (3, 32, 32)
    assert np.bincount(splits.test.labels.numpy()).tolist() == [1000] * 10
    assert np.bincount(splits.val.labels.numpy()).min() >= 75  # a random head: every class, roughly balanced
    images, _ = calibration_batch(splits, n=16, seed=0)
    assert images.shape == (16, 3, 32, 32)


SHARED_CIFAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10"


@pytest.mark.skipif(not (SHARED_CIFAR / "train.npz").is_file(), reason="full CIFAR-10 export not beside the checkout")
def test_cifar10_mini_images_are_those_of_the_full_cifar10_splits(tmp_path):
    mini = load_splits("cifar10-mini")
    full = load_splits("cifar10", SHARED_CIFAR, cache_dir=tmp_path)
    assert torch.equal(mini.val.images, full.val.images[:1000])
    assert torch.equal(mini.train.images, full.train.images[:2048])
    assert torch.equal(mini.test.labels, full.test.labels)


def test_a_capped_test_split_covers_every_class():
    test = load_splits("cifar10-mini").test
    assert test.labels[:1000].unique().numel() == 1  # stored sorted by class: head() would be one class
    capped = test.spread(200)
    assert len(capped) == 200 and capped.labels.bincount(minlength=10).min() == 20
    assert test.spread(None) is test and test.spread(10**6) is test
