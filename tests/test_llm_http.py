"""A real HTTP round trip: ChatOpenAI against an OpenAI-compatible stub server
on 127.0.0.1 that this test starts (retries, backoff and timeouts for real)."""
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from agents.context import DraftContext
from agents.llm import LLMCallError, LLMSettings, make_llm
from agents.prompts import PromptSet
from agents.proposer import propose

F = "```"
ANSWER = f"Outliers stretch the grid.\n{F}python\ndef score(layer):\n    return float(layer.weight.abs().max())\n{F}"


class Stub:
    """Answers /v1/chat/completions from a plan: ("ok", text) | ("status", code) | ("sleep", s)."""

    def __init__(self):
        self.plan: list[tuple] = []
        self.requests: list[dict] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def _handler(stub):
        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                self._send(200, {"object": "list", "data": [{"id": "stub", "object": "model"}]})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                stub.requests.append(body)
                kind, arg = stub.plan.pop(0) if stub.plan else ("ok", ANSWER)
                if kind == "sleep":
                    time.sleep(arg)
                    kind, arg = "ok", ANSWER
                if kind == "status":
                    headers = {"retry-after-ms": "20"} if arg == 429 else {}
                    return self._send(arg, {"error": {"message": f"stub {arg}", "type": "server_error"}}, headers)
                self._send(200, {
                    "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": body["model"],
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": arg}}],
                    "usage": {"prompt_tokens": 321, "completion_tokens": 45, "total_tokens": 366},
                })

            def _send(self, code, payload, headers=None):
                data = json.dumps(payload).encode()
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for key, value in (headers or {}).items():
                        self.send_header(key, value)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client timed out
                    pass

        return Handler


@pytest.fixture
def stub():
    server = Stub()
    yield server
    server.server.shutdown()
    server.server.server_close()


@pytest.fixture(scope="module")
def prompts():
    return PromptSet.load()


CTX = DraftContext(task="Quantize a tiny CNN.", layers="0 conv 3x3")


def _settings(stub, **kwargs):
    base = dict(spec="openai:stub-model", base_url=stub.url, temperature=0.2, max_tokens=300, timeout_s=10.0, retries=2)
    return LLMSettings(**{**base, **kwargs})


def test_round_trip_drafts_a_proxy(stub, prompts):
    draft, record = propose(make_llm(_settings(stub)), prompts, CTX)
    assert draft.code.startswith("def score(layer)") and draft.reasoning == "Outliers stretch the grid."
    assert (record.tokens_in, record.tokens_out, record.error) == (321, 45, None)
    (request,) = stub.requests
    assert (request["model"], request["temperature"], request["max_tokens"]) == ("stub-model", 0.2, 300)
    assert request.get("max_completion_tokens", 300) == 300
    system, user = request["messages"]
    assert system["role"] == "system" and "Higher score = more sensitive" in system["content"]
    assert user["role"] == "user" and "Quantize a tiny CNN." in user["content"]


@pytest.mark.parametrize("status", [500, 429])
def test_retries_after_server_error_and_rate_limit(stub, prompts, status):
    stub.plan = [("status", status), ("ok", ANSWER)]
    draft, record = propose(make_llm(_settings(stub)), prompts, CTX)
    assert len(stub.requests) == 2 and record.error is None
    assert "def score" in draft.code


def test_gives_up_after_the_configured_retries(stub, prompts):
    stub.plan = [("status", 503)] * 5
    with pytest.raises(LLMCallError, match="503") as err:
        propose(make_llm(_settings(stub, retries=1)), prompts, CTX)
    assert len(stub.requests) == 2
    assert err.value.record.agent == "proposer" and "503" in err.value.record.error


def test_timeout_is_retried_then_reported(stub, prompts):
    stub.plan = [("sleep", 1.5), ("ok", ANSWER)]
    draft, record = propose(make_llm(_settings(stub, timeout_s=0.3, retries=1)), prompts, CTX)
    assert len(stub.requests) == 2 and "def score" in draft.code

    stub.plan = [("sleep", 1.5), ("sleep", 1.5)]
    start = time.perf_counter()
    with pytest.raises(LLMCallError, match="(?i)timed out|timeout") as err:
        propose(make_llm(_settings(stub, timeout_s=0.3, retries=1)), prompts, CTX)
    assert len(stub.requests) == 4 and time.perf_counter() - start < 10
    assert err.value.record.latency_s >= 0.6


def test_local_kind_talks_to_a_running_server(stub, prompts):
    llm = make_llm(LLMSettings(spec="local", base_url=stub.url, retries=0))
    draft, _ = propose(llm, prompts, CTX)
    assert "def score" in draft.code and stub.requests[0]["model"] == "local"
