"""LLM settings, the provider registry and the record of every call.

``--llm KIND[:TARGET]`` picks a provider, all behind langchain's ``BaseChatModel``:

* ``openai:MODEL`` — any OpenAI-compatible endpoint through ``ChatOpenAI``
  (OpenAI, DeepSeek, Qwen, a local vLLM / llama.cpp / Ollama server);
* ``local`` — the embedded offline model served by ``agents.local_server``
  (started by :func:`open_llm`, or already running at ``--llm-base-url``);
* ``scripted:FILE`` — recorded responses replayed (agents.scripted).

Each provider is one :class:`LLMProvider` subclass registered with
:func:`register_provider` (the shape of OpenEvolve's ``llm/base.py`` +
``init_client``): a new provider is one class in this file, nothing else
changes (docs/extending.md shows the diff). Retries with exponential backoff
on rate limits (429), 5xx, timeouts and dropped connections are the OpenAI
client's own (``max_retries``; it honours ``Retry-After``). Every call goes
through :func:`call_llm`, which returns an :class:`LLMCallRecord` for the
store; this package never writes the database.
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
from typing import Any, ClassVar

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import BaseMessage

from agents.llm_errors import LLMConfigError, LLMUnavailable
from agents.local_server import DEFAULT_SLOTS
from agents.scripted import ScriptedChatModel, load_script

__all__ = ["LLMConfigError", "LLMUnavailable", "LLMCallError", "LLMSettings", "LLMCallRecord", "LLMProvider",
           "PROVIDERS", "register_provider", "provider_for", "make_llm", "open_llm", "call_llm",
           "add_llm_arguments", "settings_from_args", "settings_with_args"]


class LLMCallError(RuntimeError):
    """A call failed after the client's retries; ``record`` holds the details."""

    def __init__(self, record: "LLMCallRecord") -> None:
        super().__init__(f"LLM call for {record.agent}/{record.template} failed: {record.error}")
        self.record = record


@dataclass(frozen=True)
class LLMSettings:
    """How to reach the LLM. Built once from the CLI, passed down unchanged."""

    spec: str = "local"
    """``KIND`` or ``KIND:TARGET``, e.g. ``openai:MODEL`` | ``local`` | ``scripted:FILE``."""
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
        provider = PROVIDERS.get(self.kind)
        if provider is None:
            raise LLMConfigError(f"--llm {self.spec!r}: expected {_usage_list()}")
        if provider.target and not self.target:
            raise LLMConfigError(f"--llm {self.spec!r}: '{self.kind}:' needs a {provider.target.lower()}")
        if not 0.0 <= self.temperature <= 2.0:
            raise LLMConfigError(f"--llm-temperature {self.temperature}: expected 0..2")
        if self.max_tokens < 1 or self.timeout_s <= 0 or self.retries < 0:
            raise LLMConfigError("--llm-max-tokens and --llm-timeout must be positive, --llm-retries >= 0")

    @property
    def kind(self) -> str:
        return self.spec.partition(":")[0]

    @property
    def target(self) -> str:
        """What follows ``KIND:`` (the model name for openai, the file for scripted), or ''."""
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


# -- providers -----------------------------------------------------------------------
class LLMProvider:
    """One way to get a chat model. Subclass, set ``kind``, implement :meth:`make`, and
    decorate with :func:`register_provider`; ``--llm KIND[:TARGET]`` then reaches it."""

    kind: ClassVar[str]
    target: ClassVar[str | None] = None
    """What ``KIND:`` must be followed by (``MODEL``, ``FILE``), or None for nothing."""
    defaults: ClassVar[Mapping[str, Any]] = {}
    """LLMSettings fields this provider defaults differently when the CLI leaves them unset."""
    concurrent_calls: ClassVar[int] = 64
    """Calls a run sends at once; more wait in the caller's queue (graph.nodes.Context.llm_slots)."""

    @property
    def usage(self) -> str:
        return f"{self.kind}:{self.target}" if self.target else self.kind

    def check(self, settings: LLMSettings) -> None:
        """Raise LLMConfigError for settings that cannot work, before any file is written."""

    def make(self, settings: LLMSettings) -> BaseChatModel:
        """The chat model; raise LLMConfigError / LLMUnavailable when it cannot be built."""
        raise NotImplementedError

    @contextlib.contextmanager
    def open(self, settings: LLMSettings) -> Iterator[BaseChatModel]:
        """The chat model for the length of a run (override to start and stop a server)."""
        yield self.make(settings)


PROVIDERS: dict[str, LLMProvider] = {}
"""kind -> provider, in registration order (the first is listed first in --help)."""


def register_provider(cls: type[LLMProvider]) -> type[LLMProvider]:
    """Class decorator: make ``cls`` reachable as ``--llm cls.kind``."""
    PROVIDERS[cls.kind] = cls()
    return cls


def provider_for(settings: LLMSettings) -> LLMProvider:
    """The registered provider of ``settings.kind`` (LLMSettings has checked that it exists)."""
    return PROVIDERS[settings.kind]


def _usage_list() -> str:
    names = [p.usage for p in PROVIDERS.values()]
    return ", ".join(names[:-1]) + " or " + names[-1] if len(names) > 1 else "".join(names)


@register_provider
class OpenAIProvider(LLMProvider):
    """Any OpenAI-compatible endpoint; the key comes from ``$api_key_env``."""

    kind, target = "openai", "MODEL"

    def make(self, settings: LLMSettings) -> BaseChatModel:
        base_url = settings.base_url or os.environ.get("OPENAI_BASE_URL") or None
        key = os.environ.get(settings.api_key_env)
        if not key and base_url is None:
            raise LLMConfigError(
                f"--llm {settings.spec}: no API key in ${settings.api_key_env} "
                "(set it, name another variable with --llm-api-key-env, or give --llm-base-url)"
            )
        return chat_openai(settings, model=settings.target, base_url=base_url, key=key or "unused")


@register_provider
class LocalProvider(LLMProvider):
    """The embedded offline model (agents.local_server), or a server already at ``base_url``."""

    kind = "local"
    concurrent_calls = DEFAULT_SLOTS
    """As many calls in flight as the embedded server has slots (2: measured best on 2 cores,
    benchmarks/results/local_llm_slots.json); queueing the rest in the caller (not in the
    server) keeps each call's client timeout for its own work."""
    defaults = {"max_tokens": 700, "timeout_s": 900.0, "retries": 0}
    """For the embedded model on 2 CPU cores (benchmarks/results/local_llm.json): an
    init prompt of ~4k tokens takes minutes, so a short timeout only cancels work
    and a retry would redo it; 700 tokens hold a reasoning and one proxy."""

    def make(self, settings: LLMSettings) -> BaseChatModel:
        if settings.base_url is None:
            raise LLMConfigError("--llm local: no server URL; use open_llm() to start one or pass --llm-base-url")
        check_endpoint(settings.base_url)
        model = Path(settings.local_model).stem if settings.local_model else "local"  # the server ignores it
        return chat_openai(settings, model=model, base_url=settings.base_url, key="local")

    @contextlib.contextmanager
    def open(self, settings: LLMSettings) -> Iterator[BaseChatModel]:
        """Without ``--llm-base-url``: the embedded server, started here and stopped on exit
        (errors and Ctrl-C included)."""
        if settings.base_url is not None:
            yield self.make(settings)
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
                server = stack.enter_context(LocalLLMServer(model_path=settings.local_model,
                                                            log_dir=settings.log_dir))
            except LocalLLMError as err:  # engine or model missing, port taken, start-up timeout
                raise LLMUnavailable(f"--llm local: {err}") from None
            yield self.make(dataclasses.replace(settings, base_url=server.base_url))


@register_provider
class ScriptedProvider(LLMProvider):
    """Recorded responses replayed through the real parsing (tests, offline demos)."""

    kind, target = "scripted", "FILE"

    def check(self, settings: LLMSettings) -> None:
        if not Path(settings.target).is_file():
            raise LLMConfigError(f"scripted LLM file not found: {settings.target}")

    def make(self, settings: LLMSettings) -> BaseChatModel:
        return ScriptedChatModel(script=load_script(settings.target))


LOCAL_DEFAULTS = LocalProvider.defaults


def make_llm(settings: LLMSettings) -> BaseChatModel:
    """A chat model for ``settings``. Raises LLMConfigError / LLMUnavailable."""
    return provider_for(settings).make(settings)


@contextlib.contextmanager
def open_llm(settings: LLMSettings) -> Iterator[BaseChatModel]:
    """``make_llm`` plus whatever the provider must run meanwhile (the local server)."""
    with provider_for(settings).open(settings) as llm:
        yield llm


def chat_openai(settings: LLMSettings, model: str, base_url: str | None, key: str) -> BaseChatModel:
    """``ChatOpenAI`` with the settings' sampling, length, timeout and retries."""
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


# -- calls -------------------------------------------------------------------------------
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


# -- command line ----------------------------------------------------------------------
@dataclass(frozen=True)
class _Option:
    flag: str
    field: str
    type: type = str
    help: str = ""

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")


def _local(name: str) -> str:
    return f"local: {LocalProvider.defaults[name]:g}"


OPTIONS: tuple[_Option, ...] = (
    _Option("--llm", "spec", help="{providers} (default: local)"),
    _Option("--llm-base-url", "base_url",
            help="OpenAI-compatible endpoint (default: $OPENAI_BASE_URL; local: start the embedded server)"),
    _Option("--llm-api-key-env", "api_key_env",
            help=f"environment variable holding the API key (default: {LLMSettings.api_key_env})"),
    _Option("--llm-model", "local_model", help="GGUF file for --llm local (default: the packaged model)"),
    _Option("--llm-temperature", "temperature", float, f"default: {LLMSettings.temperature:g}"),
    _Option("--llm-max-tokens", "max_tokens", int, f"default: {LLMSettings.max_tokens}; {_local('max_tokens')}"),
    _Option("--llm-timeout", "timeout_s", float,
            f"seconds per request (default: {LLMSettings.timeout_s:g}; {_local('timeout_s')})"),
    _Option("--llm-retries", "retries", int,
            f"retries on 429 / 5xx / timeouts (default: {LLMSettings.retries}; {_local('retries')})"),
)
"""The ``--llm*`` options and the LLMSettings field each one sets: the one map between them."""


def add_llm_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``--llm*`` options, for any CLI that needs an LLM (unset options stay None)."""
    group = parser.add_argument_group("LLM")
    for option in OPTIONS:
        usage = " | ".join(p.usage for p in PROVIDERS.values())  # registered by now, late ones included
        group.add_argument(option.flag, type=option.type, default=None,
                           help=option.help.replace("{providers}", usage))


def settings_with_args(base: LLMSettings | None, args: argparse.Namespace, **fixed: Any) -> LLMSettings:
    """``base`` with the ``--llm*`` options that were given; ``fixed`` fields (seed, log_dir) last.

    Options left unset keep ``base``'s value, or, when the provider kind changes
    (or there is no base), take the new provider's defaults (LocalProvider.defaults).
    """
    given = {o.field: getattr(args, o.dest) for o in OPTIONS if getattr(args, o.dest, None) is not None}
    spec = given.get("spec", base.spec if base is not None else LLMSettings.spec)
    kind = spec.partition(":")[0]
    if base is None or base.kind != kind:
        provider = PROVIDERS.get(kind)
        start = {**(provider.defaults if provider else {}), "spec": spec}
        if base is not None:  # a new provider keeps the run's sampling seed and log folder
            start.update(seed=base.seed, log_dir=base.log_dir)
        base = LLMSettings(**{**start, **{k: v for k, v in given.items() if k != "spec"}})
    return dataclasses.replace(base, **given, **fixed)


def settings_from_args(args: argparse.Namespace, log_dir: str | None = None, seed: int | None = None) -> LLMSettings:
    """LLMSettings from the options of :func:`add_llm_arguments`; options left
    unset take the defaults of the chosen provider (``LocalProvider.defaults`` for local)."""
    return settings_with_args(None, args, log_dir=log_dir, seed=seed)
