"""Docker backend: each slot is ``python -m sandbox.worker`` in its own container.

One container per slot, one slot per GPU. ``container_spec`` (a pure function,
tested everywhere) says what every container gets: no network, a read-only
root file system, a tmpfs scratch, memory / pids / CPU limits, the project
mounted read-only, and its GPU through a device request.

Users: the worker starts as root *without* the usual capabilities, keeping only
those it needs to read and write the ground-truth cache (root-owned, mode 600,
mounted read-write) and to hand each proxy to the ``nobody`` user; the proxy
itself always runs as ``nobody`` with no capabilities at all (``setuid``
clears them), exactly as in the process backend.

A container dies with the orchestrator: it is created with ``StdinOnce`` (the
engine closes its input when the orchestrator's attach connection goes, which
the kernel does when the orchestrator dies, however), the worker exits at the
end of its input even while it is still loading, and ``auto_remove`` has the
engine remove the stopped container.

Two images serve: the one ``sandbox/Dockerfile`` builds (CUDA PyTorch base, for
users with a registry), and ``tap-mpq-evaluator:offline``, built here without
any registry (``build_offline_image``): a tiny imported root file system, with
the host's /usr, Python and venv mounted read-only.
"""
from __future__ import annotations

import importlib.util
import io
import os
import select
import shutil
import sys
import tarfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import ClassVar

from sandbox.backend import SlotSpec
from sandbox.channel import WorkerChannel
from sandbox.process_backend import PROJECT_ROOT, THREAD_VARIABLES, worker_arguments
from sandbox.protocol import Limits

OFFLINE_IMAGE = "tap-mpq-evaluator:offline"
CONTAINER_PROJECT = "/opt/tap-mpq"
"""Where the Dockerfile image expects the project mount."""


WORKER_CAPABILITIES = ("CHOWN", "DAC_OVERRIDE", "FOWNER", "SETUID", "SETGID", "KILL")
"""What the root worker keeps: own the scratch dirs, become ``nobody``, kill the proxy."""


@dataclass(frozen=True)
class DockerSettings:
    """How evaluator containers are made."""

    image: str = OFFLINE_IMAGE
    python: str | None = None
    """Interpreter inside the container; None = the host's (offline image: mounted from the host)."""
    project_dir: str | None = None
    """Where the project is mounted (read-only); None = the same path as on the host."""
    host_mounts: tuple[str, ...] | None = None
    """Host paths mounted read-only at the same path; None = what the offline image needs."""
    memory_mb: int = 6144
    pids: int = 256
    cpus: float | None = None
    user: str = "0:0"
    """The worker's user; the proxy always runs as ``nobody`` (see the module docstring)."""
    docker_host: str | None = None
    """Engine address (``unix:///...``); None = ``DOCKER_HOST`` or the default socket."""

    def resolved(self) -> "DockerSettings":
        """Defaults filled from this host (offline image: the host's interpreter and libraries)."""
        if self.host_mounts is None and self.image == OFFLINE_IMAGE:
            mounts = offline_host_mounts()
        else:
            mounts = self.host_mounts or ()
        return replace(self, python=self.python or sys.executable, host_mounts=tuple(mounts),
                       project_dir=self.project_dir or str(PROJECT_ROOT))

    @classmethod
    def for_dockerfile_image(cls, image: str, **overrides) -> "DockerSettings":
        """Settings for an image built from sandbox/Dockerfile."""
        return cls(image=image, python="python", project_dir=CONTAINER_PROJECT, host_mounts=(), **overrides)


def offline_host_mounts() -> tuple[str, ...]:
    """Host paths the offline image mounts read-only: /usr and the interpreter's prefixes."""
    paths = ["/usr"]
    for prefix in (sys.base_prefix, sys.prefix):
        real = os.path.realpath(prefix)
        if not any(real == p or real.startswith(p + "/") for p in paths + [str(PROJECT_ROOT)]):
            paths.append(real)
    return tuple(paths)


def container_spec(settings: DockerSettings, task: dict, limits: Limits, cache_dir: Path,
                   gpu: str | None = None, mode: str = "auto", threads: int | None = None) -> dict:
    """Keyword arguments of ``client.containers.create`` for one evaluator slot.

    ``settings`` must be ``resolved()``. Pure: same arguments, same spec.
    """
    from docker.types import DeviceRequest

    volumes = {path: {"bind": path, "mode": "ro"} for path in settings.host_mounts}
    volumes[str(PROJECT_ROOT)] = {"bind": settings.project_dir, "mode": "ro"}
    volumes[str(cache_dir)] = {"bind": str(cache_dir), "mode": "rw"}
    if task.get("data_root"):
        volumes[task["data_root"]] = {"bind": task["data_root"], "mode": "ro"}
    spec = {
        "image": settings.image,
        "command": [settings.python, *worker_arguments(task, limits, cache_dir, lockdown=False, mode=mode)],
        "user": settings.user,
        "network_disabled": True,
        "network_mode": "none",
        "read_only": True,
        "tmpfs": {"/tmp": f"rw,nosuid,nodev,size={limits.scratch_mb}m,mode=1777"},
        "mem_limit": f"{settings.memory_mb}m",
        "memswap_limit": f"{settings.memory_mb}m",
        "pids_limit": settings.pids,
        "cap_drop": ["ALL"],
        "cap_add": list(WORKER_CAPABILITIES),
        "security_opt": ["no-new-privileges"],
        "volumes": volumes,
        "environment": {"PYTHONPATH": settings.project_dir, "HOME": "/tmp", "PATH": "/usr/bin:/bin",
                        "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1", "OMP_WAIT_POLICY": "PASSIVE",
                        # the slot's share of the cores (SlotSpec.threads), as for process slots
                        **(dict.fromkeys(THREAD_VARIABLES, str(threads)) if threads else {})},
        "working_dir": "/tmp",
        "stdin_open": True,
        "tty": False,
        "detach": False,  # docker-py then sets StdinOnce: input closes when the orchestrator goes
        "auto_remove": True,
        "labels": {"tap-mpq": "evaluator"},
    }
    if settings.cpus:
        spec["nano_cpus"] = int(settings.cpus * 1e9)
    if gpu is not None:
        ids = {"count": -1} if gpu == "all" else {"device_ids": [gpu]}
        spec["device_requests"] = [DeviceRequest(capabilities=[["gpu"]], **ids)]
    return spec


def client(docker_host: str | None = None, timeout: int = 10):
    import docker

    if docker_host:
        return docker.DockerClient(base_url=docker_host, timeout=timeout)
    return docker.from_env(timeout=timeout)


def engine_answers(docker_host: str | None = None) -> tuple[bool, str]:
    """(does a Docker engine answer, one line saying which, or why not and what to do)."""
    if importlib.util.find_spec("docker") is None:
        return False, "the docker Python package is not installed (pip install docker)"
    try:
        engine = client(docker_host, timeout=3)
        engine.ping()
        return True, f"Docker engine {engine.version().get('Version', '?')} at {engine.api.base_url}"
    except Exception as exc:  # noqa: BLE001 - any failure means: no engine
        if shutil.which("dockerd") or shutil.which("docker"):
            return False, ("Docker is installed but its engine is not running: start it "
                           "(sudo systemctl start docker, or sudo dockerd &) and pass --sandbox docker")
        return False, f"no Docker engine answered ({type(exc).__name__}); install Docker for container slots"


def build_offline_image(docker_host: str | None = None, tag: str = OFFLINE_IMAGE) -> str:
    """Import a minimal root file system as ``tag``: no registry, no download, about a second."""
    engine = client(docker_host, timeout=60)
    repository, _, version = tag.partition(":")
    engine.api.import_image_from_data(offline_rootfs(), repository=repository, tag=version or "latest")
    return tag


def offline_rootfs() -> bytes:
    """A tar of an empty Linux tree: /usr-merged links, /etc/passwd with nobody, ld.so.cache."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for directory in ("etc", "tmp", "usr", "proc", "sys", "dev", "opt", "work", "root", "home"):
            info = tarfile.TarInfo(directory)
            info.type, info.mode = tarfile.DIRTYPE, 0o1777 if directory == "tmp" else 0o755
            tar.addfile(info)
        for link in ("bin", "lib", "lib64", "sbin"):
            info = tarfile.TarInfo(link)
            info.type, info.linkname = tarfile.SYMTYPE, f"usr/{link}"
            tar.addfile(info)
        files = {"etc/passwd": b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/tmp:/bin/false\n",
                 "etc/group": b"root:x:0:\nnogroup:x:65534:\n"}
        if os.path.exists("/etc/ld.so.cache"):
            files["etc/ld.so.cache"] = Path("/etc/ld.so.cache").read_bytes()
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@dataclass(frozen=True)
class DockerLauncher:
    """The Docker backend: starts one evaluator container for a slot."""

    name: ClassVar[str] = "docker"
    spec: SlotSpec
    settings: DockerSettings

    @classmethod
    def availability(cls, settings: object | None = None) -> tuple[bool, str]:
        return engine_answers(_settings(settings).docker_host)

    @classmethod
    def for_slot(cls, spec: SlotSpec, settings: object | None = None) -> "DockerLauncher":
        return cls(spec, _settings(settings))

    def notes(self) -> list[str]:
        s = self.settings
        return [f"docker backend: image {s.image}, no network, read-only root, tmpfs /tmp, "
                f"memory {s.memory_mb} MB, pids {s.pids}, worker user {s.user} with "
                f"{', '.join(WORKER_CAPABILITIES)} only, proxy as nobody"
                + (f", GPU {self.spec.gpu}" if self.spec.gpu is not None else "")]

    def start(self) -> WorkerChannel:
        engine = client(self.settings.docker_host)
        settings = self.settings.resolved()
        if settings.image == OFFLINE_IMAGE and not engine.images.list(name=OFFLINE_IMAGE):
            build_offline_image(self.settings.docker_host)
        spec = self.spec
        container = engine.containers.create(**container_spec(settings, spec.task, spec.limits, spec.cache_dir,
                                                              spec.gpu, spec.mode, spec.threads))
        sock = engine.api.attach_socket(container.id, params={"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1})
        container.start()
        return _ContainerStream(container, sock).channel


class _ContainerStream:
    """Docker's attach stream: stdin raw, stdout and stderr in 8-byte-header frames."""

    def __init__(self, container, sock):
        self.container = container
        self.sock = sock._sock if hasattr(sock, "_sock") else sock
        self.raw = b""
        self.channel = WorkerChannel(self.read_chunk, self.sock.sendall, self.kill)

    def read_chunk(self, timeout_s: float) -> bytes:
        while True:
            out = self._frames()
            if out:
                return out
            ready, _, _ = select.select([self.sock], [], [], timeout_s)
            if not ready:
                raise TimeoutError
            data = self.sock.recv(65536)
            if not data:
                return b""
            self.raw += data

    def _frames(self) -> bytes:
        out = b""
        while len(self.raw) >= 8:
            size = int.from_bytes(self.raw[4:8], "big")
            if len(self.raw) < 8 + size:
                break
            kind, payload, self.raw = self.raw[0], self.raw[8:8 + size], self.raw[8 + size:]
            if kind == 2:
                self.channel.note_stderr(payload.decode(errors="replace"))
            else:
                out += payload
        return out

    def kill(self) -> None:
        try:
            self.sock.close()
        finally:
            try:
                self.container.remove(force=True)
            except Exception:  # noqa: BLE001 - already gone
                pass


def _settings(settings: object | None) -> DockerSettings:
    return settings if isinstance(settings, DockerSettings) else DockerSettings()
