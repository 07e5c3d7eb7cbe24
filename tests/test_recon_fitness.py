"""The reconstruct fitness (--fitness-ptq reconstruct, mpq.fitness_ptq): real models on real data.

It changes acc_quant (and only acc_quant), its results are cached under a key of their own,
the round-to-nearest task keeps the key of the shipped ground truth, the sandbox worker uses
it, and bad flags exit 2 with one line.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

import mpq.fitness
from graph.cli import parse_run_args
from graph.config import ConfigError, RunConfig
from mpq.cache import SHIPPED_DIR, cache_file
from mpq.data import calibration_batch, load_splits
from mpq.fitness import TRUTH_BITS, Evaluator
from mpq.proxies import baseline_source
from mpq.quant import evaluate
from mpq.reconstruct import ReconConfig, reconstruct
from mpq.task import Task
from tests.mpq_tiny import tiny_setup

SCRIPT = "scripted:tests/data/scripted_llm.json"
NORM = "import torch\ndef score(layer):\n    return float(layer.weight.norm())\n"
RECON = {"fitness_ptq": "reconstruct", "fitness_recon_iters": 20, "fitness_calib": 64}


def tiny_evaluator(task: Task, cache: Path) -> Evaluator:
    s = tiny_setup()
    fitness_calib, _ = calibration_batch(load_splits("embedded"), 64, seed=0)
    return Evaluator.from_parts(task, s.model, s.calib_images, s.calib_labels, s.search_images, s.search_labels,
                                cache_dir=cache, fitness_calib_images=fitness_calib)


@pytest.fixture(scope="module")
def tiny_pair(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    base = Task(dataset="embedded", budget="3avg", eval_limit=300)
    torch.set_num_threads(1)
    return (tiny_evaluator(base, cache), tiny_evaluator(dataclasses.replace(base, **RECON), cache), cache)


def test_reconstruct_changes_acc_quant_only(tiny_pair):
    rtn, recon, _ = tiny_pair
    a, b = rtn.evaluate(NORM), recon.evaluate(NORM)
    assert a.bits == b.bits and a.scores == b.scores and a.rho_sens == b.rho_sens  # same ground truth, same allocation
    assert a.acc_quant != b.acc_quant
    assert "reconstruct_s" in b.timings and "reconstruct_s" not in a.timings
    # the fitness is mpq.reconstruct's public function on the fitness images, evaluated on the search split
    s = tiny_setup()
    net, _ = reconstruct(s.model, b.bits, recon.accuracy.calib, ReconConfig(iters=20, act_bits=8, seed=0))
    assert b.acc_quant == evaluate(net.to_module(), recon.search_images, recon.search_labels).top1
    assert b.phi == pytest.approx(0.1 * b.rho_sens + 0.9 * b.acc_quant)


def test_a_reconstructed_accuracy_is_cached_under_its_own_key(tiny_pair):
    rtn, recon, cache = tiny_pair
    first = recon.evaluate(NORM)
    again = recon.evaluate(NORM)
    assert again.acc_quant == first.acc_quant and again.timings["cached"] == 1.0
    assert rtn.accuracy.cache_key(first.bits) is None  # RTN is never cached: it cannot read a reconstructed entry
    key = recon.accuracy.cache_key(first.bits)
    assert key["fitness_ptq"] == "reconstruct" and key["recon"]["iters"] == 20 and key["recon_calib_images"] == 64
    stored = json.loads(cache_file(cache, "acc_quant", key).read_text())
    assert stored["value"]["top1"] == first.acc_quant
    longer = tiny_evaluator(dataclasses.replace(recon.task, fitness_recon_iters=21), cache)
    assert cache_file(cache, "acc_quant", longer.accuracy.cache_key(first.bits)) != cache_file(cache, "acc_quant", key)
    fewer = tiny_evaluator(dataclasses.replace(recon.task, fitness_calib=32), cache)
    assert fewer.accuracy.cache_key(first.bits)["recon_calib"] != key["recon_calib"]


def test_the_default_task_keeps_the_shipped_ground_truth_key(tmp_path, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("ground truth recomputed: its key changed")

    monkeypatch.setattr(mpq.fitness, "measure_sensitivity", never)
    rtn = Evaluator(Task(), cache_dir=tmp_path)
    truth_key = {**rtn.cache_key, "bits": list(TRUTH_BITS)}
    assert (SHIPPED_DIR / cache_file(tmp_path, "sensitivity", truth_key).name).exists()
    recon = Evaluator(Task(**RECON), cache_dir=tmp_path)  # the same ground truth, read from the shipped file
    assert recon.cache_key == rtn.cache_key and recon.truth.sensitivity == rtn.truth.sensitivity
    assert not list(tmp_path.glob("*.json"))
    assert recon.accuracy.calib.shape[0] == 64
    rtn_images, _ = calibration_batch(load_splits("cifar10-mini"), 16, seed=0)
    assert torch.equal(recon.accuracy.calib[:16], rtn_images)  # the search's 16 RTN images come first


def test_the_sandbox_worker_computes_the_reconstruct_fitness():
    from sandbox.pool import EvaluatorPool
    from sandbox.protocol import Limits

    # eval_limit 32: the ground truth of tests/test_sandbox_pool.py's task, cached in the default folder
    task = Task(dataset="embedded", eval_limit=32, fitness_ptq="reconstruct", fitness_recon_iters=5, fitness_calib=32)
    limits = Limits(timeout_s=60, cpu_s=120, memory_mb=2048, startup_s=900, fitness_s=900)
    with EvaluatorPool(task, backend="process", workers=1, limits=limits) as pool:
        first = pool.evaluate(baseline_source("weight_norm"), request_id="wn")
        assert first.status == "ok", first.reason
        assert first.timings["reconstruct_s"] > 0 and first.timings["cached"] == 0.0
        # the same allocation again (here: the same proxy under another id) is not reconstructed twice; a
        # locked-down slot cannot write the disk cache, so this is the slot's memory
        again = pool.evaluate(baseline_source("weight_norm"), request_id="wn-again")
    assert again.timings["cached"] == 1.0 and again.acc_quant == first.acc_quant and again.bits == first.bits


# --- the command line ----------------------------------------------------------------

def test_flags_set_the_task_and_are_recorded_with_the_run(tmp_path):
    c = parse_run_args(["--runs-dir", str(tmp_path), "--llm", SCRIPT, "--fitness-ptq", "reconstruct",
                        "--fitness-recon-iters", "50", "--fitness-calib", "128"])
    assert (c.task.fitness_ptq, c.task.fitness_recon_iters, c.task.fitness_calib) == ("reconstruct", 50, 128)
    stored = json.loads(json.dumps(c.settings_dict()))
    assert stored["task"]["fitness_ptq"] == "reconstruct" and RunConfig.from_dict(c.to_dict()).task == c.task
    default = parse_run_args(["--runs-dir", str(tmp_path), "--llm", SCRIPT])
    assert default.task.fitness_ptq == "rtn"
    old = default.to_dict()
    for name in ("fitness_ptq", "fitness_recon_iters", "fitness_calib"):
        del old["task"][name]  # a run stored before the option resumes with the paper's fitness
    assert RunConfig.from_dict(old).task.fitness_ptq == "rtn"


@pytest.mark.parametrize("args", [["--fitness-recon-iters", "0"], ["--fitness-calib", "-3"]])
def test_bad_values_are_config_errors(tmp_path, args):
    with pytest.raises(ConfigError, match=args[0]):
        parse_run_args(["--runs-dir", str(tmp_path), "--llm", SCRIPT, *args])


def exit_and_stderr(main, argv: list[str], capsys) -> tuple[int, str]:
    """A command's ``main`` run in this process: its exit code (argparse's own errors exit) and stderr.
    In-process, not ``python -m``: two interpreters importing torch and langgraph per case took 30 s of
    the suite; the shell's exit code is ``sys.exit(main())`` (checked from the shell in test_graph and
    test_sandbox_pool)."""
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().err


@pytest.mark.parametrize("args", [["--fitness-ptq", "adaquant"], ["--fitness-recon-iters", "0"],
                                  ["--fitness-calib", "lots"]])
def test_bad_flags_exit_2_with_one_line(tmp_path, args, capsys):
    from graph.run import main as run_main
    from sandbox.evaluate import main as evaluate_main

    runs = tmp_path / "runs"
    proxy = tmp_path / "p.py"
    proxy.write_text(NORM)
    for code, stderr in (exit_and_stderr(run_main, ["--runs-dir", str(runs), "--llm", SCRIPT, "--no-tui", *args],
                                         capsys),
                         exit_and_stderr(evaluate_main, [str(proxy), *args], capsys)):
        assert code == 2 and args[0] in stderr
        if args[1].isdigit():  # ours; argparse's own choice / type errors print its usage line first
            assert len(stderr.strip().splitlines()) == 1, stderr
    assert not runs.exists()  # nothing written


def test_the_sandbox_allows_the_reconstruction_its_time():
    from mpq.fitness_ptq import extra_fitness_seconds

    assert extra_fitness_seconds(Task()) == 0.0
    short, long = (extra_fitness_seconds(Task(fitness_ptq="reconstruct", fitness_recon_iters=n)) for n in (100, 200))
    assert 0 < short < long
