"""The embedded offline LLM: an OpenAI-compatible server the project starts and stops itself.

``LocalLLMServer`` is a context manager. On enter it reuses a server that
already answers on ``port`` (if one was given), otherwise it starts one in a
child process (its own process group) on 127.0.0.1 and a free port, waits
until ``GET /v1/models`` answers, and exposes ``base_url`` (``.../v1``) and
``model_name``. On exit (also on errors and Ctrl-C) it stops the whole
process group; the child also exits by itself if its parent dies.

The engine is llama.cpp's native C++ server through the ``xllamacpp`` wheel
(prebuilt, installs in seconds; ``llama-cpp-python`` compiles llama.cpp for
many minutes on 2 cores, see benchmarks/results/local_llm_v1_gate_only_0.5b.json). The child is
this module: ``python -m agents.local_server --model FILE --port N``.

Every response must be "reasoning + one fenced python block": the server
applies :data:`DRAFT_GRAMMAR` (GBNF) to each request that does not send its
own ``grammar`` / ``response_format``, so a small model cannot wander off.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

from agents.local_model import LocalLLMError, ModelFileError, resolve_model

ENGINE_MODULE = "xllamacpp"
ENGINE_REQUIREMENT = "xllamacpp==2026.10.11549"
LOG_NAME = "local_llm.log"
# Requests served at once (llama.cpp continuous batching). Measured on the 2
# shared cores (benchmarks/results/local_llm_slots.json, 0.5B, compact prompts,
# 8 init drafts each, load 10-13): 1 slot 0.77 drafts/min, 2 slots 1.15,
# 4 slots 1.11. Two slots cost one more context's KV cache (~0.2-0.5 GB) and
# pay off only when the caller sends two requests at once
# (agents.llm's LocalProvider.concurrent_calls should follow this value).
DEFAULT_SLOTS = 2

# Sampling defaults for requests that do not set them (Qwen2.5-Coder's own
# recommendation; a request's temperature / top_p / max_tokens override them).
SAMPLING_DEFAULTS = {"temp": 0.7, "top_p": 0.8, "top_k": 20, "min_p": 0.0, "penalty_repeat": 1.05}

# Reasoning (no triple backtick inside), then exactly one ```python block, then
# nothing: generation stops when the block closes. The closing fence may carry
# a newline or two: the tokenizer has tokens such as "```\n", and a grammar
# that ends exactly at "```" would forbid them and push the model to "``'".
# (Capping the reasoning's length, e.g. text{1,600}, was tried: the 0.5B model
# then opens the block mid-sentence and goes on writing prose inside it.)
DRAFT_GRAMMAR = r"""
root      ::= reasoning "```python\n" code "```" [\n]{0,2}
reasoning ::= text+
code      ::= text*
text      ::= [^`] | "`" [^`] | "``" [^`]
""".strip()


class EngineMissingError(LocalLLMError):
    """The inference engine package is not installed."""


class PortInUseError(LocalLLMError):
    """The requested port is taken by something that is not an LLM server."""


class StartupTimeoutError(LocalLLMError):
    """The server did not answer in time (or exited during start-up)."""


class LocalLLMServer:
    """Start (or reuse) the local OpenAI-compatible server for a ``with`` block."""

    def __init__(
        self,
        model_path: str | Path | None = None,
        log_dir: str | Path | None = None,
        host: str = "127.0.0.1",
        port: int | None = None,
        startup_timeout_s: float = 180.0,
        n_ctx: int = 8192,
        n_threads: int | None = None,
        grammar: str | None = DRAFT_GRAMMAR,
        slots: int = DEFAULT_SLOTS,
    ) -> None:
        self.model_path = model_path
        self.log_dir = Path(log_dir) if log_dir is not None else None
        self.host = host
        self.port = port
        self.startup_timeout_s = startup_timeout_s
        self.n_ctx = n_ctx
        self.n_threads = n_threads or os.cpu_count() or 2
        self.grammar = grammar
        self.slots = slots
        self.base_url = ""
        self.model_name = ""
        self.log_path: Path | None = None
        self.reused = False
        self._proc: subprocess.Popen | None = None

    # -- context manager -------------------------------------------------
    def __enter__(self) -> "LocalLLMServer":
        if self.port is not None:
            name = served_model(self.host, self.port)
            if name is not None:  # a server already answers: use it, never stop it
                self._set_endpoint(self.port, name)
                self.reused = True
                return self
            if not port_free(self.host, self.port):
                raise PortInUseError(f"port {self.host}:{self.port} is in use by something that is not an LLM server; pick another or omit the port")
        model = resolve_model(self.model_path)
        if importlib.util.find_spec(ENGINE_MODULE) is None:
            raise EngineMissingError(f"the local LLM engine is not installed; run `make install` or `pip install {ENGINE_REQUIREMENT}`")
        port = self.port or free_port(self.host)
        try:
            self._start(model, port)
            self._wait_ready(port)
        except BaseException:  # errors and Ctrl-C during start-up: never leave a server behind
            self.stop()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    # -- lifecycle -------------------------------------------------------
    def _start(self, model: Path, port: int) -> None:
        log_dir = self.log_dir or model.parent / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / LOG_NAME
        cmd = [
            sys.executable, "-m", "agents.local_server",
            "--model", str(model), "--host", self.host, "--port", str(port),
            "--alias", model.stem, "--n-ctx", str(self.n_ctx), "--slots", str(self.slots), "--threads", str(self.n_threads),
            "--parent-pid", str(os.getpid()),
        ]
        if self.grammar:
            cmd += ["--grammar", self.grammar]
        env = dict(os.environ)
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see serve(): no spinning threads
        root = str(Path(__file__).resolve().parent.parent)  # so the child imports this package
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        with open(self.log_path, "ab") as log:
            log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} starting: {' '.join(cmd[:12])} ...\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, env=env,
            )

    def _wait_ready(self, port: int) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            code = self._proc.poll()
            if code is not None:
                if _log_says_port_taken(self.log_path):
                    raise PortInUseError(f"port {self.host}:{port} was taken while the local LLM server started; see {self.log_path}")
                raise StartupTimeoutError(f"the local LLM server exited with code {code} during start-up; see {self.log_path}")
            name = served_model(self.host, port)
            if name is not None:
                self._set_endpoint(port, name)
                return
            time.sleep(0.25)
        raise StartupTimeoutError(f"the local LLM server did not answer within {self.startup_timeout_s:.0f} s; see {self.log_path}")

    def _set_endpoint(self, port: int, name: str) -> None:
        self.port = port
        self.base_url = f"http://{self.host}:{port}/v1"
        self.model_name = name

    def stop(self) -> None:
        """Stop the server's process group (TERM, then KILL after 10 s). Idempotent."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        for sig, wait_s in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                proc.wait(timeout=wait_s)
                return
            except subprocess.TimeoutExpired:
                continue

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None


# -- small helpers (also used by the tests and the benchmark) ---------------
def served_model(host: str, port: int, timeout_s: float = 2.0) -> str | None:
    """The first model id served by an OpenAI-compatible server at host:port, or None."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"http://{host}:{port}/v1/models", timeout=timeout_s) as reply:
            data = json.loads(reply.read())
        return str(data["data"][0]["id"])
    except (urllib.error.URLError, OSError, ValueError, KeyError, IndexError, TypeError):
        return None


def port_free(host: str, port: int) -> bool:
    """True when a server could listen on host:port now (as servers do, ignoring
    connections of a closed server in TIME_WAIT; a live listener still counts)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _log_says_port_taken(log_path: Path | None) -> bool:
    try:
        tail = log_path.read_bytes()[-4000:].decode("utf-8", "replace").lower() if log_path else ""
    except OSError:
        return False
    return "address already in use" in tail or "couldn't bind" in tail


# -- the child process -------------------------------------------------------
def serve(args: argparse.Namespace) -> int:
    """Run the engine's HTTP server until SIGTERM / SIGINT or the parent's death."""
    import xllamacpp as xlc

    params = xlc.CommonParams()
    params.model.path = args.model
    params.model_alias = {args.alias}
    params.hostnames = [args.host]
    params.port = args.port
    # Slots = requests served at once, each with n_ctx tokens (DEFAULT_SLOTS says
    # why two); the server's RAM prompt cache restores a template's earlier
    # prompt when it comes back.
    params.n_parallel = args.slots
    params.n_ctx = args.n_ctx * args.slots
    params.endpoint_metrics = True  # /metrics: token counts and times (benchmarks/local_llm.py)
    # The 2 cores are shared with the sandbox workers and other jobs: threads that
    # spin while waiting (OpenMP's default, ggml's poll) make generation ~10x
    # slower under contention (benchmarks/local_llm.py measures it). Wait passively.
    for cpu in (params.cpuparams, params.cpuparams_batch):
        cpu.n_threads = args.threads
        cpu.poll = 0
    for name, value in SAMPLING_DEFAULTS.items():
        setattr(params.sampling, name, value)
    if args.grammar:
        grammar = xlc.CommonGrammar()
        grammar.grammar = args.grammar
        params.sampling.grammar = grammar
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    server = xlc.Server(params)
    print(f"local LLM server ready at {server.listening_address} (model {args.alias})", flush=True)
    while not stop.wait(1.0):
        if args.parent_pid and os.getppid() != args.parent_pid:
            print("parent process gone; stopping", flush=True)
            break
    del server
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Serve a GGUF model over an OpenAI-compatible HTTP API (child of LocalLLMServer).")
    parser.add_argument("--model", default=None, help="GGUF file (default: the packaged model)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--alias", default=None, help="model name reported by /v1/models (default: the file's stem)")
    parser.add_argument("--n-ctx", type=int, default=8192, help="context tokens per slot")
    parser.add_argument("--slots", type=int, default=DEFAULT_SLOTS, help=f"requests served at once (default {DEFAULT_SLOTS})")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--grammar", default=DRAFT_GRAMMAR, help="default GBNF grammar for requests ('' = none)")
    parser.add_argument("--parent-pid", type=int, default=0, help="exit when this process is gone")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # read when the engine's OpenMP loads
    try:
        model = resolve_model(args.model)
    except ModelFileError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if importlib.util.find_spec(ENGINE_MODULE) is None:
        print(f"error: the local LLM engine is not installed; pip install {ENGINE_REQUIREMENT}", file=sys.stderr)
        return 2
    args.model = str(model)
    args.alias = args.alias or model.stem
    return serve(args)


if __name__ == "__main__":
    sys.exit(main())
