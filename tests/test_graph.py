"""The search end to end: real CLI processes, real process sandbox, real SQLite,
MobileNetV2 on the embedded data set; only the LLM is scripted (responses go
through the agents' real parsing).

One base run (2 generations x 3 proxies; tests/scripted_search.py, shared with test_experiment.py)
is copied into this module's runs folder: end to end, branch and replay read it; the resume test
makes its own run and kills it.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from scripted_search import copy_run, environment
from scripted_search import run_args as search_args

from graph.run import main as run_main
from graph.runs import main as runs_main
from graph.tui import fmt

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def setup(scripted_search, tmp_path_factory):
    """The session's scripted search (tests/scripted_search.py) copied into this module's runs folder."""
    runs = tmp_path_factory.mktemp("graph") / "runs"
    copy_run(scripted_search, runs)
    return {"script": Path(scripted_search["script"]), "weights": scripted_search["weights"], "runs": runs,
            "env": environment()}


def run_args(setup, run_id: str, *extra: str) -> list[str]:
    return search_args(setup["script"], setup["weights"], setup["runs"], run_id, *extra)


def cli(setup, module: str, args: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=setup["env"],
                          capture_output=True, text=True, timeout=timeout)


def query(setup, run_id: str, sql: str) -> list[tuple]:
    conn = sqlite3.connect(f"file:{setup['runs'] / run_id / 'run.db'}?mode=ro", uri=True)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def base_run(scripted_search):
    return {"result": scripted_search["result"], "log": scripted_search["log"]}


def test_end_to_end_writes_all_tables_and_outputs(setup, base_run):
    result = base_run["result"]
    assert result["status"] == "finished"
    run_dir = setup["runs"] / "base"
    counts = {t: query(setup, "base", f"select count(*) from {t}")[0][0]
              for t in ("runs", "generations", "proxies", "evaluations", "llm_calls", "controller", "checkpoints")}
    # 6 candidates, 2 critic repairs, 8 LLM calls; the unparsable draft is stored as an LLM call
    # only, so 7 proxies, each with its evaluation: 6 judged in the sandbox, and generation 1's
    # crossover, which wrote generation 0's first proxy again, given that one's result.
    assert counts["runs"] == 1 and counts["generations"] == 2 and counts["controller"] == 2
    assert counts["proxies"] == 7 and counts["evaluations"] == 7 and counts["llm_calls"] == 8
    reused = query(setup, "base", "select e.generation, e.ast_hash, e.phi, e.wall_s, o.generation, o.ast_hash, o.phi "
                   "from evaluations e join evaluations o on o.proxy_id = e.reused_from")
    assert len(reused) == 1 and reused[0][0] == 1 and reused[0][4] == 0, reused  # from a generation-0 proxy
    assert reused[0][1] == reused[0][5] and reused[0][2] == reused[0][6] and reused[0][3] == 0.0
    assert counts["checkpoints"] > 0
    assert query(setup, "base", "select status from runs") == [("finished",)]
    statuses = dict(query(setup, "base", "select proxy_id, status from evaluations"))
    broken = [pid for pid, status in statuses.items() if status != "ok"]
    assert len(broken) == 1 and statuses[broken[0] + ".1"] == "ok"  # the critic's repair passed
    repaired = [pid for pid in statuses if pid.endswith(".1")]
    assert len(repaired) == 2 and all(statuses[pid] == "ok" for pid in repaired)
    assert query(setup, "base", "select count(*) from llm_calls where agent = 'critic'")[0][0] == 2
    assert query(setup, "base", "pragma journal_mode")[0][0] == "wal"

    for name in ("best_proxy.py", "bits.json", "report.md", "fitness.png", "templates.png", "bits.png"):
        assert (run_dir / name).is_file(), name
    bits = json.loads((run_dir / "bits.json").read_text())
    assert len(bits["bits"]) == 53 and set(bits["bits"].values()) <= {2, 4, 8}
    assert bits["avg_bits"] <= 3.0 + 1e-6 and 0.0 <= bits["test_acc"] <= 1.0
    best_phi = max(r[0] for r in query(setup, "base", "select phi from evaluations where phi is not null"))
    assert result["best"]["phi"] == pytest.approx(best_phi)
    assert "def score" in (run_dir / "best_proxy.py").read_text()
    assert "![fitness](fitness.png)" in (run_dir / "report.md").read_text()


def test_kill_9_then_resume_matches_uninterrupted_run(setup, base_run):
    log = setup["runs"].parent / "killed.log"
    proc = subprocess.Popen([sys.executable, "-m", "graph.run", *run_args(setup, "killed")], cwd=ROOT,
                            env=setup["env"], stdout=subprocess.DEVNULL, stderr=log.open("w"),
                            start_new_session=True)
    deadline = time.time() + 400
    done_before = []
    try:
        while time.time() < deadline and proc.poll() is None:
            time.sleep(0.5)
            try:
                done_before = query(setup, "killed", "select proxy_id, finished, phi from evaluations")
            except sqlite3.Error:
                continue
            if len(done_before) >= 2:
                break
    finally:
        exited = proc.poll()
        if exited is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the orchestrator and its sandbox workers, like a power cut
        proc.wait()
    assert exited is None, f"the run ended (exit {exited}) before it could be killed: {log.read_text()[-2000:]}"
    assert 2 <= len(done_before) < 7, "the run must be killed in the middle"
    assert query(setup, "killed", "select status from runs") == [("running",)]

    resumed = cli(setup, "graph.run", ["--resume", "killed", "--runs-dir", str(setup["runs"]), "--no-tui", "--json"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    after = {row[0]: row for row in query(setup, "killed", "select proxy_id, finished, phi from evaluations")}
    for row in done_before:  # nothing that was on disk was evaluated again
        assert after[row[0]] == row
    base_counts = query(setup, "base", "select count(*), count(phi) from evaluations")
    assert query(setup, "killed", "select count(*), count(phi) from evaluations") == base_counts
    assert query(setup, "killed", "select count(*) from generations")[0][0] == 2
    assert query(setup, "killed", "select status from runs") == [("finished",)]
    assert (setup["runs"] / "killed" / "bits.json").is_file()


def test_branch_creates_child_and_leaves_parent_byte_identical(setup, base_run):
    parent = setup["runs"] / "base"
    before = digests(parent)
    done = cli(setup, "graph.run", ["--branch", "base@0", "--controller", "dpo", "--seed", "1",
                                    "--runs-dir", str(setup["runs"]), "--run-id", "child", "--no-tui", "--json"])
    assert done.returncode == 0, done.stderr[-3000:]
    assert digests(parent) == before
    assert query(setup, "child", "select parent_run, parent_generation, controller, status from runs") == \
        [("base", 0, "dpo", "finished")]
    assert query(setup, "child", "select generation from generations order by generation") == [(0,), (1,)]
    inherited = "select proxy_id, phi, finished from evaluations where generation = 0 order by proxy_id"
    assert query(setup, "child", inherited) == query(setup, "base", inherited)
    assert query(setup, "child", "select kind from controller where generation = 1") == [("dpo",)]


def test_replay_reproduces_the_stored_numbers(setup, base_run, capsys):
    assert runs_main(["--runs-dir", str(setup["runs"]), "replay", "base", "--no-tui"]) == 0
    replay = capsys.readouterr().err
    rows = query(setup, "base", "select candidate, proxy_id, status, phi, rho_sens, acc_quant from evaluations")
    for candidate, pid, status, phi, rho, acc in rows:
        attempt = pid.rpartition(".")[2] if "." in pid else "0"
        assert f"{candidate}.{attempt}: {status} phi={fmt(phi)} rho={fmt(rho)} acc={fmt(acc)}" in replay
    # The per-evaluation lines are the very lines the live run printed.
    live = {line for line in base_run["log"].splitlines() if ": ok phi=" in line or ": error phi=" in line}
    assert live and live <= set(replay.splitlines())
    for gen, best_phi in query(setup, "base", "select generation, best_phi from generations"):
        assert f"generation {gen + 1} done: best" in replay and f"phi={fmt(best_phi)}" in replay

    assert runs_main(["--runs-dir", str(setup["runs"]), "replay", "base", "--generation", "1", "--no-tui"]) == 0
    only = capsys.readouterr().err
    assert "g1-c0" in only and "g0-c0.0:" not in only  # generation 0's evaluations are not replayed
    assert runs_main(["--runs-dir", str(setup["runs"]), "show", "base"]) == 0
    assert "best proxy" in capsys.readouterr().out
    assert runs_main(["--runs-dir", str(setup["runs"]), "list"]) == 0
    assert "base" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["--model", "nonet"], "unknown model"),
    (["--budget", "3bits"], "bad budget"),
    (["--prompts", "/nonexistent/prompts"], "prompt folder not found"),
    (["--resume", "no-such-run"], "unknown run id"),
    (["--branch", "no-such-run@0"], "unknown run id"),
    (["--branch", "nonsense"], "expected RUN_ID@GEN"),
    (["--llm", "scripted:/nonexistent.json"], "not found"),
    (["--generations", "0"], "must be >= 1"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, args, message):
    runs = tmp_path / "runs"
    assert run_main(["--runs-dir", str(runs), "--llm", "scripted:" + str(ROOT / "tests/data/scripted_llm.json"),
                     *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not runs.exists()


def test_branch_generation_out_of_range(setup, base_run, capsys):
    before = sorted(p.name for p in setup["runs"].iterdir())
    assert run_main(["--branch", "base@7", "--runs-dir", str(setup["runs"])]) == 2
    err = capsys.readouterr().err.strip()
    assert "out of range" in err and len(err.splitlines()) == 1
    assert run_main(["--branch", "base@0", "--budget", "4avg", "--runs-dir", str(setup["runs"])]) == 2
    assert "keeps the parent's task" in capsys.readouterr().err
    assert sorted(p.name for p in setup["runs"].iterdir()) == before
    assert runs_main(["--runs-dir", str(setup["runs"]), "replay", "nope"]) == 2
