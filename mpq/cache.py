"""A small on-disk cache of JSON results, keyed by what produced them.

Ground truth costs minutes; it depends only on (model, weights, data split,
bits, quantizer config, ...). Each result is one JSON file named by the SHA-256
of its key, in ``$TAP_MPQ_CACHE`` or ``~/.cache/tap-mpq``. The key is stored
in the file too, so a cache directory can be inspected by hand.

Results for the default task ship with the package (``mpq/ground_truth/``,
computed once on the GPU machine by ``benchmarks/default_task.py``): a lookup
reads the user's cache first, then the shipped folder, and only then computes.
Keys hash the inputs' bytes, not the device, so a GPU result serves a CPU run.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn


def default_cache_dir() -> Path:
    """The ground-truth cache folder: ``$TAP_MPQ_CACHE``, else ``~/.cache/tap-mpq``."""
    return Path(os.environ.get("TAP_MPQ_CACHE") or Path.home() / ".cache" / "tap-mpq")


def key_digest(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:32]


def weights_hash(model: nn.Module) -> str:
    """SHA-256 of the model's state (names, shapes and values)."""
    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        h.update(name.encode())
        h.update(str(tuple(tensor.shape)).encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:32]


def tensor_digest(*tensors: torch.Tensor) -> str:
    """SHA-256 of the tensors' bytes (images, labels): what a cached result was computed on."""
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:24]


SHIPPED_DIR = Path(__file__).resolve().parent / "ground_truth"
"""Read-only cache files that ship with the package (the default task's ground truth)."""


def cached_json(cache_dir: Path | None, kind: str, key: dict[str, Any], compute: Callable[[], dict]) -> dict:
    """The JSON-able dict for ``key``: read from the cache or the shipped files, or computed and stored."""
    path = cache_file(cache_dir, kind, key)
    for candidate in (path, SHIPPED_DIR / path.name):
        if candidate.exists():
            try:
                return json.loads(candidate.read_text())["value"]
            except (json.JSONDecodeError, KeyError):
                pass  # a damaged file is recomputed and overwritten
    value = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as tmp:
        json.dump({"key": key, "value": value}, tmp)
    os.replace(tmp.name, path)  # atomic: parallel workers never read half a file
    return value


def cache_file(cache_dir: Path | None, kind: str, key: dict[str, Any]) -> Path:
    """Where the result for ``key`` is (or would be) stored."""
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return folder / f"{kind}-{key_digest(key)}.json"

