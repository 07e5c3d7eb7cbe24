"""Response parsing and the normalised-AST hash (agents/parsing.py, agents/dedupe.py)."""
import pytest

from agents.dedupe import ast_hash
from agents.drafts import DraftError
from agents.parsing import parse_response

F = "```"
PROXY = "import torch\n\ndef score(layer):\n    return float(layer.weight.abs().max())"


def test_well_formed_response():
    parsed = parse_response(f"Big weights lose most when rounded.\n\n{F}python\n{PROXY}\n{F}\n")
    assert parsed.code == PROXY
    assert parsed.reasoning == "Big weights lose most when rounded."


def test_prose_wrapped_response_keeps_prose_out_of_code():
    text = (
        f"Sure! Here is my proxy.\n**Reasoning:** outliers stretch the grid.\n\n{F}py\n{PROXY}\n{F}\n"
        "Let me know if you want changes."
    )
    parsed = parse_response(text)
    assert parsed.code == PROXY
    assert "outliers stretch the grid." in parsed.reasoning
    assert "Let me know" in parsed.reasoning and "Reasoning:" not in parsed.reasoning


def test_multi_block_picks_the_one_defining_score():
    text = (
        f"Install nothing:\n{F}bash\npip list\n{F}\nThe proxy:\n{F}python\n{PROXY}\n{F}\n"
        f"Example use:\n{F}python\nscores = [score(l) for l in layers]\n{F}"
    )
    assert parse_response(text).code == PROXY


def test_multi_block_repeating_the_same_proxy_is_accepted():
    text = f"{F}python\n{PROXY}\n{F}\nFinal version (same, formatted):\n{F}python\n# final\n{PROXY}\n{F}"
    assert "def score" in parse_response(text).code


def test_multi_block_with_two_different_proxies_is_an_error():
    other = PROXY.replace("max()", "mean()")
    with pytest.raises(DraftError, match="2 different code blocks"):
        parse_response(f"{F}python\n{PROXY}\n{F}\nor\n{F}python\n{other}\n{F}")


def test_multi_block_without_proxy_is_an_error():
    with pytest.raises(DraftError, match="none defines score"):
        parse_response(f"{F}python\nx = 1\n{F}\n{F}python\ny = 2\n{F}")


@pytest.mark.parametrize("text", ["", "   ", "I cannot help with that.", "Use the weight norm; bigger is more sensitive."])
def test_code_less_response_is_a_draft_error(text):
    with pytest.raises(DraftError) as err:
        parse_response(text)
    assert err.value.raw_response == text.strip() and err.value.code is None


def test_unfenced_code_is_found_and_trailing_prose_dropped():
    text = f"Idea: weight range.\n\n{PROXY}\n\nThis works because outliers matter."
    parsed = parse_response(text)
    assert parsed.code == PROXY
    assert parsed.reasoning.startswith("weight range.") and "outliers matter" in parsed.reasoning


def test_unterminated_fence_is_read_to_the_end():
    assert parse_response(f"Reason.\n{F}python\n{PROXY}\n").code == PROXY


def test_think_tags_are_not_reasoning():
    parsed = parse_response(f"<think>long chain of thought</think>Short idea.\n{F}python\n{PROXY}\n{F}")
    assert parsed.reasoning == "Short idea."


def test_demo_code_and_main_guard_are_stripped():
    code = f'"""Doc."""\n{PROXY}\n\nprint(score(None))\nif __name__ == "__main__":\n    score(None)\n'
    parsed = parse_response(f"{F}python\n{code}{F}")
    assert parsed.code == f'"""Doc."""\n{PROXY}'


def test_score_all_is_accepted():
    code = "def score_all(layers):\n    return [1.0 for _ in layers]"
    assert parse_response(f"{F}python\n{code}\n{F}").code == code


@pytest.mark.parametrize(
    "code, message",
    [
        ("def scores(layer):\n    return 1.0", "neither score"),
        ("class P:\n    def score(self, layer):\n        return 1.0", "neither score"),
        ("def score(layer, model):\n    return 1.0", r"callable as score\(layer\)"),
        ("def score_all():\n    return []", r"callable as score_all\(layers\)"),
        ("def score(layer, *, scale):\n    return 1.0", "one argument"),
    ],
)
def test_signature_is_enforced(code, message):
    with pytest.raises(DraftError, match=message):
        parse_response(f"{F}python\n{code}\n{F}")


def test_signature_with_optional_extras_is_accepted():
    code = "def score(layer, eps=1e-8, *args, scale=1.0):\n    return eps"
    assert parse_response(f"{F}python\n{code}\n{F}").code == code


def test_syntax_error_keeps_the_code_for_the_critic():
    broken = "def score(layer):\n    return float(layer.weight.norm()"
    with pytest.raises(DraftError, match=r"does not parse: .* \(line 2\)") as err:
        parse_response(f"Idea.\n{F}python\n{broken}\n{F}")
    assert err.value.code == broken


def test_hash_ignores_comments_docstrings_formatting_annotations_and_names():
    a = "import torch\ndef score(layer):\n    w = layer.weight\n    return float(w.abs().max())"
    b = (
        '"""Module doc."""\nimport torch\n\n\n# a comment\ndef score(l: object) -> float:\n'
        '    """Doc."""\n    weights: torch.Tensor = l.weight  # trailing\n    return float( weights.abs().max() )\n'
    )
    assert ast_hash(a) == ast_hash(b)


def test_hash_ignores_helper_names():
    a = "def _n(x):\n    return x.norm()\ndef score(layer):\n    return float(_n(layer.weight))"
    b = "def norm_of(t):\n    return t.norm()\ndef score(layer):\n    return float(norm_of(layer.weight))"
    assert ast_hash(a) == ast_hash(b)


@pytest.mark.parametrize(
    "other",
    [
        "import torch\ndef score(layer):\n    w = layer.weight\n    return float(w.abs().min())",  # method
        "import torch\ndef score(layer):\n    w = layer.grad\n    return float(w.abs().max())",  # attribute
        "import torch\ndef score(layer):\n    w = layer.weight\n    return float(w.abs().max() * 2)",  # constant
        "import torch\ndef score_all(layer):\n    w = layer.weight\n    return float(w.abs().max())",  # entry
    ],
)
def test_hash_separates_different_proxies(other):
    base = "import torch\ndef score(layer):\n    w = layer.weight\n    return float(w.abs().max())"
    assert ast_hash(base) != ast_hash(other)


def test_hash_of_unparsable_code_is_stable():
    assert ast_hash("def score(:\n  pass") == ast_hash("def score(:\n  pass   \n")
    assert len(ast_hash("x = 1")) == 16


def test_indented_block_and_crlf_line_ends():
    indented = "\n".join("   " + line if line else "" for line in PROXY.splitlines())
    text = f"1. The proxy:\r\n   {F}python\r\n{indented}\r\n   {F}\r\n".replace("\n", "\r\n").replace("\r\r", "\r")
    assert parse_response(text).code == PROXY


def test_unfenced_code_after_prose_that_looks_like_code():
    text = f"from the paper we know that outliers matter.\n{PROXY}\n"
    parsed = parse_response(text)
    assert parsed.code == PROXY and parsed.reasoning.startswith("from the paper")


def test_closing_fence_glued_to_the_code():
    text = f"Idea.\n{F}python\n{PROXY}{F}\nThat is all."
    assert parse_response(text).code == PROXY
