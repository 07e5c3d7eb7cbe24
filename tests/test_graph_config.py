"""The command line -> one frozen RunConfig; what may change in a branch; the run lock."""
import dataclasses

import pytest

from graph.cli import parse_run_args
from graph.config import ConfigError, RunConfig
from graph.run import hold_run_lock

SCRIPT = "scripted:tests/data/scripted_llm.json"


def test_defaults_follow_the_paper(tmp_path):
    c = parse_run_args(["--runs-dir", str(tmp_path), "--llm", SCRIPT])
    assert (c.search.generations, c.search.population, c.search.controller.kind) == (5, 8, "paper")
    assert (c.task.alpha, c.task.calib_size, c.task.bits, c.task.act_bits, c.task.budget) == \
        (0.1, 16, (2, 4, 8), 8, "3avg")
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.seed = 3


def test_options_and_round_trip(tmp_path):
    c = parse_run_args(["--runs-dir", str(tmp_path), "--llm", SCRIPT, "--controller", "dpo", "--population", "3",
                        "--bits", "8,2", "--seed", "7", "--budget", "1.5MB", "--no-tui", "--run-id", "x",
                        "--seed-population", "both"])
    assert c.search.controller.kind == "dpo" and c.search.population == 3 and c.task.bits == (2, 8)
    assert c.seed == 7 and c.llm.seed == 7 and c.task.seed == 0  # --seed is the search's, not the data split's
    assert not c.tui and c.run_id == "x" and c.run_dir == tmp_path / "x"
    assert c.search.seed_population == "both" and parse_run_args(
        ["--runs-dir", str(tmp_path), "--llm", SCRIPT]).search.seed_population == "llm"
    assert RunConfig.from_dict(c.to_dict()) == c


def test_task_options_set_the_task_fields_named_at_their_declaration(tmp_path):
    c = parse_run_args(["--runs-dir", str(tmp_path), "--llm", SCRIPT, "--calibration", "8", "--eval-limit", "64",
                        "--alpha", "0.25", "--device", "cpu", "--act-bits", "4"])
    assert (c.task.calib_size, c.task.eval_limit, c.task.alpha, c.task.seed) == (8, 64, 0.25, 0)
    assert c.task.act_bits == 4 and parse_run_args(["--runs-dir", str(tmp_path), "--llm", SCRIPT]).task.act_bits == 8


def test_choices_come_from_the_registries(tmp_path):
    from graph.cli import build_parser
    from sandbox.pool import BACKEND_NAMES

    text = build_parser().format_help()
    assert "{" + ",".join(BACKEND_NAMES) + "}" in text.replace("\n", "").replace(" ", "")
    with pytest.raises(SystemExit):
        parse_run_args(["--runs-dir", str(tmp_path), "--llm", SCRIPT, "--controller", "nope"])


def test_bad_bits(tmp_path):
    with pytest.raises(ConfigError, match="--bits"):
        parse_run_args(["--runs-dir", str(tmp_path), "--llm", SCRIPT, "--bits", "2,x"])


def test_bad_activation_bits(tmp_path):
    with pytest.raises(ConfigError, match="--act-bits 1"):
        parse_run_args(["--runs-dir", str(tmp_path), "--llm", SCRIPT, "--act-bits", "1"])


def test_existing_run_id_is_refused(tmp_path):
    (tmp_path / "taken").mkdir()
    with pytest.raises(ConfigError, match="already exists"):
        parse_run_args(["--runs-dir", str(tmp_path), "--llm", SCRIPT, "--run-id", "taken"])


def test_one_process_per_run(tmp_path):
    first = hold_run_lock(tmp_path)
    with pytest.raises(ConfigError, match="in use"):
        hold_run_lock(tmp_path)
    first.close()
    hold_run_lock(tmp_path).close()  # released: free again


def test_the_final_model_is_reconstructed_on_a_gpu_unless_told_otherwise(tmp_path):
    base = ["--runs-dir", str(tmp_path), "--llm", SCRIPT]
    assert parse_run_args(base).final.mode == "rtn"  # a CPU: reconstruction would take hours
    assert parse_run_args(base + ["--device", "cuda"]).final.mode == "reconstruct"
    assert parse_run_args(base + ["--device", "cuda", "--final-ptq", "rtn"]).final.mode == "rtn"
    assert parse_run_args(base + ["--final-ptq", "reconstruct", "--recon-iters", "50"]).final.iters == 50
