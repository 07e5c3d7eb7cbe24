"""A Docker engine for tests and benchmarks on a machine that has none running.

Uses an engine that already answers; otherwise, as root on Linux, installs
``docker.io`` from the distribution's archive if ``dockerd`` is missing and
starts a private ``dockerd`` (own socket and data root, no iptables, no bridge:
containers run with networking disabled anyway). No registry is contacted;
the evaluator image is built offline (``docker_backend.build_offline_image``).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from sandbox.docker_backend import engine_answers

DEFAULT_ROOT = Path("/tmp/tap-mpq-docker")


class EngineUnavailable(RuntimeError):
    """No Docker engine can run here; the message says why."""


@dataclass
class LocalEngine:
    docker_host: str | None
    """None: the engine that DOCKER_HOST / the default socket points at."""
    process: subprocess.Popen | None = None
    """The dockerd we started (stopped by ``stop``), or None for an existing engine."""

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def ensure_engine(root: Path = DEFAULT_ROOT, install: bool = True, start_timeout_s: float = 60) -> LocalEngine:
    """An engine that answers, started here if need be; EngineUnavailable otherwise."""
    if engine_answers()[0]:
        return LocalEngine(None)
    host = f"unix://{root}/docker.sock"
    if engine_answers(host)[0]:
        return LocalEngine(host)
    if sys.platform != "linux" or os.geteuid() != 0:
        raise EngineUnavailable("no Docker engine answers, and starting one needs root on Linux")
    if shutil.which("dockerd") is None:
        if not install or shutil.which("apt-get") is None:
            raise EngineUnavailable("no Docker engine answers and dockerd is not installed")
        _install_docker_io()
    root.mkdir(parents=True, exist_ok=True)
    log = open(root / "dockerd.log", "ab")
    process = subprocess.Popen(
        ["dockerd", "--host", host, "--data-root", str(root / "data"), "--exec-root", str(root / "exec"),
         "--pidfile", str(root / "docker.pid"), "--iptables=false", "--bridge=none"],
        stdout=log, stderr=log, start_new_session=True)
    deadline = time.monotonic() + start_timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise EngineUnavailable(f"dockerd exited with code {process.returncode}; see {root / 'dockerd.log'}")
        if engine_answers(host)[0]:
            return LocalEngine(host, process)
        time.sleep(0.5)
    process.kill()
    raise EngineUnavailable(f"dockerd did not answer within {start_timeout_s:g} s; see {root / 'dockerd.log'}")


def _install_docker_io() -> None:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    done = subprocess.run(["apt-get", "install", "-y", "-q", "docker.io"], capture_output=True, text=True,
                          env=env, timeout=900)
    if done.returncode != 0 or shutil.which("dockerd") is None:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["?"]
        raise EngineUnavailable(f"apt-get install docker.io failed: {tail[0]}")
