"""Load proxy source code and call it safely (the contract is in mpq/README.md).

``load_proxy(source)`` executes the source in a fresh module namespace and
returns ``scorer(layers) -> list[float]``. Whatever goes wrong — a syntax error,
an exception inside the proxy, no ``score`` / ``score_all``, a wrong number of
scores, NaN / inf, a non-numeric value — becomes a ``ProxyError`` with a
one-line reason and the tail of the traceback, never another exception.
Isolation (imports, time, memory) is the sandbox's job, not this module's.
"""
from __future__ import annotations

import math
import numbers
import traceback
import types
from typing import Any, Callable, Sequence

import numpy as np
import torch

TRACEBACK_TAIL = 1500  # characters of traceback kept for the critic


class ProxyError(Exception):
    """A proxy that could not be loaded or returned invalid scores."""

    def __init__(self, reason: str, traceback_tail: str = ""):
        super().__init__(reason)
        self.reason = reason
        self.traceback_tail = traceback_tail


Scorer = Callable[[Sequence[Any]], list[float]]


def _tail() -> str:
    return traceback.format_exc()[-TRACEBACK_TAIL:]


def load_proxy(source: str) -> Scorer:
    """Compile and run ``source``; return its scorer (``score_all`` wins over ``score``)."""
    module = types.ModuleType("proxy")
    try:
        exec(compile(source, "<proxy>", "exec"), module.__dict__)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # noqa: BLE001 - anything the proxy raises (even SystemExit) is its failure
        raise ProxyError(f"loading the proxy failed: {type(exc).__name__}: {exc}", _tail()) from None
    score_all = module.__dict__.get("score_all")
    score = module.__dict__.get("score")
    if not callable(score_all) and not callable(score):
        raise ProxyError("the proxy defines neither score(layer) nor score_all(layers)")

    def scorer(layers: Sequence[Any]) -> list[float]:
        try:
            raw = score_all(list(layers)) if callable(score_all) else [score(layer) for layer in layers]
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # noqa: BLE001
            raise ProxyError(f"the proxy raised {type(exc).__name__}: {exc}", _tail()) from None
        return validate_scores(raw, len(layers))

    return scorer


def _to_float(value: Any, index: int) -> float:
    if isinstance(value, (torch.Tensor, np.ndarray)):
        if (value.numel() if isinstance(value, torch.Tensor) else value.size) != 1:
            raise ProxyError(f"score {index} is an array of shape {tuple(value.shape)}, not one number")
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ProxyError(f"score {index} is {type(value).__name__} {value!r:.60}, not a real number")
    result = float(value)
    if not math.isfinite(result):
        raise ProxyError(f"score {index} is {result} (scores must be finite)")
    return result


def validate_scores(raw: Any, num_layers: int) -> list[float]:
    """``raw`` as a list of ``num_layers`` finite floats, or ProxyError."""
    if isinstance(raw, (torch.Tensor, np.ndarray)):
        raw = raw.reshape(-1).tolist() if raw.ndim > 0 else [raw.item()]
    if isinstance(raw, (str, bytes)) or not hasattr(raw, "__len__"):
        raise ProxyError(f"score_all returned {type(raw).__name__}, not a list of numbers")
    if len(raw) != num_layers:
        raise ProxyError(f"got {len(raw)} scores for {num_layers} layers")
    return [_to_float(v, i) for i, v in enumerate(raw)]
