"""The one step every agent shares: render, ask, parse, hash."""
from __future__ import annotations

from langchain_core.language_models import BaseChatModel

from agents.dedupe import ast_hash
from agents.drafts import DraftError, Operator, ProxyDraft
from agents.llm import LLMCallRecord, call_llm
from agents.parsing import parse_response
from agents.prompts import PromptSet


def draft(
    llm: BaseChatModel,
    prompts: PromptSet,
    template: str,
    values: dict[str, str],
    operator: Operator,
    parents: tuple[str, ...],
    agent: str,
) -> tuple[ProxyDraft, LLMCallRecord]:
    """Ask ``llm`` with ``template`` and parse the answer into a ProxyDraft.

    Raises DraftError (with ``record`` set) when the response holds no usable
    proxy, and agents.llm.LLMCallError when the call itself failed.
    """
    messages = prompts.messages(template, **values)
    text, record = call_llm(llm, messages, agent=agent, template=template)
    try:
        parsed = parse_response(text)
    except DraftError as err:
        err.record = record
        raise
    proxy = ProxyDraft(parsed.reasoning, parsed.code, operator, parents, ast_hash(parsed.code))
    return proxy, record
