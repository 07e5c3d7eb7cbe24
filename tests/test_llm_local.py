"""--llm local end to end: open_llm starts the packaged model's server, an agent
drafts a proxy through it, and the server is gone afterwards. Runs where the
model is installed (marker ``llm``)."""
import urllib.parse
import urllib.request

import pytest

from agents.context import DraftContext, describe_task
from agents.drafts import DraftError
from agents.llm import LLMSettings, LLMUnavailable, open_llm
from agents.prompts import PromptSet, default_prompt_set
from agents.proposer import propose

local_model = pytest.importorskip("agents.local_model")
local_server = pytest.importorskip("agents.local_server")

needs_model = pytest.mark.skipif(not local_model.packaged_model_available(), reason="packaged local LLM not installed")


@pytest.mark.llm
@needs_model
def test_open_llm_local_drafts_a_proxy_and_stops_the_server(tmp_path):
    # The one test that runs the packaged model (its start-up and a draft are the suite's costliest
    # seconds): the server's health and model, the grammar's shape on a real prompt, and the stop.
    # The local provider's own timeout / retries (LocalProvider.defaults, what graph.run --llm local uses), not
    # the dataclass's 120 s x 4 tries: on 2 busy cores a draft takes minutes and a retry redoes the same work
    # (at load 8 the test failed that way after 8 minutes).
    settings = LLMSettings(spec="local", max_tokens=400, temperature=0.2, seed=0, log_dir=str(tmp_path),
                           timeout_s=900, retries=0)
    ctx = DraftContext(task=describe_task({"model": "resnet18", "dataset": "cifar10", "budget": "3avg"}))
    with open_llm(settings) as llm:
        base_url = llm.openai_api_base
        port = urllib.parse.urlsplit(base_url).port
        assert local_server.served_model("127.0.0.1", port) == local_model.DEFAULT_MODEL.name  # health
        try:
            # the set --llm local drafts with (compact): 840 prompt tokens instead of 1,798 for the full set
            draft, record = propose(llm, PromptSet.load(default_prompt_set("local")), ctx)
            assert "def score" in draft.code and record.tokens_out > 0
            response = record.response
        except DraftError as err:  # a small model may miss; the call itself must have worked
            assert err.record is not None and err.record.error is None and err.record.response
            response = err.record.response
    # The grammar's shape: reasoning, one python block, nothing after it (seeded: the same answer each run,
    # which ends before the token limit).
    reasoning, fence, code = response.partition("```python\n")
    assert fence and reasoning.strip(), response
    assert code.rstrip().endswith("```") and code.count("```") == 1, response
    with pytest.raises(OSError):
        urllib.request.urlopen(base_url + "/models", timeout=2)
    assert local_server.port_free("127.0.0.1", port)
    assert (tmp_path / "local_llm.log").read_text().count("ready at") == 1


def test_missing_model_file_is_one_clear_line(tmp_path):
    with pytest.raises(LLMUnavailable, match="--llm local") as err:
        with open_llm(LLMSettings(spec="local", local_model=str(tmp_path / "none.gguf"), log_dir=str(tmp_path))):
            pass
    assert "\n" not in str(err.value)
