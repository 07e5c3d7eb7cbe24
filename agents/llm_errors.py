"""The LLM side's error types, in a leaf module that imports nothing of the project.

``agents.llm`` (the provider registry) and ``agents.scripted`` (one provider's
chat model) both raise them; keeping them here is what lets ``llm`` import
``scripted`` without a circle.
"""
from __future__ import annotations


class LLMConfigError(ValueError):
    """The LLM settings are wrong (bad --llm spec, missing key or file)."""


class LLMUnavailable(RuntimeError):
    """The LLM endpoint cannot be reached or the local server cannot start."""
