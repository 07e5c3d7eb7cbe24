"""The LLM factory and the record of every call.

``--llm`` picks one of three back ends, all behind langchain's ``BaseChatModel``:

* ``openai:MODEL`` — any OpenAI-compatible endpoint through ``ChatOpenAI``
  (OpenAI, DeepSeek, Qwen, a local vLLM / llama.cpp / Ollama server);
* ``local`` — the embedded offline model served by ``agents.local_server``
  (started by :func:`open_llm`, or already running at ``--llm-base-url``);
* ``scripted:FILE`` — recorded responses replayed (agents.scripted).

Retries with exponential backoff on rate limits (429), 5xx, timeouts and
dropped connections are the OpenAI client's own (``max_retries``; it honours
``Retry-After``). Every call goes through :func:`call_llm`, which returns an
:class:`LLMCallRecord` for the store; this package never writes the database.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import BaseMessage

KINDS = ("openai", "local", "scripted")


class LLMConfigError(ValueError):
    """The LLM settings are wrong (bad --llm spec, missing key or file)."""


class LLMUnavailable(RuntimeError):
    """The LLM endpoint cannot be reached or the local server cannot start."""


class LLMCallError(RuntimeError):
    """A call failed after the client's retries; ``record`` holds the details."""

    def __init__(self, record: "LLMCallRecord") -> None:
        super().__init__(f"LLM call for {record.agent}/{record.template} failed: {record.error}")
        self.record = record


@dataclass(frozen=True)
class LLMSettings:
    """How to reach the LLM. Built once from the CLI, passed down unchanged."""

    spec: str = "local"
    """``openai:MODEL`` | ``local`` | ``scripted:FILE``."""
    base_url: str | None = None
    """Endpoint, e.g. ``http://127.0.0.1:8080/v1``. openai: default ``$OPENAI_BASE_URL``
    (then OpenAI itself); local: None = start the embedded server."""
    api_key_env: str = "OPENAI_API_KEY"
    """Name of the environment variable holding the API key (never the key)."""
    temperature: float = 0.8
    """Sampling temperature; evolution wants some diversity."""
    max_tokens: int = 1024
    """Upper bound on the response length (reasoning + code)."""
    timeout_s: float = 120.0
    """Seconds per HTTP request before it counts as failed (and is retried)."""
    retries: int = 3
    """Retries per call on 429 / 5xx / timeout / connection errors, with backoff."""
    seed: int | None = None
    """Sampling seed passed to endpoints that honour it."""
    local_model: str | None = None
    """``--llm-model``: a GGUF file for the local server (None = the packaged one)."""
    log_dir: str | None = None
    """Where the local server writes its log (the run folder)."""
    extra_body: Mapping[str, Any] | None = None
    """Extra JSON fields for each request (e.g. a grammar for llama.cpp)."""

    def __post_init__(self) -> None:
        kind, _, target = self.spec.partition(":")
        if kind not in KINDS:
            raise LLMConfigError(f"--llm {self.spec!r}: expected openai:MODEL, local or scripted:FILE")
        if kind in ("openai", "scripted") and not target:
            raise LLMConfigError(f"--llm {self.spec!r}: '{kind}:' needs a {'model' if kind == 'openai' else 'file'}")
        if not 0.0 <= self.temperature <= 2.0:
            raise LLMConfigError(f"--llm-temperature {self.temperature}: expected 0..2")
        if self.max_tokens < 1 or self.timeout_s <= 0 or self.retries < 0:
            raise LLMConfigError("--llm-max-tokens and --llm-timeout must be positive, --llm-retries >= 0")

    @property
    def kind(self) -> str:
        return self.spec.partition(":")[0]

    @property
    def target(self) -> str:
        """The model name (openai), the file (scripted), or '' (local)."""
        return self.spec.partition(":")[2]


@dataclass(frozen=True)
class LLMCallRecord:
    """One LLM call, as stored in the run's ``llm_calls`` table."""

    agent: str
    template: str
    prompt: str
    response: str
    tokens_in: int
    tokens_out: int
    latency_s: float
    error: str | None = None
    model: str = ""


def make_llm(settings: LLMSettings) -> BaseChatModel:
    """A chat model for ``settings``. Raises LLMConfigError / LLMUnavailable."""
    if settings.kind == "scripted":
        from agents.scripted import ScriptedChatModel, load_script

        return ScriptedChatModel(script=load_script(settings.target))
    if settings.kind == "local":
        if settings.base_url is None:
            raise LLMConfigError("--llm local: no server URL; use open_llm() to start one or pass --llm-base-url")
        check_endpoint(settings.base_url)
        model = Path(settings.local_model).stem if settings.local_model else "local"  # the server ignores it
        return _chat_openai(settings, model=model, base_url=settings.base_url, key="local")
    base_url = settings.base_url or os.environ.get("OPENAI_BASE_URL") or None
    key = os.environ.get(settings.api_key_env)
    if not key and base_url is None:
        raise LLMConfigError(
            f"--llm {settings.spec}: no API key in ${settings.api_key_env} "
            "(set it, name another variable with --llm-api-key-env, or give --llm-base-url)"
        )
    return _chat_openai(settings, model=settings.target, base_url=base_url, key=key or "unused")


def _chat_openai(settings: LLMSettings, model: str, base_url: str | None, key: str) -> BaseChatModel:
    from langchain_openai import ChatOpenAI

    extra: dict[str, Any] = {}
    if settings.seed is not None:
        extra["seed"] = settings.seed
    body = dict(settings.extra_body or {})
    if base_url is not None:
        # langchain-openai sends OpenAI's newer `max_completion_tokens`; servers
        # such as llama.cpp, vLLM or DeepSeek read `max_tokens` and would
        # otherwise generate until their context is full.
        body.setdefault("max_tokens", settings.max_tokens)
    if body:
        extra["extra_body"] = body
    return ChatOpenAI(
        model=model,
        base_url=base_url,
        api_key=key,
        temperature=settings.temperature,
        max_tokens=settings.max_tokens,
        timeout=settings.timeout_s,
        max_retries=settings.retries,
        **extra,
    )


def check_endpoint(base_url: str, timeout_s: float = 3.0) -> None:
    """Raise LLMUnavailable unless an OpenAI-compatible server answers at ``base_url``."""
    url = base_url.rstrip("/") + "/models"
    loopback = urllib.parse.urlparse(url).hostname in ("127.0.0.1", "localhost", "::1")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({})) if loopback else urllib.request.build_opener()
    try:
        with opener.open(url, timeout=timeout_s) as reply:
            reply.read()
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise LLMUnavailable(
            f"no LLM server answers at {base_url} ({reason}); start it, fix --llm-base-url, "
            "or omit --llm-base-url so that --llm local starts the embedded one"
        ) from None


@contextlib.contextmanager
def open_llm(settings: LLMSettings) -> Iterator[BaseChatModel]:
    """``make_llm``, plus the embedded server's lifetime for ``--llm local``
    without ``--llm-base-url``: started here, stopped on exit (errors, Ctrl-C)."""
    if settings.kind != "local" or settings.base_url is not None:
        yield make_llm(settings)
        return
    try:
        from agents.local_model import LocalLLMError
        from agents.local_server import LocalLLMServer
    except ImportError as err:
        raise LLMUnavailable(
            f"--llm local: the embedded LLM server is not available ({err}); "
            "run `make install`, or use --llm-base-url / --llm openai:MODEL"
        ) from None
    with contextlib.ExitStack() as stack:
        try:
            server = stack.enter_context(LocalLLMServer(model_path=settings.local_model, log_dir=settings.log_dir))
        except LocalLLMError as err:  # engine or model missing, port taken, start-up timeout
            raise LLMUnavailable(f"--llm local: {err}") from None
        yield make_llm(dataclasses.replace(settings, base_url=server.base_url))


def call_llm(
    llm: BaseChatModel, messages: Sequence[BaseMessage], agent: str, template: str
) -> tuple[str, LLMCallRecord]:
    """Invoke ``llm`` once; return the response text and the call's record.

    Raises LLMCallError (carrying the record, with ``error`` set) when the call
    fails after the client's retries.
    """
    prompt = render_messages(messages)
    model = str(getattr(llm, "model_name", None) or getattr(llm, "_llm_type", ""))
    config = {"metadata": {"agent": agent, "template": template}, "run_name": f"{agent}:{template}"}
    start = time.perf_counter()
    try:
        message = llm.invoke(list(messages), config=config)
    except Exception as err:  # any failure of the back end is reported, not hidden
        error = f"{type(err).__name__}: {err}".splitlines()[0][:500]
        latency = time.perf_counter() - start
        raise LLMCallError(LLMCallRecord(agent, template, prompt, "", 0, 0, latency, error, model)) from err
    latency = time.perf_counter() - start
    text = message.text if isinstance(message.text, str) else message.text()
    usage = message.usage_metadata or {}
    record = LLMCallRecord(
        agent, template, prompt, text,
        tokens_in=int(usage.get("input_tokens", 0)),
        tokens_out=int(usage.get("output_tokens", 0)),
        latency_s=latency, error=None, model=model,
    )
    return text, record


def render_messages(messages: Sequence[BaseMessage]) -> str:
    """The prompt as one readable text, for the store."""
    return "\n\n".join(f"[{m.type}]\n{m.content}" for m in messages)


LOCAL_DEFAULTS = {"max_tokens": 700, "timeout_s": 900.0, "retries": 0}
"""For the embedded model on 2 CPU cores (benchmarks/results/local_llm.json): an
init prompt of ~4k tokens takes minutes, so a short timeout only cancels work
and a retry would redo it; 700 tokens hold a reasoning and one proxy."""


def add_llm_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``--llm*`` options, for any CLI that needs an LLM."""
    d = LLMSettings()
    g = parser.add_argument_group("LLM")
    g.add_argument("--llm", default=d.spec, help="openai:MODEL | local | scripted:FILE (default: %(default)s)")
    g.add_argument("--llm-base-url", default=None,
                   help="OpenAI-compatible endpoint (default: $OPENAI_BASE_URL; local: start the embedded server)")
    g.add_argument("--llm-api-key-env", default=d.api_key_env,
                   help="environment variable holding the API key (default: %(default)s)")
    g.add_argument("--llm-model", default=None, help="GGUF file for --llm local (default: the packaged model)")
    g.add_argument("--llm-temperature", type=float, default=d.temperature)
    g.add_argument("--llm-max-tokens", type=int, default=None,
                   help=f"default {d.max_tokens}; local: {LOCAL_DEFAULTS['max_tokens']}")
    g.add_argument("--llm-timeout", type=float, default=None,
                   help=f"seconds per request (default {d.timeout_s:g}; local: {LOCAL_DEFAULTS['timeout_s']:g})")
    g.add_argument("--llm-retries", type=int, default=None,
                   help=f"retries on 429 / 5xx / timeouts (default {d.retries}; local: {LOCAL_DEFAULTS['retries']})")


def settings_from_args(args: argparse.Namespace, log_dir: str | None = None, seed: int | None = None) -> LLMSettings:
    """LLMSettings from the options of :func:`add_llm_arguments`; options left
    unset take the defaults of the chosen kind (``LOCAL_DEFAULTS`` for local)."""
    defaults = dict(LOCAL_DEFAULTS) if args.llm == "local" else {}
    chosen = {"max_tokens": args.llm_max_tokens, "timeout_s": args.llm_timeout, "retries": args.llm_retries}
    overrides = defaults | {k: v for k, v in chosen.items() if v is not None}
    return LLMSettings(
        spec=args.llm, base_url=args.llm_base_url, api_key_env=args.llm_api_key_env,
        temperature=args.llm_temperature, seed=seed, **overrides,
        local_model=args.llm_model, log_dir=log_dir,
    )
