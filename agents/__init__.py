"""The LLM side of TAP-MPQ: prompts + context -> proxy drafts. Never runs code.

| module | job |
|---|---|
| `llm.py` | settings, the chat-model factory (openai / local / scripted), call records |
| `scripted.py` | replay of recorded responses for tests and offline demos |
| `prompts.py` | the prompt set from `prompts/`, validated at load time |
| `context.py` | what the prompts show: task, layers, parents, library |
| `parsing.py` | response -> (reasoning, code), signature check |
| `dedupe.py` | normalised-AST hash |
| `drafts.py` | `ProxyDraft`, `DraftError` |
| `proposer.py`, `mutator.py`, `crossover.py`, `critic.py` | the operators (init, mutation, crossover, repair) |
"""
from agents.context import DraftContext, EvalFailure, Parent, describe_task
from agents.critic import RepairOutcome, repair, repair_loop
from agents.crossover import crossover
from agents.dedupe import ast_hash
from agents.drafts import DraftError, ProxyDraft
from agents.llm import (
    LLMCallError,
    LLMCallRecord,
    LLMConfigError,
    LLMSettings,
    LLMUnavailable,
    call_llm,
    make_llm,
    open_llm,
)
from agents.mutator import mutate
from agents.prompts import PromptError, PromptSet
from agents.proposer import propose

__all__ = [
    "DraftContext", "EvalFailure", "Parent", "describe_task", "RepairOutcome", "repair",
    "repair_loop", "crossover", "ast_hash", "DraftError", "ProxyDraft", "LLMCallError",
    "LLMCallRecord", "LLMConfigError", "LLMSettings", "LLMUnavailable", "call_llm",
    "make_llm", "open_llm", "mutate", "PromptError", "PromptSet", "propose",
]
