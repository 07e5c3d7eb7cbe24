"""LLM settings, the factory and the scripted back end (agents/llm.py, agents/scripted.py)."""
import json
import socket

import pytest
from langchain_core.messages import HumanMessage

from agents.llm import (
    LLMCallError,
    LLMConfigError,
    LLMSettings,
    LLMUnavailable,
    call_llm,
    make_llm,
    open_llm,
)
from agents.scripted import ScriptedChatModel, ScriptError, load_script


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"spec": "gpt-4o"}, "expected openai:MODEL, local or scripted:FILE"),
        ({"spec": "openai:"}, "needs a model"),
        ({"spec": "scripted:"}, "needs a file"),
        ({"temperature": 3.0}, "temperature"),
        ({"max_tokens": 0}, "positive"),
        ({"retries": -1}, "retries"),
    ],
)
def test_bad_settings_are_one_line_errors(kwargs, message):
    with pytest.raises(LLMConfigError, match=message) as err:
        LLMSettings(**kwargs)
    assert "\n" not in str(err.value)


def test_spec_parts():
    s = LLMSettings(spec="openai:deepseek-chat")
    assert (s.kind, s.target) == ("openai", "deepseek-chat")
    assert LLMSettings().kind == "local"


def test_openai_without_key_or_url_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("MY_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(LLMConfigError, match=r"no API key in \$MY_KEY"):
        make_llm(LLMSettings(spec="openai:gpt-4o-mini", api_key_env="MY_KEY"))


def test_openai_settings_reach_chat_openai(monkeypatch):
    monkeypatch.setenv("MY_KEY", "sk-test")
    llm = make_llm(LLMSettings(spec="openai:some-model", api_key_env="MY_KEY", base_url="http://127.0.0.1:9/v1",
                               temperature=0.3, max_tokens=77, timeout_s=5.0, retries=4, seed=7))
    assert (llm.model_name, llm.temperature, llm.max_tokens, llm.max_retries) == ("some-model", 0.3, 77, 4)
    assert llm.request_timeout == 5.0 and llm.openai_api_base == "http://127.0.0.1:9/v1"
    assert llm.openai_api_key.get_secret_value() == "sk-test" and llm.seed == 7


def test_local_needs_a_url_and_a_running_server():
    with pytest.raises(LLMConfigError, match="no server URL"):
        make_llm(LLMSettings(spec="local"))
    url = f"http://127.0.0.1:{_free_port()}/v1"
    with pytest.raises(LLMUnavailable, match=f"no LLM server answers at {url}") as err:
        make_llm(LLMSettings(spec="local", base_url=url))
    assert "\n" not in str(err.value)
    with pytest.raises(LLMUnavailable):
        with open_llm(LLMSettings(spec="local", base_url=url)):
            pass


def _write(tmp_path, data, name="script.json"):
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def test_scripted_list_replays_in_order_and_cycles(tmp_path):
    path = _write(tmp_path, ["first", {"response": "second"}])
    llm = make_llm(LLMSettings(spec=f"scripted:{path}"))
    texts = [call_llm(llm, [HumanMessage("hi")], "proposer", "init")[0] for _ in range(3)]
    assert texts == ["first", "second", "first"]


def test_scripted_mapping_replays_per_template(tmp_path):
    path = _write(tmp_path, "_note: a comment\ninit: [i1, i2]\ncritic:\n  - c1\ndefault: [d1]\n", "script.yaml")
    llm = make_llm(LLMSettings(spec=f"scripted:{path}"))
    ask = lambda template: call_llm(llm, [HumanMessage("x")], "agent", template)[0]  # noqa: E731
    assert [ask("init"), ask("critic"), ask("init"), ask("mutation"), ask("critic")] == ["i1", "c1", "i2", "d1", "c1"]


def test_scripted_without_a_list_for_the_template_fails_the_call(tmp_path):
    llm = ScriptedChatModel(script={"init": ["only init"]})
    with pytest.raises(LLMCallError, match="no responses for template 'critic'") as err:
        call_llm(llm, [HumanMessage("x")], "critic", "critic")
    assert err.value.record.error and err.value.record.response == ""


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "not found"),
        ("[not json", "cannot read"),
        ("[]", "non-empty list"),
        ('{"init": "text"}', "'init' must be a non-empty list"),
        ("[1]", "neither a string"),
        ('{"_only": "comments"}', "no responses"),
    ],
)
def test_bad_script_files_are_clear_errors(tmp_path, content, message):
    path = tmp_path / "s.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ScriptError, match=message):
        load_script(path)
    with pytest.raises(LLMConfigError):  # ScriptError is a config error for the CLI
        make_llm(LLMSettings(spec=f"scripted:{path}"))


def test_call_record_holds_prompt_response_tokens_and_latency(tmp_path):
    llm = make_llm(LLMSettings(spec=f"scripted:{_write(tmp_path, ['an answer of some length'])}"))
    text, record = call_llm(llm, [HumanMessage("the question")], "mutator", "mutation")
    assert text == "an answer of some length"
    assert (record.agent, record.template, record.response, record.error) == ("mutator", "mutation", text, None)
    assert "the question" in record.prompt and record.prompt.startswith("[human]")
    assert record.tokens_in > 0 and record.tokens_out > 0 and record.latency_s >= 0


def test_scripted_model_is_safe_under_parallel_calls(tmp_path):
    # LangGraph drafts a generation's candidates in parallel with one model.
    from concurrent.futures import ThreadPoolExecutor

    responses = [f"r{i}" for i in range(16)]
    llm = make_llm(LLMSettings(spec=f"scripted:{_write(tmp_path, {'init': responses})}"))
    with ThreadPoolExecutor(8) as pool:
        texts = list(pool.map(lambda _: call_llm(llm, [HumanMessage("x")], "proposer", "init")[0], range(16)))
    assert sorted(texts) == sorted(responses)  # each response handed out exactly once


def test_local_llm_gets_slow_machine_defaults_unless_overridden():
    import argparse

    from agents.llm import LOCAL_DEFAULTS, LLMSettings, add_llm_arguments, settings_from_args

    parser = argparse.ArgumentParser()
    add_llm_arguments(parser)
    local = settings_from_args(parser.parse_args(["--llm", "local"]))
    assert (local.timeout_s, local.retries, local.max_tokens) == (
        LOCAL_DEFAULTS["timeout_s"], LOCAL_DEFAULTS["retries"], LOCAL_DEFAULTS["max_tokens"])
    assert settings_from_args(parser.parse_args(["--llm", "local", "--llm-timeout", "60"])).timeout_s == 60
    remote = settings_from_args(parser.parse_args(["--llm", "openai:gpt-x"]))
    assert remote.timeout_s == LLMSettings().timeout_s and remote.retries == LLMSettings().retries
