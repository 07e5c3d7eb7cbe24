"""Mutation operator: improve one parent's scoring logic."""
from __future__ import annotations

from langchain_core.language_models import BaseChatModel

from agents.context import DraftContext, Parent, parent_values, shared_values
from agents.drafts import ProxyDraft
from agents.llm import LLMCallRecord
from agents.prompts import PromptSet
from agents.runner import draft


def mutate(
    llm: BaseChatModel, prompts: PromptSet, ctx: DraftContext, parent: Parent
) -> tuple[ProxyDraft, LLMCallRecord]:
    """A variant of ``parent`` (template ``mutation``). Raises DraftError / LLMCallError."""
    values = {**shared_values(ctx, exclude=(parent.id,)), **parent_values(parent, "parent")}
    return draft(llm, prompts, "mutation", values, "mutation", (parent.id,), agent="mutator")
