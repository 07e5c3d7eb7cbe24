"""The LLM provider registry: one class per provider, reachable from --llm, defaults per provider."""
import argparse

import pytest
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, HumanMessage

from agents.llm import (
    PROVIDERS,
    LLMConfigError,
    LLMProvider,
    LLMSettings,
    add_llm_arguments,
    call_llm,
    make_llm,
    open_llm,
    register_provider,
    settings_from_args,
    settings_with_args,
)


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_llm_arguments(parser)
    return parser.parse_args(list(argv))


def test_the_three_providers_are_registered_in_order():
    assert list(PROVIDERS)[:3] == ["openai", "local", "scripted"]
    assert "openai:MODEL | local | scripted:FILE" in _help()


def _help() -> str:
    parser = argparse.ArgumentParser()
    add_llm_arguments(parser)
    return parser.format_help()


def test_a_new_provider_is_one_registered_class():
    @register_provider
    class Echo(LLMProvider):
        kind, target = "echo", "WORD"
        defaults = {"max_tokens": 7}

        def make(self, settings):
            return GenericFakeChatModel(messages=iter([AIMessage(settings.target)]))

    try:
        settings = settings_from_args(_args("--llm", "echo:hello"))
        assert settings.max_tokens == 7  # the provider's own default
        with open_llm(settings) as llm:
            assert call_llm(llm, [HumanMessage("x")], "proposer", "init")[0] == "hello"
        with pytest.raises(LLMConfigError, match="needs a word"):
            LLMSettings(spec="echo:")
        assert "echo:WORD" in _help()
    finally:
        del PROVIDERS["echo"]
    with pytest.raises(LLMConfigError, match="expected openai:MODEL, local or scripted:FILE"):
        LLMSettings(spec="echo:hello")


def test_settings_with_args_keeps_the_base_unless_the_provider_changes():
    base = settings_from_args(_args("--llm", "local", "--llm-timeout", "60"), seed=3)
    assert (base.timeout_s, base.max_tokens, base.seed) == (60, 700, 3)
    same = settings_with_args(base, _args("--llm-temperature", "0.2"))
    assert (same.timeout_s, same.temperature, same.seed) == (60, 0.2, 3)
    other = settings_with_args(base, _args("--llm", "openai:gpt-x"))
    assert (other.spec, other.timeout_s, other.max_tokens, other.seed) == ("openai:gpt-x", 120.0, 1024, 3)


def test_scripted_provider_checks_its_file(tmp_path):
    settings = LLMSettings(spec=f"scripted:{tmp_path / 'missing.json'}")
    with pytest.raises(LLMConfigError, match="not found"):
        PROVIDERS["scripted"].check(settings)
    with pytest.raises(LLMConfigError, match="not found"):
        make_llm(settings)
