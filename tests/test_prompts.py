"""The prompt set (agents/prompts.py, prompts/): files, placeholders, contract."""
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
    for path in DEFAULT_DIR.iterdir():  # the prompt files do not duplicate it
        assert "| `weight` |" not in path.read_text()
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
