"""Initialization operator: a new proxy from the task and prior knowledge."""
from __future__ import annotations

from langchain_core.language_models import BaseChatModel

from agents.context import DraftContext, shared_values
from agents.drafts import ProxyDraft
from agents.llm import LLMCallRecord
from agents.prompts import PromptSet
from agents.runner import draft


def propose(llm: BaseChatModel, prompts: PromptSet, ctx: DraftContext) -> tuple[ProxyDraft, LLMCallRecord]:
    """Write a new proxy (template ``init``). Raises DraftError / LLMCallError."""
    return draft(llm, prompts, "init", shared_values(ctx), "init", (), agent="proposer")
