"""Baseline proxies: plain source files under the same contract as LLM proxies.

Each file defines ``score(layer)`` or ``score_all(layers)`` and imports only
math / numpy / torch / scipy, so it goes through the same loader
(``mpq.proxy.load_proxy``) and the same sandbox as any LLM-written proxy. Its
docstring cites the source and gives the formula as implemented.

| name | needs | source |
|---|---|---|
| uniform | nothing | control |
| random | number of layers (seeded) | control |
| weight_norm | weights | magnitude / zero-cost NAS proxies |
| snip | weights, loss gradient | Lee et al., ICLR 2019 |
| tap_formula | weights, activations, depth | TAP paper, arXiv 2512.07419 |
| ompq | activations | Ma et al., AAAI 2023 |
| emq | weights, loss gradient | Dong et al., ICCV 2023 |
| hawq_v2 | Hessian (hvp) | Dong et al., NeurIPS 2020 |

None of them sees the candidate bit widths: the allocator's penalty
``score * 4**(b_min - b)`` (mpq/allocate.py) turns scores into bits. Only
hawq_v2 quantizes (at a fixed reference width, 4 bits) to size the weight
perturbation of HAWQ-V2's Omega.
"""
from __future__ import annotations

import re
from pathlib import Path

PROXY_DIR = Path(__file__).parent

BASELINES: dict[str, Path] = {
    "uniform": PROXY_DIR / "uniform.py",
    "random": PROXY_DIR / "random_scores.py",
    "weight_norm": PROXY_DIR / "weight_norm.py",
    "snip": PROXY_DIR / "snip.py",
    "tap_formula": PROXY_DIR / "tap_formula.py",
    "ompq": PROXY_DIR / "ompq.py",
    "emq": PROXY_DIR / "emq.py",
    "hawq_v2": PROXY_DIR / "hawq_v2.py",
}

_SEED_LINE = re.compile(r"^SEED = \d+$", re.MULTILINE)


def baseline_source(name: str) -> str:
    """The source text of baseline ``name`` (KeyError lists the valid names)."""
    if name not in BASELINES:
        raise KeyError(f"unknown baseline '{name}'; valid: {', '.join(BASELINES)}")
    return BASELINES[name].read_text()


def random_source(seed: int) -> str:
    """The ``random`` baseline with another seed (same scores for the same seed)."""
    source, count = _SEED_LINE.subn(f"SEED = {int(seed)}", baseline_source("random"))
    if count != 1:
        raise RuntimeError("random baseline: expected exactly one 'SEED = <int>' line")
    return source
