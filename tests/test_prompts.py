"""The prompt set (agents/prompts.py, prompts/): files, placeholders, contract."""
import re
import shutil
from pathlib import Path

import pytest

from agents.context import DraftContext, Parent, describe_task, parent_values, shared_values
from agents.prompts import DEFAULT_DIR, TEMPLATES, PromptError, PromptSet, read_contract

README = Path(__file__).resolve().parent.parent / "mpq" / "README.md"


@pytest.fixture
def prompt_dir(tmp_path):
    target = tmp_path / "prompts"
    shutil.copytree(DEFAULT_DIR, target)
    return target


def test_default_set_loads_with_every_template():
    prompts = PromptSet.load()
    assert set(prompts.templates) == set(TEMPLATES)


def test_contract_is_the_readme_section_not_a_copy():
    contract = read_contract()
    readme = README.read_text()
    assert contract in readme
    assert "Higher score = more sensitive to quantization" in contract
    assert "| `hvp(v)` |" in contract  # the attribute table
    assert "## " not in contract.replace("### ", "")  # stops before the next section
    for path in DEFAULT_DIR.rglob("*"):  # the prompt files do not duplicate it
        assert path.is_dir() or "| `weight` |" not in path.read_text()
    assert contract in PromptSet.load().render("system")


def test_missing_file_is_a_clear_error(prompt_dir):
    (prompt_dir / "crossover.md").unlink()
    with pytest.raises(PromptError, match="prompt file missing: .*crossover"):
        PromptSet.load(prompt_dir)


def test_unknown_placeholder_is_a_clear_error(prompt_dir):
    path = prompt_dir / "mutation.md"
    path.write_text(path.read_text() + "\nAlso see {{parent_colour}}.\n")
    with pytest.raises(PromptError, match="'mutation'.*unknown placeholder.*parent_colour"):
        PromptSet.load(prompt_dir)


def test_missing_required_placeholder_is_a_clear_error(prompt_dir):
    path = prompt_dir / "critic.md"
    path.write_text(path.read_text().replace("{{error}}", "(error omitted)"))
    with pytest.raises(PromptError, match="'critic'.*lacks required placeholder.*error"):
        PromptSet.load(prompt_dir)


def test_ambiguous_and_empty_files_are_errors(prompt_dir):
    (prompt_dir / "init.txt").write_text("{{task}}")
    with pytest.raises(PromptError, match="ambiguous"):
        PromptSet.load(prompt_dir)
    (prompt_dir / "init.txt").unlink()
    (prompt_dir / "init.md").write_text("\n")
    with pytest.raises(PromptError, match="empty"):
        PromptSet.load(prompt_dir)


def test_missing_folder_and_contract_are_errors(tmp_path, prompt_dir):
    with pytest.raises(PromptError, match="prompt folder not found"):
        PromptSet.load(tmp_path / "nope")
    readme = tmp_path / "README.md"
    readme.write_text("# mpq\n\n## Modules\n")
    with pytest.raises(PromptError, match="no '## The proxy contract' section"):
        PromptSet.load(prompt_dir, readme=readme)


def test_swapped_set_is_used(prompt_dir):
    (prompt_dir / "init.md").write_text("CUSTOM INIT for {{task}}")
    prompts = PromptSet.load(prompt_dir)
    assert prompts.render("init", task="T", layers="", library="") == "CUSTOM INIT for T\n"


def test_render_needs_every_value_and_does_not_reexpand_values():
    prompts = PromptSet.load()
    with pytest.raises(PromptError, match="no value for"):
        prompts.render("critic", code="x")
    text = prompts.render("critic", code="d = {{task}}", error="E")
    assert "d = {{task}}" in text


def test_prompts_stay_short_for_a_small_model():
    # Qwen2.5-Coder 0.5-1.5B with a 4k context: system + the largest user
    # prompt (crossover with a full library) must leave room for the answer.
    code = "import torch\n\ndef score(layer):\n" + "    x = float(layer.weight.norm())\n" * 8 + "    return x\n"
    library = tuple(Parent(f"p{i}", code, "An idea in two sentences. " * 2, 0.7, 0.4, 0.75) for i in range(5))
    ctx = DraftContext(task=describe_task({"model": "resnet18", "dataset": "cifar10", "budget": "3avg"}),
                       layers="idx name kind\n" + "  0 conv1 conv 3x3\n" * 20, library=library)
    a, b = library[0], library[1]
    prompts = PromptSet.load()
    values = {**shared_values(ctx, exclude=(a.id, b.id)), **parent_values(a, "parent_a"), **parent_values(b, "parent_b")}
    chars = sum(len(m.content) for m in prompts.messages("crossover", **values))
    assert chars < 9000, f"crossover prompt is {chars} characters (~{chars // 4} tokens)"
    assert ctx.max_library == 3 and values["library"].count("```python") == 3


# -- named sets, snippets, idea families (issue 13: prompts a small model can use) --

def test_named_sets_resolve_to_their_folders():
    assert PromptSet.load("full").directory == DEFAULT_DIR
    compact = PromptSet.load("compact")
    assert compact.directory == DEFAULT_DIR / "compact"
    assert set(compact.templates) == set(TEMPLATES)
    assert set(compact.snippets) == {"skeleton", "examples"}
    with pytest.raises(PromptError, match="prompt folder not found.*name a set: full, compact"):
        PromptSet.load("tiny")


def test_idea_families_come_from_the_file_in_order(prompt_dir):
    families = PromptSet.load().idea_families
    assert len(families) >= 8 and len(set(families)) == len(families)
    assert families[0].startswith("weight statistics") and any(f.startswith("curvature via hvp") for f in families)
    assert PromptSet.load("compact").idea_families == families  # the compact set uses prompts/ideas.md
    (prompt_dir / "ideas.md").write_text("# comment line\n- alpha: one\n* beta: two\nnot an item\n")
    assert PromptSet.load(prompt_dir).idea_families == ("alpha: one", "beta: two")
    (prompt_dir / "ideas.md").write_text("only prose, no items\n")
    with pytest.raises(PromptError, match="no '- ' items"):
        PromptSet.load(prompt_dir)


def test_snippets_fill_every_template_and_must_exist(prompt_dir):
    (prompt_dir / "mutation.md").write_text("{{parent_code}}\nSKELETON:\n{{skeleton}}")
    with pytest.raises(PromptError, match="'mutation'.*uses skeleton but the set has no such file"):
        PromptSet.load(prompt_dir)
    (prompt_dir / "skeleton.py").write_text("def score(layer):\n    return 1.0\n")
    text = PromptSet.load(prompt_dir).render("mutation", parent_code="P")
    assert text == "P\nSKELETON:\ndef score(layer):\n    return 1.0\n"


def test_compact_contract_digest_names_exactly_the_real_attributes():
    # The digest replaces the README section in the compact set; it must not
    # drift from the contract (an invented attribute is what small models copy).
    digest = PromptSet.load("compact").contract
    contract = read_contract()
    table = set(re.findall(r"^\| `([a-z_]+)(?:\(v\))?`(?:, `([a-z_]+)`)? \|", contract, re.MULTILINE))
    real = {name for pair in table for name in pair if name}
    bullets = [line for line in digest.splitlines() if line.startswith("- ")]
    named = {m for line in bullets for m in re.findall(r"`([a-z_]+)(?:\(v\))?`", line)}
    assert real and named == real, (sorted(real - named), sorted(named - real))
    assert "## The proxy contract" not in digest and contract not in PromptSet.load("compact").render("system")


def test_compact_prompts_are_a_fraction_of_the_full_ones():
    from mpq.features import describe_layers, extract_features
    from tests.mpq_tiny import tiny_setup

    tiny = tiny_setup()
    table = describe_layers(extract_features(tiny.model, tiny.calib_images, tiny.calib_labels, with_grad=False))
    ctx = DraftContext(task=describe_task({"model": "mobilenetv2", "dataset": "embedded", "budget": "3avg"}),
                       layers=table + "\n" + "\n".join(table.splitlines()[1:-1]) * 10)  # a long table
    full, compact = PromptSet.load("full"), PromptSet.load("compact")
    size = lambda p: sum(len(m.content) for m in p.messages("init", **shared_values(ctx), idea="IDEA_MARK"))  # noqa: E731
    assert size(compact) < size(full) / 3
    text = "".join(m.content for m in compact.messages("init", **shared_values(ctx), idea="IDEA_MARK"))
    assert "IDEA_MARK" in text and "def score(layer):" in text and "layer.grad is None" in text


def test_compact_examples_and_skeleton_are_working_proxies():
    # The worked examples and the skeleton are what small models imitate: each
    # must pass the sandbox gate and give a finite score on every real layer.
    from mpq.features import extract_features
    from mpq.proxy import load_proxy, validate_scores
    from sandbox.gate import check_source
    from tests.mpq_tiny import tiny_setup

    tiny = tiny_setup()
    layers = extract_features(tiny.model, tiny.calib_images, tiny.calib_labels, with_grad=True)
    snippets = PromptSet.load("compact").snippets
    blocks = re.findall(r"```python\n(.*?)```", snippets["examples"] + snippets["skeleton"], re.DOTALL)
    assert len(blocks) == 3
    for code in blocks:
        check_source(code)
        scores = validate_scores(load_proxy(code)([layer.copy() for layer in layers]), len(layers))
        assert all(s > 0 for s in scores) and len(set(scores)) > 1


def test_layers_summary_is_short_and_falls_back_on_unknown_tables():
    from agents.context import summarize_layers
    from mpq.features import describe_layers, extract_features
    from tests.mpq_tiny import tiny_setup

    tiny = tiny_setup()
    layers = extract_features(tiny.model, tiny.calib_images, tiny.calib_labels, with_grad=False)
    summary = summarize_layers(describe_layers(layers))
    total = sum(layer.params for layer in layers)  # 72 + 1,152 + 144 + 512 + 5,120
    assert summary.startswith(f"5 layers (3 conv, 1 depthwise, 1 linear), {total:,} weights"), summary
    assert "largest: idx 4 linear 10x512 (5,120 weights); idx 1 conv 16x8x3x3 (1,152 weights)" in summary
    assert "last: idx 4 linear 10x512 (5,120 weights)" in summary and len(summary.splitlines()) == 4
    assert summarize_layers("free text\nno rows") == "free text\nno rows"
    assert shared_values(DraftContext(task="T"))["layers_summary"] == "(not given)"


def test_default_set_follows_the_llm_provider():
    from agents.prompts import default_prompt_set

    assert default_prompt_set("local") == "compact"
    assert default_prompt_set("openai:gpt-4o-mini") == "full"
    assert default_prompt_set("scripted:tests/data/scripted_llm.json") == "full"
    assert PromptSet.load(default_prompt_set("local")).directory == DEFAULT_DIR / "compact"
