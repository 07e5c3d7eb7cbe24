"""The leaderboard command (``python -m sandbox.leaderboard``): end to end on the
embedded data set with the committed checkpoint (a real subprocess, small search /
test limits), proxy files judged in the sandbox (hostile ones contained), and bad input."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sandbox_hostile import CANARIES
from scipy import stats

from mpq.proxies import BASELINES
from sandbox.leaderboard import main

ROOT = Path(__file__).resolve().parents[1]

USER_PROXY = """import torch

def score(layer):
    return float(layer.weight.abs().mean()) * layer.out_channels
"""
BROKEN_PROXY = """def score_all(layers):
    return [1.0, 2.0]
"""
HOSTILE = Path(__file__).parent / "hostile"
CONTAINED = {"write_outside": "rejected", "infinite_loop": "timeout"}
"""Proxy files that would write outside / hang the leaderboard's own process, and their fate."""


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    """One real run: two baselines, a user proxy, a broken one and hostile ones, two budgets, the
    OMPQ / EMQ bit set."""
    tmp = tmp_path_factory.mktemp("board")
    for path in CANARIES:  # a leftover would hide an escape
        path.unlink(missing_ok=True)
    (tmp / "mine.py").write_text(USER_PROXY)
    (tmp / "broken.py").write_text(BROKEN_PROXY)
    files = [tmp / "mine.py", tmp / "broken.py"] + [HOSTILE / f"{name}.py" for name in CONTAINED]
    out = tmp / "board.json"
    cmd = [sys.executable, "-m", "sandbox.leaderboard", "--model", "mobilenetv2", "--dataset", "embedded",
           "--budget", "3avg,4avg", "--bits", "2,3,4,8", "--baselines", "uniform,weight_norm", "--sandbox", "process", "--timeout", "5",
           *[arg for file in files for arg in ("--proxy", str(file))],
           "--eval-limit", "24", "--test-limit", "40", "--config-samples", "12",
           "--cache-dir", str(tmp / "cache"), "--json", str(out)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(out.read_text()), done.stdout


def test_rows_for_every_proxy_and_budget(board):
    report, stdout = board
    keys = {(r["proxy"], r["budget"]) for r in report["rows"]}
    names = ("uniform", "weight_norm", "mine", "broken", *CONTAINED)
    assert keys == {(p, b) for p in names for b in ("3avg", "4avg")}
    for budget in ("3avg", "4avg"):
        assert f"budget {budget}" in stdout
    assert "mine" in stdout and "error:" in stdout


def test_allocations_meet_their_budgets_with_the_bits_asked_for(board):
    report, _ = board
    assert report["task"]["bits"] == [2, 3, 4, 8] and report["config"]["bits"] == [2, 3, 4, 8]
    used = set()
    for row in report["rows"]:
        if "error" in row:
            continue
        used |= set(row["bits"].values())
        assert row["avg_bits"] <= float(row["budget"].removesuffix("avg")) + 1e-9
        assert len(row["bits"]) == report["layers"] and set(row["bits"].values()) <= {2, 3, 4, 8}
        assert 0.0 <= row["top1_search"] <= 1.0 and 0.0 <= row["top1_test"] <= 1.0
        assert row["phi"] == pytest.approx(0.1 * row["rho_sens"] + 0.9 * row["top1_search"])
    assert 3 in used  # uniform at 3avg is 3 bits everywhere


def test_rho_sens_is_spearman_against_the_measured_sensitivity(board):
    report, _ = board
    sensitivity = report["truth"]["sensitivity"]
    for row in report["rows"]:
        if row["proxy"] in ("weight_norm", "mine"):
            expected = stats.spearmanr(row["scores"], sensitivity).statistic
            assert row["rho_sens"] == pytest.approx(expected)
    uniform = [r for r in report["rows"] if r["proxy"] == "uniform"]
    assert all(r["rho_sens"] == 0.0 for r in uniform)  # Spearman of constant scores is defined as 0


def test_a_broken_proxy_is_an_error_row_not_a_crash(board):
    report, _ = board
    broken = [r for r in report["rows"] if r["proxy"] == "broken"]
    assert broken and all("2 scores for" in r["error"] for r in broken)


def test_proxy_files_run_in_the_sandbox_and_hostile_ones_are_contained(board):
    report, _ = board
    for name, status in CONTAINED.items():
        rows = [r for r in report["rows"] if r["proxy"] == name]
        assert rows and all(r["error"].startswith(f"{status}: ") for r in rows), rows
    assert not [str(p) for p in CANARIES if p.exists()]
    # a proxy file that runs in a slot says so through the sandbox's own failure text
    broken = [r for r in report["rows"] if r["proxy"] == "broken"]
    assert all(r["error"].startswith("error: ") for r in broken)


def test_the_old_command_runs_no_proxy_file(tmp_path):
    """``python -m mpq.leaderboard`` must not import what it is given: it points to the sandboxed command."""
    canary = tmp_path / "ran"
    proxy = tmp_path / "p.py"
    proxy.write_text(f"open({str(canary)!r}, 'w').close()\ndef score(layer):\n    return 1.0\n")
    done = subprocess.run([sys.executable, "-m", "mpq.leaderboard", "--proxy", str(proxy)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "python -m sandbox.leaderboard" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and not canary.exists()


def test_proxy_files_without_a_sandbox_are_refused_before_loading_anything(tmp_path):
    from mpq.leaderboard import LeaderboardConfig, LeaderboardError, run

    proxy = tmp_path / "p.py"
    proxy.write_text("def score(layer):\n    return 1.0\n")
    with pytest.raises(LeaderboardError, match="only in the sandbox"):
        run(LeaderboardConfig(proxies=(str(proxy),)))


def test_references_bound_and_machine(board):
    report, _ = board
    names = [r["name"] for r in report["reference"]]
    assert names == ["FP", "uniform-8", "uniform-4"]
    assert all(r["test_images"] == 40 for r in report["reference"])
    assert report["search_images"] == 24
    assert report["config_benchmark"]["configs"] == 12
    assert report["inference_bound"]["images_per_s"] > 0
    assert {"platform", "cpu_count", "torch"} <= set(report["machine"])
    fp = report["reference"][0]
    assert fp["top1_test"] > 0.5  # the committed checkpoint is trained (10 classes)
    assert np.isfinite([r["evaluation_s"] for r in report["rows"] if "error" not in r]).all()


def test_all_baselines_are_the_default():
    from mpq.leaderboard import LeaderboardConfig
    from sandbox.leaderboard import build_parser, config_from_args
    assert LeaderboardConfig().baselines == tuple(BASELINES)
    assert config_from_args(build_parser().parse_args([])).baselines == tuple(BASELINES)


@pytest.mark.parametrize("args, message", [
    (["--budget", "3foo"], "bad budget"),
    (["--model", "vgg"], "unknown model"),
    (["--dataset", "mnist"], "unknown data set"),
    (["--proxy", "/no/such/proxy.py"], "not found"),
    (["--baselines", "hawq"], "unknown baseline"),
    (["--eval-limit", "0"], "positive"),
    (["--bits", "2,x"], "comma-separated integers"),
    (["--budget", "1avg", "--model", "resnet18"], "infeasible"),
    (["--no-such-flag"], "unrecognized"),
])
def test_bad_input_is_one_line_and_exit_2(args, message, capsys, tmp_path):
    try:
        code = main(args + ["--cache-dir", str(tmp_path)])
    except SystemExit as stop:  # argparse's own errors
        code = stop.code
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], err
    assert err[-1] == errors[0]


def test_bad_input_exits_2_from_the_shell():
    done = subprocess.run([sys.executable, "-m", "sandbox.leaderboard", "--budget", "4qq"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "bad budget" in done.stderr
    assert done.stdout == ""
