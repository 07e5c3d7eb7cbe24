"""tests/data/scripted_llm.json, the responses of --llm scripted demos: every
proxy parses, is distinct, obeys mpq/README.md on real layer features, and the
one broken on purpose is repaired by the critic's first answer."""
import ast
import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from agents.dedupe import ast_hash
from agents.parsing import parse_response
from agents.scripted import load_script

extract_features = pytest.importorskip("mpq.features").extract_features  # until mpq/features.py lands

SCRIPT = Path(__file__).resolve().parent / "data" / "scripted_llm.json"
ALLOWED_IMPORTS = {"math", "numpy", "torch", "scipy"}


@pytest.fixture(scope="module")
def layers():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5),
    ).eval()
    images, labels = torch.randn(16, 3, 12, 12), torch.randint(0, 5, (16,))
    return extract_features(model, images, labels)


try:  # the sandbox's static gate, where that package is present
    from sandbox import gate
except ImportError:
    gate = None


def run_proxy(code, layers):
    namespace: dict = {}
    exec(compile(code, "<proxy>", "exec"), namespace)  # test data written by us, not LLM output
    if "score_all" in namespace:
        return [float(s) for s in namespace["score_all"](layers)]
    return [float(namespace["score"](layer)) for layer in layers]


def imports(code):
    names = set()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            names.add(node.module.split(".")[0])
    return names


def test_script_has_every_template_and_distinct_valid_proxies(layers):
    script = load_script(SCRIPT)
    assert {"init", "mutation", "crossover", "critic"} <= set(script)
    parsed = {(t, i): parse_response(r) for t, rs in script.items() for i, r in enumerate(rs)}
    assert len(parsed) >= 10
    assert len({ast_hash(p.code) for p in parsed.values()}) == len(parsed)  # no duplicates
    broken = ("init", 5)
    for key, p in parsed.items():
        assert p.reasoning and imports(p.code) <= ALLOWED_IMPORTS, key
        if gate is not None:
            gate.check_source(p.code)  # raises GateRejection
        if key == broken:
            continue
        scores = run_proxy(p.code, layers)
        assert len(scores) == len(layers) and all(math.isfinite(s) for s in scores), key
        assert len(set(scores)) > 1, f"{key} does not tell layers apart"


def test_the_broken_proxy_fails_and_the_critic_repairs_it(layers):
    script = load_script(SCRIPT)
    broken = parse_response(script["init"][5]).code
    with pytest.raises(AttributeError, match="weights"):
        run_proxy(broken, layers)
    repaired = parse_response(script["critic"][0]).code
    assert ast_hash(repaired) != ast_hash(broken)
    assert all(math.isfinite(s) for s in run_proxy(repaired, layers))


def test_script_file_is_plain_json():
    data = json.loads(SCRIPT.read_text())
    assert all(isinstance(r, str) for key, rs in data.items() if not key.startswith("_") for r in rs)
