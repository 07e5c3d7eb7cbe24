"""The process-backend pool on the real evaluator (MobileNetV2, embedded data set):
pool mechanics, and the corpus of hostile proxies in tests/hostile/.

One warm pool serves the whole module, as in a search: every hostile proxy is
followed by a check that the same slots still answer.
"""
import dataclasses
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from sandbox_hostile import ALIVE, CANARIES, SECRET, SECRET_FILE

from mpq.task import Task
from sandbox.gate import GateRejection, check_source
from sandbox.pool import EvaluatorPool, PoolError
from sandbox.process_backend import namespace_support
from sandbox.protocol import Limits

HOSTILE = Path(__file__).parent / "hostile"
TASK = Task(dataset="embedded", eval_limit=32)
LIMITS = Limits(timeout_s=2.5, cpu_s=20, memory_mb=1024, startup_s=900)
GOOD = (Path(__file__).parent.parent / "mpq" / "proxies" / "weight_norm.py").read_text()

# file -> (the gate's rule, or None where it passes; statuses allowed once it runs)
CORPUS = {
    "write_outside": ("import", {"error"}),
    "read_secrets": ("import", {"error"}),
    "open_socket": ("import", {"error"}),
    "fork_bomb": ("import", {"error", "killed", "timeout"}),
    "memory_bomb": (None, {"error", "killed"}),
    "infinite_loop": (None, {"timeout"}),
    "deep_recursion": (None, {"error"}),
    "c_stack_overflow": ("import", {"error", "killed", "timeout"}),
    "sys_exit": ("import", {"error"}),
    "hard_exit": ("import", {"killed"}),
    "kill_parent": ("import", {"error", "killed"}),  # killpg(0) inside the namespace: itself
    "signal_handlers": ("import", {"timeout"}),
    "dunder_escape": ("dunder", {"error"}),
    "getattr_escape": ("dunder", {"error"}),
    "format_escape": ("dunder", {"error"}),
    "torch_escape": ("denied", {"error"}),
    "huge_output": (None, {"ok"}),
    "huge_error": (None, {"error", "timeout"}),  # 100 MB to format: past 2.5 s on a loaded machine
    "nan_scores": (None, {"error"}),
    "wrong_length": (None, {"error"}),
    "not_numbers": (None, {"error"}),
}


@pytest.fixture(scope="module")
def pool():
    for path in CANARIES:  # leftovers of an earlier broken run would hide a new escape
        path.unlink(missing_ok=True)
    os.environ["TAP_MPQ_HOSTILE_API_KEY"] = SECRET
    SECRET_FILE.write_text(SECRET)
    try:
        with EvaluatorPool(TASK, backend="process", workers=2, limits=LIMITS) as pool:
            assert pool.wait_ready(900)
            yield pool
    finally:
        os.environ.pop("TAP_MPQ_HOSTILE_API_KEY", None)
        SECRET_FILE.unlink(missing_ok=True)


def ungated(pool, source, request_id):
    request = pool.request(source, request_id)
    return dataclasses.replace(request, limits=dataclasses.replace(request.limits, static_gate=False))


def run_one(pool, request):
    pool.submit(request)
    (result,) = list(pool.results())
    assert result.id == request.id
    return result


# --- mechanics ----------------------------------------------------------------------

def test_a_baseline_is_judged_with_every_field(pool):
    result = pool.evaluate(GOOD, "weight_norm")
    assert result.status == "ok", result.reason
    assert result.id == "weight_norm"
    assert len(result.scores) == len(result.bits) == 53
    assert set(result.bits.values()) <= {2, 4, 8} and abs(result.avg_bits - 3.0) < 0.05
    assert -1 <= result.rho_sens <= 1 and 0 <= result.acc_quant <= 1
    assert result.phi == pytest.approx(0.1 * result.rho_sens + 0.9 * result.acc_quant)
    assert {"score_s", "allocate_s", "quantize_s", "eval_s", "sandbox_s", "roundtrip_s"} <= set(result.timings)
    assert any("fork mode" in note for note in result.isolation_notes)


def test_results_come_in_completion_order_with_their_ids(pool):
    pool.submit(pool.request((HOSTILE / "infinite_loop.py").read_text(), "slow"))
    pool.submit(pool.request(ALIVE, "quick"))
    pool.submit(pool.request("import os\ndef score(l): return 1\n", "refused"))
    results = list(pool.results())
    assert [r.id for r in results] == ["refused", "quick", "slow"]
    assert [r.status for r in results] == ["rejected", "error", "timeout"]
    assert "alive" in results[1].reason and "rule 'import'" in results[0].reason


def test_namespaces_are_used_or_their_absence_is_said(pool):
    notes = " ".join(pool.evaluate(ALIVE).isolation_notes)
    available, why = namespace_support()
    # the answer is cached per process: a test that faked the environment while it was first
    # probed would have switched namespaces off for every later pool (seen: canaries in /tmp)
    assert namespace_support.__wrapped__() == (available, why), "the cached namespace probe is stale"
    if available:
        assert "network, mount and PID namespaces" in notes and "read-only" in notes and "nobody" in notes
    else:
        assert why in notes


def test_an_unknown_backend_is_refused():
    with pytest.raises(PoolError, match="unknown sandbox backend"):
        EvaluatorPool(TASK, backend="vm")


# --- the hostile corpus -------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(CORPUS))
def test_the_gate_rejects_or_passes_each_hostile_proxy(name):
    rule, _ = CORPUS[name]
    source = (HOSTILE / f"{name}.py").read_text()
    if rule is None:
        check_source(source)
        return
    with pytest.raises(GateRejection) as caught:
        check_source(source)
    assert caught.value.rule == rule


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_each_hostile_proxy_is_contained_without_the_gate(pool, name):
    _, allowed = CORPUS[name]
    listener = socket.create_server(("127.0.0.1", 48765)) if name == "open_socket" else None
    try:
        result = run_one(pool, ungated(pool, (HOSTILE / f"{name}.py").read_text(), name))
        if listener is not None:
            listener.setblocking(False)
            with pytest.raises(BlockingIOError):
                listener.accept()  # nobody connected
    finally:
        if listener is not None:
            listener.close()
    assert result.status in allowed, (result.status, result.reason)
    leaked = [str(p) for p in CANARIES if p.exists()]
    assert not leaked, f"{name} wrote outside its scratch dir: {leaked}"
    assert SECRET not in result.reason + result.traceback_tail
    assert len(result.reason) <= 300 and len(result.traceback_tail) <= 4000
    if result.status == "ok":
        assert len(result.scores) == 53
    # the orchestrator is alive, and so are the slots: the next evaluation is served
    after = pool.evaluate(ALIVE)
    assert after.status == "error" and "alive at depth 0" in after.reason


def test_a_gated_pool_rejects_before_any_slot_runs(pool):
    result = pool.evaluate((HOSTILE / "write_outside.py").read_text(), "w")
    assert result.status == "rejected" and "rule 'import'" in result.reason and result.timings == {}


def test_after_the_corpus_the_warm_slots_still_judge_proxies(pool):
    result = pool.evaluate(GOOD)
    assert result.status == "ok" and pool.restarts == 0


# --- the GPU path (in-process slots), exercised on the CPU --------------------------

def test_in_process_slot_is_replaced_when_the_proxy_kills_it(pool):
    forked = pool.evaluate(GOOD)  # scores in a child, fitness in the warm parent
    with EvaluatorPool(TASK, backend="process", workers=1, limits=LIMITS, worker_mode="in-process") as gpu_like:
        loop = gpu_like.evaluate((HOSTILE / "infinite_loop.py").read_text())
        assert loop.status == "timeout" and gpu_like.restarts == 0
        killed = run_one(gpu_like, ungated(gpu_like, (HOSTILE / "hard_exit.py").read_text(), "exit"))
        assert killed.status == "killed" and "slot died" in killed.reason
        assert gpu_like.restarts == 1
        after = gpu_like.evaluate(GOOD)  # Evaluator.evaluate in one process, after a cold restart
    assert after.status == "ok", after.reason
    assert any("in-process mode" in note for note in after.isolation_notes)
    # the fork split judges exactly as the evaluator does in one process
    assert forked.scores == pytest.approx(after.scores)
    assert (forked.phi, forked.bits) == (pytest.approx(after.phi), after.bits)


# --- the command -------------------------------------------------------------------

def run_cli(*args):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)}
    return subprocess.run([sys.executable, "-m", "sandbox.evaluate", *args], capture_output=True, text=True,
                          env=env, timeout=900)


def test_evaluate_command_report_shows_fitness_bits_and_isolation(pool):
    from sandbox.evaluate import _report

    text = _report(pool.evaluate(GOOD))
    assert text.startswith("status: ok") and "phi: " in text and "avg bits: 3.00" in text
    assert "isolation:" in text and "fork mode" in text


def test_evaluate_command_prints_json(tmp_path):
    import json

    proxy = tmp_path / "mine.py"
    proxy.write_text((HOSTILE / "dunder_escape.py").read_text())
    done = run_cli(str(proxy), "--model", "mobilenetv2", "--dataset", "embedded", "--budget", "4avg", "--json")
    assert done.returncode == 1, done.stderr
    result = json.loads(done.stdout)
    assert (result["status"], result["id"]) == ("rejected", "mine") and "rule 'dunder'" in result["reason"]


def test_evaluate_command_reports_a_rejection_and_bad_input(tmp_path, capsys):
    """The command's main() in this process (a shell run of it is the test above: the same code
    behind ``sys.exit(main())``, without four more interpreter and torch start-ups)."""
    from sandbox.evaluate import main

    proxy = tmp_path / "bad.py"
    proxy.write_text("import os\ndef score(l): return 1\n")
    assert main([str(proxy), "--sandbox", "process", "--eval-limit", "32"]) == 1
    out = capsys.readouterr().out
    assert "status: rejected" in out and "rule 'import'" in out
    for args, message in [((str(tmp_path / "missing.py"),), "No such file"),
                          ((str(proxy), "--model", "alexnet"), "unknown model"),
                          ((str(proxy), "--budget", "lots"), "bad budget")]:
        assert main(list(args)) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1
