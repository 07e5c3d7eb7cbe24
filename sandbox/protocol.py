"""The sandbox wire format: one evaluation request in, one result out, as JSON lines.

Standard library only: the worker imports this module on the evaluator
machine's image, where only torch / numpy / scipy are installed.

A line that is not valid JSON, or JSON of the wrong shape or version, never
crashes either side: ``request_from_json`` raises ``ProtocolError`` (the
worker answers with an ``error`` result) and ``result_from_json`` returns an
``error`` result.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Literal

PROTOCOL_VERSION = 1

Status = Literal["ok", "rejected", "error", "timeout", "killed"]
STATUSES: tuple[str, ...] = ("ok", "rejected", "error", "timeout", "killed")
"""ok: judged; rejected: refused by the static gate, never ran; error: ran and
raised or returned invalid scores; timeout: over the wall-clock limit; killed:
died (signal, resource limit, exit) before answering."""

TRACEBACK_LINES = 12
"""How many trailing traceback lines a result keeps (what the critic reads)."""


class ProtocolError(ValueError):
    """A message that is not a valid request or result of this version."""


@dataclass(frozen=True)
class Limits:
    """Resource limits for one evaluation (and for the slot that runs it)."""

    timeout_s: float = 120.0
    """Wall-clock limit of one evaluation; the proxy's process group is killed after it."""
    cpu_s: int = 300
    """CPU-time limit (RLIMIT_CPU) of the process running the proxy."""
    memory_mb: int = 2048
    """Address space the proxy may add on top of the warm worker (RLIMIT_AS)."""
    file_size_mb: int = 16
    """Largest file the proxy may write (RLIMIT_FSIZE); it can only write to its scratch dir."""
    open_files: int = 64
    """Open file descriptors beyond those the process holds already (RLIMIT_NOFILE)."""
    processes: int = 64
    """Processes and threads of the sandbox user beyond the slot's own (RLIMIT_NPROC)."""
    fitness_s: float = 600.0
    """Time allowed, after the proxy answered, for the trusted fitness computation
    (allocation, quantization, accuracy); the slot is replaced when it overruns."""
    scratch_mb: int = 64
    """Size of the slot's private tmpfs scratch (namespaced process backend, Docker)."""
    startup_s: float = 900.0
    """Wall-clock limit for a slot to load model, data, features and ground truth."""
    static_gate: bool = True
    """Run the static AST gate first. Only the hostile-corpus tests turn it off,
    to show that the process isolation contains what the gate would refuse."""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Limits":
        return cls(**_known_fields(cls, data, "limits"))


@dataclass(frozen=True)
class EvaluationRequest:
    """Evaluate ``proxy_source`` on ``task`` (``mpq.task.Task.to_dict()``)."""

    id: str
    proxy_source: str
    task: dict
    limits: Limits = field(default_factory=Limits)
    version: int = PROTOCOL_VERSION


@dataclass(frozen=True)
class EvaluationResult:
    """What became of one request. Fitness fields are None unless status is ``ok``."""

    id: str
    status: Status
    scores: list[float] | None = None
    rho_sens: float | None = None
    acc_quant: float | None = None
    phi: float | None = None
    bits: dict[str, int] | None = None
    size_mb: float | None = None
    avg_bits: float | None = None
    bops: float | None = None
    timings: dict[str, float] = field(default_factory=dict)
    reason: str = ""
    """One line: why it failed (empty when ok)."""
    traceback_tail: str = ""
    """The last lines of the proxy's traceback, for the critic."""
    isolation_notes: list[str] = field(default_factory=list)
    """How the evaluation was isolated, and which protections were unavailable."""
    version: int = PROTOCOL_VERSION

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def failure(request_id: str, status: Status, reason: str, traceback_tail: str = "",
            **extra) -> EvaluationResult:
    """A result for a request that did not produce a fitness."""
    return EvaluationResult(id=request_id, status=status, reason=one_line(reason),
                            traceback_tail=tail(traceback_tail), **extra)


def one_line(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def tail(text: str, lines: int = TRACEBACK_LINES, chars: int = 4000) -> str:
    kept = "\n".join(str(text).rstrip().splitlines()[-lines:])
    return kept[-chars:]


# --- encoding -----------------------------------------------------------------

def request_to_json(request: EvaluationRequest) -> str:
    data = dataclasses.asdict(request)
    return json.dumps(data, allow_nan=False)


def request_from_json(line: str | bytes) -> EvaluationRequest:
    data = _load_object(line)
    _check_version(data)
    fields = _known_fields(EvaluationRequest, data, "request")
    for name, kind in (("id", str), ("proxy_source", str), ("task", dict)):
        if not isinstance(fields.get(name), kind):
            raise ProtocolError(f"request field {name!r} missing or not a {kind.__name__}")
    limits = fields.get("limits", {})
    if not isinstance(limits, dict):
        raise ProtocolError("request field 'limits' is not an object")
    try:
        fields["limits"] = Limits.from_dict(limits)
    except TypeError as exc:
        raise ProtocolError(f"bad limits: {exc}") from None
    return EvaluationRequest(**fields)


def result_to_json(result: EvaluationResult) -> str:
    """One JSON line; non-finite numbers (a broken proxy's NaN) become null."""
    return json.dumps(_finite_or_none(dataclasses.asdict(result)), allow_nan=False)


def result_from_json(line: str | bytes, request_id: str = "?") -> EvaluationResult:
    """Decode a result; anything malformed becomes an ``error`` result for ``request_id``."""
    try:
        data = _load_object(line)
        _check_version(data)
        fields = _known_fields(EvaluationResult, data, "result")
        if fields.get("status") not in STATUSES:
            raise ProtocolError(f"unknown status {fields.get('status')!r}")
        if not isinstance(fields.get("id"), str):
            raise ProtocolError("result has no id")
        return EvaluationResult(**fields)
    except (ProtocolError, TypeError) as exc:
        return failure(request_id, "error", f"malformed result from the evaluator: {exc}")


def _load_object(line: str | bytes) -> dict:
    try:
        data = json.loads(line)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ProtocolError(f"expected a JSON object, got {type(data).__name__}")
    return data


def _check_version(data: dict) -> None:
    if data.get("version", PROTOCOL_VERSION) != PROTOCOL_VERSION:
        raise ProtocolError(f"protocol version {data.get('version')!r}, expected {PROTOCOL_VERSION}")


def _known_fields(cls, data: dict, what: str) -> dict:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ProtocolError(f"unknown {what} field(s): {', '.join(unknown)}")
    return dict(data)


def _finite_or_none(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite_or_none(v) for v in value]
    return value


# --- validation -----------------------------------------------------------------

def validate(result: EvaluationResult, num_layers: int | None) -> EvaluationResult:
    """An ``ok`` result counts only with one finite score per layer and finite fitness."""
    if result.status != "ok":
        return result
    problem = _invalid_reason(result, num_layers)
    if problem is None:
        return result
    return dataclasses.replace(
        result, status="error", reason=problem, rho_sens=None, acc_quant=None, phi=None,
        bits=None, size_mb=None, avg_bits=None, bops=None)


def _invalid_reason(result: EvaluationResult, num_layers: int | None) -> str | None:
    scores = result.scores
    if not isinstance(scores, list) or not all(_is_real(s) for s in scores):
        return "scores are not a list of finite numbers"
    if num_layers is not None and len(scores) != num_layers:
        return f"{len(scores)} scores for {num_layers} layers"
    for name in ("rho_sens", "acc_quant", "phi"):
        if not _is_real(getattr(result, name)):
            return f"{name} is not a finite number"
    return None


def _is_real(value) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


# --- slot start-up ----------------------------------------------------------------

@dataclass(frozen=True)
class SlotMessage:
    """What a worker says before serving requests: loading progress, then ready or failed."""

    kind: Literal["progress", "ready", "failed"]
    done: int = 0
    total: int = 0
    num_layers: int = 0
    load_s: float = 0.0
    mode: str = ""
    """``fork`` (a child per evaluation, warm state untouchable) or ``in-process``."""
    isolation_notes: list[str] = field(default_factory=list)
    reason: str = ""
    traceback_tail: str = ""
    version: int = PROTOCOL_VERSION


def slot_message_to_json(message: SlotMessage) -> str:
    return json.dumps(dataclasses.asdict(message), allow_nan=False)


def slot_message_from_json(line: str | bytes) -> SlotMessage:
    data = _load_object(line)
    _check_version(data)
    fields = _known_fields(SlotMessage, data, "slot message")
    if fields.get("kind") not in ("progress", "ready", "failed"):
        raise ProtocolError(f"unknown slot message kind {fields.get('kind')!r}")
    try:
        return SlotMessage(**fields)
    except TypeError as exc:
        raise ProtocolError(str(exc)) from None
