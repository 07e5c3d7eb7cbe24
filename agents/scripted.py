"""A chat model that replays recorded responses (``--llm scripted:FILE``).

For tests and offline demos. The responses are plain text and go through
exactly the same parsing as a real model's. The file is JSON or YAML, either

* a list of responses, replayed in order for every call; or
* a mapping ``template -> list`` (``init``, ``mutation``, ``crossover``,
  ``critic``; ``default`` for any other), each list replayed in order for the
  calls of that template. Keys starting with ``_`` are comments.

A list that runs out starts again from its first response. Each response is a
string or ``{"response": "..."}``.
"""
from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from pydantic import PrivateAttr

from agents.llm_errors import LLMConfigError


class ScriptError(LLMConfigError):
    """The scripted-response file is missing or malformed."""


def load_script(path: str | Path) -> dict[str, list[str]]:
    """Read a scripted-response file into ``{template or "default": [responses]}``."""
    path = Path(path)
    if not path.is_file():
        raise ScriptError(f"scripted LLM file not found: {path}")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as err:  # json / yaml raise different types
        raise ScriptError(f"cannot read scripted LLM file {path}: {err}".splitlines()[0]) from None
    if isinstance(data, list):
        data = {"default": data}
    if not isinstance(data, dict) or not data:
        raise ScriptError(f"{path}: expected a non-empty list of responses or a mapping template -> list")
    script = {}
    for key, responses in data.items():
        if str(key).startswith("_"):
            continue
        if not isinstance(responses, list) or not responses:
            raise ScriptError(f"{path}: '{key}' must be a non-empty list of responses")
        script[str(key)] = [_response_text(path, key, i, r) for i, r in enumerate(responses)]
    if not script:
        raise ScriptError(f"{path}: no responses")
    return script


def _response_text(path: Path, key: str, index: int, item: Any) -> str:
    if isinstance(item, dict) and isinstance(item.get("response"), str):
        return item["response"]
    if isinstance(item, str):
        return item
    raise ScriptError(f"{path}: response {index} of '{key}' is neither a string nor {{\"response\": str}}")


class ScriptedChatModel(BaseChatModel):
    """Replays ``script``; the template of a call comes from the invoke
    config's metadata (``{"template": ...}``), which agents.llm.call_llm sets."""

    script: dict[str, list[str]]
    _next: dict[str, int] = PrivateAttr(default_factory=dict)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    @property
    def _llm_type(self) -> str:
        return "scripted"

    def _generate(self, messages: list[BaseMessage], stop=None, run_manager=None, **kwargs) -> ChatResult:
        metadata = getattr(run_manager, "metadata", None) or {}
        template = metadata.get("template")
        key = template if template in self.script else "default"
        if key not in self.script:
            raise ScriptError(f"scripted LLM has no responses for template '{template}' and no default list")
        with self._lock:  # parallel graph nodes share one model
            i = self._next.get(key, 0)
            self._next[key] = i + 1
        responses = self.script[key]
        text = responses[i % len(responses)]
        prompt_chars = sum(len(str(m.content)) for m in messages)
        usage = {  # about four characters per token; real counts need a tokenizer
            "input_tokens": prompt_chars // 4,
            "output_tokens": len(text) // 4,
            "total_tokens": (prompt_chars + len(text)) // 4,
        }
        return ChatResult(generations=[ChatGeneration(message=AIMessage(content=text, usage_metadata=usage))])
