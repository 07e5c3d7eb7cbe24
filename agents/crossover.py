"""Crossover operator: fuse complementary parts of two parents."""
from __future__ import annotations

from langchain_core.language_models import BaseChatModel

from agents.context import DraftContext, Parent, parent_values, shared_values
from agents.drafts import ProxyDraft
from agents.llm import LLMCallRecord
from agents.prompts import PromptSet
from agents.runner import draft


def crossover(
    llm: BaseChatModel, prompts: PromptSet, ctx: DraftContext, parent_a: Parent, parent_b: Parent
) -> tuple[ProxyDraft, LLMCallRecord]:
    """A child of ``parent_a`` and ``parent_b`` (template ``crossover``).
    Raises DraftError / LLMCallError."""
    ids = (parent_a.id, parent_b.id)
    values = {
        **shared_values(ctx, exclude=ids),
        **parent_values(parent_a, "parent_a"),
        **parent_values(parent_b, "parent_b"),
    }
    return draft(llm, prompts, "crossover", values, "crossover", ids, agent="crossover")
