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
    proxy or only copies one the prompts show or a human baseline
    (``PromptSet.shown_proxies``), and agents.llm.LLMCallError when the call
    itself failed.
    """
    messages = prompts.messages(template, **values)
    text, record = call_llm(llm, messages, agent=agent, template=template)
    try:
        parsed = parse_response(text)
    except DraftError as err:
        err.record = record
        raise
    proxy = ProxyDraft(parsed.reasoning, parsed.code, operator, parents, ast_hash(parsed.code))
    copied = prompts.shown_proxies.get(proxy.ast_hash)
    if copied:  # a copy is no discovery (session 2's best "discovered" proxy was the SNIP example)
        raise DraftError(f"this is {copied}, unchanged: write a proxy of your own", text, parsed.code, record)
    return proxy, record
