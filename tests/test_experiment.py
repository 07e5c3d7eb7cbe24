"""The experiment harness (issue 17): the leaderboard's calibration seeds, ``collect`` on a real
scripted search (real graph.run, process sandbox, SQLite; only the LLM scripted), the held-out
command end to end at tiny size (resume and time guard), and the report on synthetic JSON."""
from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from scripted_search import RUN_ID, copy_run

from benchmarks.experiment import main as experiment_main
from benchmarks.experiment_heldout import bits_key

ROOT = Path(__file__).resolve().parent.parent
STAND_IN = "import torch\n\ndef score(layer):\n    return float(layer.weight.abs().mean()) * layer.out_channels\n"


# --------------------------------------------------------------------------- leaderboard calib seeds

def test_calib_seeds_move_the_rtn_figure_of_a_2_bit_allocation():
    """Only the quantizer's calibration images change with the seed: W2 everywhere (bias correction
    and activation ranges from 16 images) moves, the same allocation under the same seed does not."""
    from mpq.data import calibration_batch, load_splits
    from mpq.leaderboard_calib import attach_calib_columns, calib_seed_top1
    from mpq.models import load_model
    from mpq.quant import quantizable_layers

    splits = load_splits("embedded")
    model = load_model("mobilenetv2", splits.spec, None)
    names = [n for n, _ in quantizable_layers(model, calibration_batch(splits, 1, 0)[0])]
    calib = {seed: calibration_batch(splits, 16, seed)[0] for seed in (0, 1)}
    test = splits.test.head(300)
    rows = [{"bits": {n: 2 for n in names}}, {"bits": {n: 2 for n in names}}, {"error": "failed"}]
    measured = calib_seed_top1(model, calib, rows, test.normalized(), test.labels, act_bits=8)
    assert measured[0][0] != measured[1][0]
    assert measured[0][0] == measured[0][1] and 2 not in measured[0]  # error rows are skipped
    attach_calib_columns(rows, measured)
    assert rows[0]["top1_test_calib"] == {0: measured[0][0], 1: measured[1][0]}
    assert rows[0]["top1_test_calib_max"] - rows[0]["top1_test_calib_min"] == abs(measured[0][0] - measured[1][0])
    assert "top1_test_calib" not in rows[2]


# --------------------------------------------------------------------------- collect on a real run

@pytest.fixture(scope="module")
def scripted_run(scripted_search, tmp_path_factory):
    """The session's real 2 x 3 search (tests/scripted_search.py, shared with test_graph.py): one draft
    fails in the sandbox and is repaired, one does not parse and is repaired, one duplicates an
    earlier proxy. Copied into this module's own runs folder."""
    runs = tmp_path_factory.mktemp("exp_run") / "runs"
    copy_run(scripted_search, runs)
    return runs


def query(db: Path, sql: str) -> list[tuple]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


@pytest.mark.slow
def test_collect_reads_a_real_run(scripted_run, tmp_path):
    results = tmp_path / "results"
    assert experiment_main(["collect", RUN_ID, "--runs-dir", str(scripted_run), "--results", str(results)]) == 0
    s = json.loads((results / f"search_{RUN_ID}.json").read_text())
    db = scripted_run / RUN_ID / "run.db"
    assert s["finished"] is True and s["config"]["controller"] == "paper" and s["config"]["budget"] == "3avg"
    assert [g["generation"] for g in s["generations"]] == [0, 1]
    assert s["generations"][0]["probs_used"] == pytest.approx({"init": 1 / 3, "mutation": 1 / 3, "crossover": 1 / 3})
    counts = {k: sum(t[k] for t in s["templates"].values()) for k in ("candidates", "repairs", "duplicates", "ok")}
    assert counts["candidates"] == 6
    assert counts["repairs"] == query(db, "SELECT COUNT(*) FROM proxies WHERE attempt > 0")[0][0] >= 1
    assert counts["duplicates"] == query(db, "SELECT COUNT(*) FROM evaluations WHERE reused_from IS NOT NULL")[0][0]
    assert counts["ok"] == query(db, "SELECT COUNT(DISTINCT candidate) FROM evaluations WHERE status='ok'")[0][0]
    best_phi = query(db, "SELECT MAX(phi) FROM evaluations WHERE status='ok'")[0][0]
    assert s["best_discovered"]["phi"] == pytest.approx(best_phi)
    t = s["time"]
    assert t["llm_s"] > 0 and t["evaluation_s"] > 0 and t["idle_orchestration_s"] >= 0
    assert t["wall_s"] >= max(t["llm_s"], t["evaluation_s"]) - 1e-6
    proxy = (results / "proxies" / f"{RUN_ID}.py").read_text()
    assert s["best_discovered"]["code"].strip() in proxy and proxy.startswith(f'"""Best discovered proxy of search {RUN_ID}')


@pytest.mark.slow
def test_collect_says_when_a_run_is_unfinished(scripted_run, tmp_path):
    runs = tmp_path / "runs"
    shutil.copytree(scripted_run / RUN_ID, runs / "partial")
    conn = sqlite3.connect(runs / "partial" / "run.db")
    with conn:  # as a search cut after generation 0 leaves it
        conn.execute("UPDATE runs SET status = 'running', wall_s = NULL, id = 'partial'")
        conn.execute("DELETE FROM generations WHERE generation > 0")
        conn.execute("DELETE FROM controller WHERE generation > 0")
    conn.close()
    results = tmp_path / "results"
    assert experiment_main(["collect", "partial", "--runs-dir", str(runs), "--results", str(results)]) == 0
    s = json.loads((results / "search_partial.json").read_text())
    assert s["finished"] is False and s["status"] == "running"
    assert s["progress"]["generations_done"] == 1 and len(s["generations"]) == 1
    assert s["time"]["wall_source"].startswith("created to last event") and s["time"]["wall_s"] > 0


def test_collect_of_a_missing_run_is_one_line_and_exit_2(tmp_path, capsys):
    assert experiment_main(["collect", "nope", "--runs-dir", str(tmp_path), "--results", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: no run database") and "\n" not in err


# --------------------------------------------------------------------------- held-out, tiny, on the CPU

@pytest.mark.slow
def test_heldout_rtn_then_guarded_then_resumed(tmp_path):
    proxies = tmp_path / "proxies"
    proxies.mkdir()
    (proxies / "found.py").write_text(STAND_IN)
    common = ["heldout", "--dataset", "embedded", "--models", "mobilenetv2", "--budgets", "3avg",
              "--proxies-dir", str(proxies), "--baselines", "uniform,snip", "--calib-seeds", "0,1",
              "--recon-seeds", "0,1", "--recon-iters", "2", "--calib-final", "32", "--eval-limit", "24",
              "--test-limit", "100", "--sandbox", "process", "--cache-dir", str(tmp_path / "cache"), "--time-limit-s", "3000"]
    first, second, third = (tmp_path / f"h{i}.json" for i in (1, 2, 3))
    assert experiment_main([*common, "--only-rtn", "--out", str(first)]) == 0
    h1 = json.loads(first.read_text())
    rows = h1["models"]["mobilenetv2"]["rtn"]["report"]["rows"]
    assert h1["status"] == "partial" and {r["proxy"] for r in rows} == {"uniform", "snip", "found"}
    assert all("top1_test_calib_mean" in r and "top1_test_reconstruct_mean" not in r for r in rows)
    assert all(r["top1_test_calib"]["0"] == r["top1_test"] for r in rows)  # seed 0: the leaderboard's quantizer
    # the time guard: no chunk fits in 1 ms, the RTN rows come from the first file
    assert experiment_main([*common, "--resume-from", str(first), "--out", str(second), "--time-limit-s", "0.001"]) == 0
    h2 = json.loads(second.read_text())
    assert h2["status"] == "partial" and "mobilenetv2/rtn" not in h2["calls"][-1]["seconds"]
    assert h2["models"]["mobilenetv2"]["recon"]["complete"] is False
    assert experiment_main([*common, "--resume-from", str(second), "--out", str(third)]) == 0
    h3 = json.loads(third.read_text())
    section = h3["models"]["mobilenetv2"]
    assert h3["status"] == "complete" and len(h3["calls"]) == 3 and section["recon"]["complete"] is True
    for row in section["rtn"]["report"]["rows"]:
        seeds = section["recon"]["done"][bits_key(row["bits"])]
        assert set(row["top1_test_reconstruct_per_seed"]) == set(seeds) == {"0", "1"}
        assert row["top1_test_reconstruct"] == seeds["0"] and row["top1_test_reconstruct_seeds"] == 2
        assert 0.0 <= row["top1_test_reconstruct_mean"] <= 1.0
    # a new discovered proxy with uniform's allocation: the RTN rows are scored again, and no
    # reconstruction is redone (they are kept per allocation)
    (proxies / "twin.py").write_text("def score(layer):\n    return 2.0\n")
    fourth = tmp_path / "h4.json"
    assert experiment_main([*common, "--resume-from", str(third), "--out", str(fourth)]) == 0
    h4 = json.loads(fourth.read_text())
    assert "mobilenetv2/rtn" in h4["calls"][-1]["seconds"] and h4["status"] == "complete"
    assert h4["models"]["mobilenetv2"]["recon"]["chunks"] == section["recon"]["chunks"]
    twin = next(r for r in h4["models"]["mobilenetv2"]["rtn"]["report"]["rows"] if r["proxy"] == "twin")
    assert twin["top1_test_reconstruct_seeds"] == 2


def test_heldout_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    code = experiment_main(["heldout", "--out", str(tmp_path / "h.json"), "--recon-iters", "0"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err == "error: --recon-iters must be at least 1, got 0"
    with pytest.raises(SystemExit) as exit_info:
        experiment_main(["heldout", "--out", str(tmp_path / "h.json"), "--calib-seeds", "a,b"])
    assert exit_info.value.code == 2
    capsys.readouterr()
    assert experiment_main(["heldout", "--out", str(tmp_path / "h.json"), "--act-bits", "1"]) == 2
    assert capsys.readouterr().err.strip() == "error: --act-bits must be between 2 and 16, got 1"


def test_heldout_state_keys_name_activation_bits_only_when_not_8(tmp_path):
    """A4 rows never resume from A8 state; A8 state written before --act-bits existed stays valid."""
    from benchmarks.experiment import build_parser, heldout_config
    from benchmarks.experiment_heldout import recon_key, rtn_key

    def config(*extra):
        return heldout_config(build_parser().parse_args(["heldout", "--out", str(tmp_path / "h.json"), *extra]))

    a8, a4 = config(), config("--act-bits", "4")
    assert "act_bits" not in rtn_key(a8, "mobilenetv2", {}) and "act_bits" not in recon_key(a8)
    assert rtn_key(a4, "mobilenetv2", {})["act_bits"] == 4 and recon_key(a4)["act_bits"] == 4


# --------------------------------------------------------------------------- report on synthetic JSON

def synthetic_search(run_id: str, controller: str, seed: int, phis: list[float]) -> dict:
    gens = [{"generation": g, "candidates": 8, "ok": 6, "best_phi_new": phi, "mean_phi_new": phi / 2,
             "best_so_far": {"id": f"g{g}-c0", "operator": "init", "phi": phi, "rho_sens": 0.1, "acc_quant": phi},
             "probs_used": {"init": 0.5 - 0.1 * g, "mutation": 0.25, "crossover": 0.25 + 0.1 * g}}
            for g, phi in enumerate(phis)]
    template = {"candidates": 40, "drafts": 38, "ok": 33, "first_pass_ok": 30, "repairs": 7, "duplicates": 4,
                "valid_rate": 33 / 40, "first_pass_rate": 30 / 40}
    return {"run_id": run_id, "finished": seed != 9, "status": "finished" if seed != 9 else "running",
            "config": {"controller": controller, "seed": seed, "seed_population": "llm", "budget": "3avg"},
            "progress": {"generations_done": len(phis)}, "generations": gens, "templates": {"init": template},
            "time": {"wall_s": 1200.0, "llm_s": 900.0, "evaluation_s": 400.0, "llm_and_evaluation_overlap_s": 250.0,
                     "idle_orchestration_s": 150.0},
            "best_discovered": {"candidate": "g1-c0", "phi": phis[-1], "rho_sens": 0.1, "acc_quant": phis[-1],
                                "same_bits_as_human": []},
            "best_human": {"in_run": None, "leaderboard": {"proxy": "snip", "phi": 0.68}}}


def row(proxy: str, rtn: list[float], recon: list[float], budget: str = "3avg") -> dict:
    import statistics

    out = {"proxy": proxy, "budget": budget, "rho_sens": 0.2, "top1_search": rtn[0], "top1_test": rtn[0],
           "size_mb": 0.8, "bits": {"a": 2}}
    for prefix, values in (("top1_test_calib", rtn), ("top1_test_reconstruct", recon)):
        out.update({f"{prefix}_mean": statistics.fmean(values), f"{prefix}_std": statistics.stdev(values),
                    f"{prefix}_min": min(values), f"{prefix}_max": max(values)})
    return out


def test_report_on_synthetic_json(tmp_path):
    results = tmp_path / "experiment"
    (results / "proxies").mkdir(parents=True)
    for run_id, controller, seed in (("exp-a", "paper", 0), ("exp-b", "paper", 1), ("exp-d", "dpo", 9)):
        search = synthetic_search(run_id, controller, seed, [0.5, 0.7])
        search["config"]["act_bits"] = 4 if run_id == "exp-b" else 8  # exp-b: the A4 search
        (results / f"search_{run_id}.json").write_text(json.dumps(search))
        (results / "proxies" / f"{run_id}.py").write_text(f'"""{run_id} reasoning."""\n' + STAND_IN)
    rows = [row("uniform", [0.23, 0.24, 0.25], [0.899, 0.900, 0.901]),
            row("snip", [0.73, 0.74, 0.75], [0.894, 0.895, 0.896]),
            row("exp-a", [0.80, 0.805, 0.81], [0.897, 0.899, 0.901]),  # RTN +6.5 beyond 2.0; recon -0.1 within 0.4
            row("exp-b", [0.60, 0.61, 0.62], [0.88, 0.885, 0.89])]
    heldout = {"status": "complete", "config": {"dataset": "cifar10-mini", "calib_seeds": [0, 1, 2],
                                                "recon_iters": 310, "calib_final": 1024, "recon_seeds": [0, 1, 2]},
               "models": {"mobilenetv2": {"rtn": {"report": {"rows": rows}}}},
               "calls": [{"machine": {"gpu": "NVIDIA H100 80GB HBM3"},
                          "seconds": {"mobilenetv2/rtn": 80.0, "mobilenetv2/recon": 300.0}, "wall_s": 400.0}]}
    (results / "heldout.json").write_text(json.dumps(heldout))
    a4_rows = [row("uniform", [0.15, 0.16, 0.17], [0.81, 0.815, 0.82]),
               row("snip", [0.68, 0.69, 0.70], [0.835, 0.84, 0.845]),
               row("ompq", [0.63, 0.64, 0.65], [0.838, 0.841, 0.844]),
               row("exp-a", [0.68, 0.69, 0.70], [0.835, 0.84, 0.845]),  # snip's allocation (same bits)
               row("exp-b", [0.35, 0.36, 0.37], [0.815, 0.816, 0.817])]  # the A4 search
    (results / "heldout_a4.json").write_text(json.dumps(
        {**heldout, "config": {**heldout["config"], "act_bits": 4}, "proxies": {"exp-b": {"sha256": "x"}},
         "calls": [{"machine": {"gpu": "NVIDIA H200"}, "seconds": {"mobilenetv2/rtn": 50.0, "mobilenetv2/recon": 140.0},
                    "wall_s": 200.0}],
         "models": {"mobilenetv2": {"rtn": {"report": {"rows": a4_rows}}}}}))
    out = tmp_path / "experiment.md"
    assert experiment_main(["report", "--results", str(results), "--out", str(out)]) == 0
    text = out.read_text()
    a4 = text.split("## Held-out evaluation at 4-bit activations")[1].split("\n## ")[0]
    assert "activations 4-bit" in a4 and "searches run at A4: exp-b." in a4 and "| 3avg | exp-b | **discovered** |" in a4
    assert "best − median human after reconstruction: 0.10 points (81.50-84.10%)" in a4
    assert ("**No**: no discovered proxy beats the best human proxy by more than the seeds' spread" in a4
            and "the A4 search's best (exp-b) gives 36.0 ± 1.0%, 33.0 points below it (beyond the spread, 2.0)" in a4
            and "(exp-a, snip's allocation) gives 69.0 ± 1.0%, the same figure (within the spread, 2.0)" in a4
            and "After reconstruction the best human proxy is ompq at 84.10 ± 0.30%" in a4)
    assert "| mobilenetv2 (A4) | 3avg | recon | exp-a 84.0 | ompq 84.1 | -0.1 | 1.0 | within the spread |" in text
    answer = text.split("## Answer (mechanical)")[1].split("## The discovered proxies")[0]
    assert "| mobilenetv2 | 3avg | rtn | exp-a 80.5 | snip 74.0 | +6.5 | 2.0 | beyond the spread |" in answer
    assert "| mobilenetv2 | 3avg | recon | exp-a 89.9 | uniform 90.0 | -0.1 | 0.4 | within the spread |" in answer
    assert "over search seeds, paper / llm / 3avg (2 searches) at 3avg, rtn: 70.8 ± 13.8 (range 19.5)" in text
    assert "600 GPU-seconds in all (calls' wall time, loading included) on NVIDIA H100 80GB HBM3, NVIDIA H200" in text
    assert "A4 mobilenetv2/recon 140 s, A4 mobilenetv2/rtn 50 s, mobilenetv2/recon 300 s, mobilenetv2/rtn 80 s" in text
    assert "| exp-d | dpo | 9 | llm | 3avg | **no** (running) |" in text
    assert "resnet18 (transfer)" in text and "_not yet run_" in text.split("resnet18 (transfer)")[1]
    assert "exp-a reasoning." in text
    for png in ("fitness.png", "templates.png", "heldout_mobilenetv2.png"):
        assert (results / png).stat().st_size > 1000 and f"experiment/{png}" in text


def test_report_with_nothing_collected_says_not_yet_run(tmp_path):
    out = tmp_path / "experiment.md"
    assert experiment_main(["report", "--results", str(tmp_path / "empty"), "--out", str(out)]) == 0
    text = out.read_text()
    for section in ("## Searches", "## Held-out evaluation", "## Held-out evaluation at 4-bit activations",
                    "## Answer (mechanical)", "## The discovered proxies"):
        assert "_not yet run_" in text.split(section)[1].split("\n## ")[0]


def test_heldout_starts_no_leaderboard_that_cannot_finish_in_time(tmp_path):
    out = tmp_path / "h.json"
    assert experiment_main(["heldout", "--out", str(out), "--proxies-dir", str(tmp_path), "--models", "mobilenetv2",
                            "--time-limit-s", "30"]) == 0  # the RTN phase alone is estimated at over 30 s
    state = json.loads(out.read_text())
    assert state["status"] == "partial" and state["models"] == {} and state["calls"][0]["seconds"] == {}


def test_heldout_needs_no_langgraph_matplotlib_or_sqlite_utils():
    """The GPU machine has torch / numpy / scipy only: the held-out path must import nothing else."""
    code = ("import sys\n"
            "for name in ('langgraph', 'langchain_core', 'graph', 'agents', 'matplotlib', 'sqlite_utils', 'ray'):\n"
            "    sys.modules[name] = None  # importing any of them now raises ImportError\n"
            "import benchmarks.experiment, benchmarks.experiment_heldout, mpq.leaderboard, mpq.leaderboard_calib\n"
            "import mpq.ptq_leaderboard, mpq.reconstruct, sandbox.leaderboard, sandbox.pool, sandbox.worker\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
