"""Initialization operator: a new proxy from the task, prior knowledge and an idea family."""
from __future__ import annotations

from langchain_core.language_models import BaseChatModel

from agents.context import DraftContext, shared_values
from agents.drafts import ProxyDraft
from agents.llm import LLMCallRecord
from agents.prompts import PromptSet
from agents.runner import draft

# What {{idea}} says when the caller names no family.
NO_IDEA = "any one clear idea of your own"


def propose(
    llm: BaseChatModel, prompts: PromptSet, ctx: DraftContext, idea: str | None = None
) -> tuple[ProxyDraft, LLMCallRecord]:
    """Write a new proxy (template ``init``) built on ``idea``, typically one of
    ``prompts.idea_families`` (a different one per init draft, so that the first
    generation is diverse). Raises DraftError / LLMCallError."""
    values = {**shared_values(ctx), "idea": idea.strip() if idea and idea.strip() else NO_IDEA}
    return draft(llm, prompts, "init", values, "init", (), agent="proposer")
