"""The operators with a scripted LLM: prompts rendered from the files, responses
parsed by the real parser, the critic loop bounded (agents/*.py)."""
import json

import pytest

from agents.context import DraftContext, EvalFailure, Parent, describe_task
from agents.critic import repair, repair_loop
from agents.crossover import crossover
from agents.dedupe import ast_hash
from agents.drafts import DraftError
from agents.llm import LLMSettings, make_llm
from agents.mutator import mutate
from agents.prompts import PromptSet
from agents.proposer import propose

F = "```"
CODE_A = "import torch\n\ndef score(layer):\n    return float(layer.weight.norm())  # PARENT_A_MARK"
CODE_B = "def score_all(layers):\n    return [float(l.output.std()) for l in layers]  # PARENT_B_MARK"
GOOD = f"Weight range matters.\n\n{F}python\nimport torch\n\ndef score(layer):\n    return float(layer.weight.abs().max())\n{F}"
WRAPPED = f"Sure! Here it is.\nIdea: entropy.\n{F}python\ndef score(layer):\n    return 1.0 + layer.depth\n{F}\nHope this helps."
MULTI = f"{F}python\ndef helper(x):\n    return x\n{F}\nthen\n{F}python\ndef score(layer):\n    return float(layer.params)\n{F}"
CODELESS = "I would use the Hessian trace, weighted by depth."

PARENT_A = Parent("pa", CODE_A, "Norm of the weights.", phi=0.71, rho_sens=0.42, acc_quant=0.75)
PARENT_B = Parent("pb", CODE_B, "Activation spread.", phi=0.65)
LIBRARY = (PARENT_A, Parent("lib1", "def score(layer):\n    return 2.0  # LIBRARY_MARK", "", 0.6))
CTX = DraftContext(task="TASK_MARK: quantize resnet18", layers="LAYERS_MARK", library=LIBRARY)


@pytest.fixture(scope="module")
def prompts():
    return PromptSet.load()


def scripted(tmp_path, responses):
    path = tmp_path / "script.json"
    path.write_text(json.dumps(responses))
    return make_llm(LLMSettings(spec=f"scripted:{path}"))


@pytest.mark.parametrize(
    "response, code_start, reasoning",
    [(GOOD, "import torch", "Weight range matters."), (WRAPPED, "def score", "entropy."), (MULTI, "def score", "then")],
)
def test_propose_parses_responses(tmp_path, prompts, response, code_start, reasoning):
    draft, record = propose(scripted(tmp_path, [response]), prompts, CTX)
    assert draft.code.startswith(code_start) and reasoning in draft.reasoning
    assert (draft.operator, draft.parents, draft.ast_hash) == ("init", (), ast_hash(draft.code))
    assert (record.agent, record.template) == ("proposer", "init")
    assert "TASK_MARK" in record.prompt and "LAYERS_MARK" in record.prompt
    assert "Higher score = more sensitive" in record.prompt  # the contract, in the system prompt


def test_codeless_response_is_a_draft_error_with_its_record(tmp_path, prompts):
    with pytest.raises(DraftError, match="no code block") as err:
        propose(scripted(tmp_path, [CODELESS]), prompts, CTX)
    assert err.value.raw_response == CODELESS
    assert err.value.record.response == CODELESS and err.value.record.template == "init"


def test_mutate_shows_the_parent_and_the_library(tmp_path, prompts):
    draft, record = mutate(scripted(tmp_path, [WRAPPED]), prompts, CTX, PARENT_A)
    assert (draft.operator, draft.parents) == ("mutation", ("pa",))
    assert (record.agent, record.template) == ("mutator", "mutation")
    assert CODE_A in record.prompt and "Norm of the weights." in record.prompt
    assert "fitness 0.7100, rho_sens 0.420, acc_quant 0.7500" in record.prompt
    assert "LIBRARY_MARK" in record.prompt
    assert record.prompt.count("PARENT_A_MARK") == 1  # the parent is not repeated in the library


def test_crossover_shows_both_parents(tmp_path, prompts):
    draft, record = crossover(scripted(tmp_path, [MULTI]), prompts, CTX, PARENT_A, PARENT_B)
    assert (draft.operator, draft.parents) == ("crossover", ("pa", "pb"))
    assert CODE_A in record.prompt and CODE_B in record.prompt
    assert "Activation spread." in record.prompt and "fitness 0.6500" in record.prompt
    assert draft.code == "def score(layer):\n    return float(layer.params)"


def test_crossover_codeless_is_a_draft_error(tmp_path, prompts):
    with pytest.raises(DraftError):
        crossover(scripted(tmp_path, [CODELESS]), prompts, CTX, PARENT_A, PARENT_B)


def test_repair_shows_code_and_error(tmp_path, prompts):
    failure = EvalFailure("AttributeError: 'LayerFeatures' object has no attribute 'weights'",
                          'File "proxy.py", line 4, in score\n    w = layer.weights')
    draft, record = repair(scripted(tmp_path, [GOOD]), prompts, CTX, CODE_A, failure)
    assert (draft.operator, draft.parents) == ("repair", (ast_hash(CODE_A),))
    assert (record.agent, record.template) == ("critic", "critic")
    assert CODE_A in record.prompt
    assert "has no attribute 'weights'" in record.prompt and "w = layer.weights" in record.prompt


def _first_draft(tmp_path, prompts):
    return propose(scripted(tmp_path, [GOOD]), prompts, CTX)[0]


def test_repair_loop_stops_after_r_tries(tmp_path, prompts):
    candidate = _first_draft(tmp_path, prompts)
    # constants other than 1.0, which would be the uniform baseline (a copy: rejected)
    fixes = [f"Fix {i}.\n{F}python\ndef score(layer):\n    return {i}.5\n{F}" for i in range(5)]
    evaluated = []

    def always_fails(code):
        evaluated.append(code)
        return EvalFailure(f"ValueError: attempt {len(evaluated)}")

    outcome = repair_loop(scripted(tmp_path, fixes), prompts, CTX, candidate, always_fails, max_repairs=2)
    assert outcome.repairs == 2 and len(outcome.records) == 2 and len(evaluated) == 3
    assert outcome.failure.reason == "ValueError: attempt 3"
    assert outcome.draft.code == "def score(layer):\n    return 1.5"
    assert "ValueError: attempt 2" in outcome.records[1].prompt  # the latest error is shown


def test_repair_loop_stops_at_the_first_success(tmp_path, prompts):
    candidate = _first_draft(tmp_path, prompts)
    fixed = f"Use weight.\n{F}python\ndef score(layer):\n    return float(layer.weight.std())\n{F}"
    outcome = repair_loop(scripted(tmp_path, [fixed, GOOD]), prompts, CTX, candidate,
                          lambda code: None if "std" in code else EvalFailure("bad"), max_repairs=3)
    assert outcome.failure is None and outcome.repairs == 1 and outcome.draft.operator == "repair"


def test_repair_loop_does_not_reevaluate_an_unchanged_or_unusable_repair(tmp_path, prompts):
    candidate = _first_draft(tmp_path, prompts)
    same = "No change needed.\n" + GOOD.split("\n\n", 1)[1]
    evaluated = []
    outcome = repair_loop(scripted(tmp_path, [same, CODELESS]), prompts, CTX, candidate,
                          lambda code: evaluated.append(code) or EvalFailure("bad"), max_repairs=2)
    assert len(evaluated) == 1 and outcome.repairs == 2 and len(outcome.records) == 2
    assert outcome.failure is not None


def test_repair_loop_passes_a_syntax_error_back_to_the_critic(tmp_path, prompts):
    candidate = _first_draft(tmp_path, prompts)
    broken = f"{F}python\ndef score(layer):\n    return float(layer.weight.norm()\n{F}"
    fixed = f"{F}python\ndef score(layer):\n    return float(layer.weight.norm())\n{F}"
    outcome = repair_loop(scripted(tmp_path, [broken, fixed]), prompts, CTX, candidate,
                          lambda code: None if "norm())" in code else EvalFailure("bad"), max_repairs=2)
    assert outcome.failure is None and outcome.repairs == 2
    assert "does not parse" in outcome.records[1].prompt and "weight.norm()\n" in outcome.records[1].prompt


def test_zero_repairs_means_no_critic_call(tmp_path, prompts):
    candidate = _first_draft(tmp_path, prompts)
    outcome = repair_loop(scripted(tmp_path, [GOOD]), prompts, CTX, candidate, lambda code: EvalFailure("x"), 0)
    assert outcome.repairs == 0 and outcome.records == () and outcome.draft is candidate


@pytest.mark.parametrize("budget, phrase", [("3avg", "average weight bits <= 3"), ("1.5MB", "model size <= 1.5 MB"),
                                            ("8x", "compression >= 8x vs FP32")])
def test_describe_task_states_model_budget_and_fitness(budget, phrase):
    from mpq.task import Task

    text = describe_task(Task(model="resnet18", dataset="cifar10", budget=budget, alpha=0.25))
    assert "resnet18" in text and "cifar10" in text and phrase in text and "2/4/8 bits" in text
    assert "0.25 * rho_sens" in text and "0.75 * top-1" in text


def test_propose_fills_the_idea_family_into_init(tmp_path, prompts):
    from agents.proposer import NO_IDEA

    family = prompts.idea_families[3]
    _, record = propose(scripted(tmp_path, [GOOD]), prompts, CTX, idea=family)
    assert family in record.prompt
    _, record = propose(scripted(tmp_path, [GOOD]), prompts, CTX)
    assert NO_IDEA in record.prompt and family not in record.prompt


# -- copies of shown proxies, and what the critic is told --------------------------------
COMPACT = PromptSet.load("compact")
SNIP_EXAMPLE_RENAMED = (  # the compact set's SNIP example, renamed and commented: still a copy
    "import torch\n\n\ndef score(lay):\n    # saliency\n    weights = lay.weight.detach().double()\n"
    "    if lay.grad is None:\n        return float(weights.norm()) + 1e-12\n"
    "    return float((weights * lay.grad.double()).abs().sum()) + 1e-12\n")


def _answer(code):
    return f"My own idea.\n{F}python\n{code}\n{F}"


def test_a_copy_of_a_prompt_example_is_rejected_with_its_code(tmp_path):
    with pytest.raises(DraftError, match="example proxy shown in the prompt.*unchanged") as err:
        propose(scripted(tmp_path, [_answer(SNIP_EXAMPLE_RENAMED)]), COMPACT, CTX)
    assert err.value.code.strip() == SNIP_EXAMPLE_RENAMED.strip()  # handed to the critic
    assert err.value.record.template == "init"


def test_a_copy_of_a_human_baseline_is_rejected_and_a_variant_is_not(tmp_path):
    from pathlib import Path

    import mpq.proxies

    baseline = (Path(mpq.proxies.__file__).parent / "weight_norm.py").read_text()
    with pytest.raises(DraftError, match="human baseline weight_norm"):
        propose(scripted(tmp_path, [_answer(baseline)]), COMPACT, CTX)
    variant = SNIP_EXAMPLE_RENAMED.replace(".abs().sum()", ".pow(2).sum()")  # Fisher-like: a new proxy
    draft, _ = propose(scripted(tmp_path, [_answer(variant)]), COMPACT, CTX)
    assert "pow(2)" in draft.code


def test_the_critic_is_shown_the_failing_line_and_a_hint(tmp_path):
    import torch

    from mpq.proxy import ProxyError, load_proxy

    broken = "import torch\n\n\ndef score(layer):\n    w = layer.weight\n    return float(w * 2)\n"
    layer = type("Layer", (), {"weight": torch.ones(3, 2)})()
    with pytest.raises(ProxyError) as err:  # the real loader's message and traceback
        load_proxy(broken)([layer])
    failure = EvalFailure(err.value.reason, err.value.traceback_tail)
    _, record = repair(scripted(tmp_path, [GOOD]), COMPACT, CTX, broken, failure)
    assert "The line that failed: `return float(w * 2)`" in record.prompt
    assert "Hint: `float(t)` needs a tensor with ONE value" in record.prompt


def test_hints_come_from_the_set_or_the_project(prompt_dir_with_hints):
    custom, project = PromptSet.load(prompt_dir_with_hints), PromptSet.load("compact")
    assert custom.error_hints == (("KeyError", "look the key up first"),)
    assert any("only one element" in pattern for pattern, _ in project.error_hints)


@pytest.fixture
def prompt_dir_with_hints(tmp_path):
    import shutil

    from agents.prompts import DEFAULT_DIR

    folder = tmp_path / "set"
    shutil.copytree(DEFAULT_DIR / "compact", folder)
    (folder / "hints.md").write_text("Comment line.\n- `KeyError`: look the key up first\n")
    return folder
