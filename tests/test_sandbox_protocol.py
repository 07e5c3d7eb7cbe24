"""The sandbox's wire format and static gate: pure functions, no processes."""
import json
import math
import types
from pathlib import Path

import pytest

from sandbox.gate import MAX_SOURCE_BYTES, GateRejection, check_source
from sandbox.protocol import (
    EvaluationRequest,
    EvaluationResult,
    Limits,
    ProtocolError,
    SlotMessage,
    request_from_json,
    request_to_json,
    result_from_json,
    result_to_json,
    slot_message_from_json,
    slot_message_to_json,
    validate,
)
from sandbox.worker import Slot

GOOD = "import math\nimport torch\n\ndef score(layer):\n    return float(layer.weight.norm()) * math.exp(-layer.depth)\n"


def ok_result(scores, **kw):
    return EvaluationResult(id="r", status="ok", scores=scores, rho_sens=0.5, acc_quant=0.9, phi=0.86, **kw)


# --- wire format ---------------------------------------------------------------

def test_request_round_trips_through_one_json_line():
    request = EvaluationRequest(id="a1", proxy_source=GOOD, task={"model": "mobilenetv2", "bits": [2, 4, 8]},
                                limits=Limits(timeout_s=3.5, static_gate=False))
    line = request_to_json(request)
    assert "\n" not in line
    assert request_from_json(line) == request
    assert request_from_json(line.encode()) == request


@pytest.mark.parametrize("line, complaint", [
    ("{nope", "not JSON"),
    ("[1, 2]", "JSON object"),
    ('{"id": "x", "proxy_source": "s", "task": {}, "color": 1}', "unknown request field"),
    ('{"id": 3, "proxy_source": "s", "task": {}}', "'id'"),
    ('{"id": "x", "proxy_source": "s", "task": []}', "'task'"),
    ('{"id": "x", "proxy_source": "s", "task": {}, "limits": {"timeout_s": 1, "bogus": 2}}', "unknown limits"),
    ('{"id": "x", "proxy_source": "s", "task": {}, "version": 99}', "version 99"),
])
def test_malformed_requests_are_protocol_errors(line, complaint):
    with pytest.raises(ProtocolError, match=complaint):
        request_from_json(line)


def test_a_worker_answers_malformed_json_with_an_error_result_and_keeps_going():
    slot = Slot(evaluator=None, task_dict={}, mode="fork", scratch_root="/tmp", notes=[])
    result = slot.handle(b'{"id": "q7", "proxy_source": 1}')
    assert result.status == "error" and result.id == "q7" and "bad request" in result.reason
    assert slot.handle(b"\xff\xfe garbage").id == "?"


def test_result_round_trips_and_nan_becomes_null():
    result = ok_result([1.0, float("nan")], bits={"a": 4}, timings={"score_s": 0.1})
    line = result_to_json(result)
    assert "NaN" not in line and json.loads(line)["scores"] == [1.0, None]
    back = result_from_json(line)
    assert back.scores == [1.0, None] and back.bits == {"a": 4} and back.timings == {"score_s": 0.1}


@pytest.mark.parametrize("line", ["", "{", '{"id": "r"}', '{"id": "r", "status": "great"}',
                                  '{"id": "r", "status": "ok", "extra": 1}'])
def test_malformed_results_become_error_results(line):
    result = result_from_json(line, request_id="r9")
    assert result.status == "error" and result.id == "r9" and "malformed result" in result.reason


def test_slot_messages_round_trip():
    message = SlotMessage("ready", num_layers=53, load_s=1.5, mode="fork", isolation_notes=["x"])
    assert slot_message_from_json(slot_message_to_json(message)) == message
    with pytest.raises(ProtocolError):
        slot_message_from_json('{"kind": "dancing"}')


# --- validation ------------------------------------------------------------------

def test_validation_accepts_one_finite_score_per_layer():
    assert validate(ok_result([1.0, 2, 3.5]), num_layers=3).status == "ok"


@pytest.mark.parametrize("scores, reason", [
    ([1.0, 2.0], "2 scores for 3 layers"),
    ([1.0, None, 2.0], "finite"),
    ([1.0, math.inf, 2.0], "finite"),
    ([1.0, True, 2.0], "finite"),
    (None, "finite"),
])
def test_validation_turns_bad_scores_into_errors(scores, reason):
    result = validate(ok_result(scores), num_layers=3)
    assert result.status == "error" and reason in result.reason and result.phi is None


def test_validation_rejects_non_finite_fitness():
    result = validate(EvaluationResult(id="r", status="ok", scores=[1.0], rho_sens=None, acc_quant=0.5, phi=0.5), 1)
    assert result.status == "error" and "rho_sens" in result.reason


# --- static gate ----------------------------------------------------------------

def test_gate_passes_a_contract_proxy_and_the_baselines():
    from pathlib import Path

    check_source(GOOD)
    check_source("from scipy import stats\nimport numpy as np\ndef score_all(layers):\n    return [1.0] * len(layers)\n")
    baselines = [p for p in Path("mpq/proxies").glob("*.py") if p.name != "__init__.py"]
    assert baselines
    for path in baselines:
        check_source(path.read_text())


@pytest.mark.parametrize("source, rule, line", [
    ("x = 1\n", "contract", 0),
    ("def score(l)\n    return 1\n", "syntax", 1),
    ("import os\ndef score(l): return 1\n", "import", 1),
    ("def score(l):\n    import subprocess\n    return 1\n", "import", 2),
    ("from socket import socket\ndef score(l): return 1\n", "import", 1),
    ("from . import x\ndef score(l): return 1\n", "import", 1),
    ("import torch.hub\ndef score(l): return 1\n", "denied", 1),
    ("from torch.utils import cpp_extension\ndef score(l): return 1\n", "denied", 1),
    ("def score(l):\n    return eval('1')\n", "builtin", 2),
    ("def score(l):\n    f = open\n    return 1\n", "builtin", 2),
    ("def score(l):\n    return __import__('os')\n", "builtin", 2),
    ("def score(l):\n    return len(globals())\n", "builtin", 2),
    ("def score(l):\n    setattr(l, 'depth', 0)\n    return 1\n", "builtin", 2),
    ("def score(l):\n    return ().__class__\n", "dunder", 2),
    ("def score(l):\n    return l._hvp\n", "dunder", 2),
    ("def score(l):\n    return getattr(l, '__dict__')\n", "dunder", 2),
    ("def score(l):\n    n = 'weight'\n    return getattr(l, n)\n", "dunder", 3),
    ("def score(l):\n    return '{0.__class__}'.format(l)\n", "dunder", 2),
    ("def score(l):\n    return __builtins__\n", "builtin", 2),
    ("import torch\ndef score(l):\n    return torch.os.getpid()\n", "denied", 3),
    ("import numpy as np\ndef score(l):\n    np.save('x', 1)\n    return 1\n", "denied", 3),
    ("import torch\ndef score(l):\n    torch.load('x')\n    return 1\n", "denied", 3),
    ("import torch\ndef score(l):\n    l.weight.numpy().tofile('x')\n    return 1\n", "denied", 3),
])
def test_gate_rejections_name_rule_and_line(source, rule, line):
    with pytest.raises(GateRejection) as caught:
        check_source(source)
    assert (caught.value.rule, caught.value.line) == (rule, line)
    assert f"rule '{rule}'" in str(caught.value)


def test_gate_allows_a_literal_public_getattr():
    check_source("def score(l):\n    return float(getattr(l, 'depth', 0))\n")


def test_gate_has_a_size_limit():
    big = GOOD + "#" * MAX_SOURCE_BYTES
    with pytest.raises(GateRejection, match="size"):
        check_source(big)


# --- backend choice and worker environment ----------------------------------------

@pytest.mark.parametrize("installed, hint", [
    ("/usr/sbin/dockerd", "Docker is installed but its engine is not running: start it"),
    (None, "no Docker engine answered"),
])
def test_auto_backend_says_in_one_line_which_it_took_and_what_to_do(monkeypatch, installed, hint):
    import sandbox.docker_backend
    from sandbox.pool import resolve_backend

    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/tap-mpq.sock")  # no engine answers there
    # Only the Docker backend's view of shutil: patching shutil.which itself also hid `unshare` from
    # the process backend's cached namespace probe, and every later pool of the session (e.g.
    # test_sandbox_pool run after this file) ran its hostile proxies without namespaces.
    monkeypatch.setattr(sandbox.docker_backend, "shutil", types.SimpleNamespace(which=lambda name: installed))
    said = []
    assert resolve_backend("auto", said.append) == "process"
    assert len(said) == 1 and "\n" not in said[0]
    assert said[0].startswith("sandbox: process backend (") and hint in said[0]
    if installed:
        assert "--sandbox docker" in said[0]
    assert resolve_backend("process", said.append) == "process" and len(said) == 1


def test_a_named_backend_that_cannot_run_is_one_clear_error(monkeypatch):
    from sandbox.pool import PoolError, resolve_backend

    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/tap-mpq.sock")
    with pytest.raises(PoolError, match="--sandbox docker: .*Docker"):
        resolve_backend("docker", print)


def test_every_backend_is_one_registered_class():
    from sandbox.backend import Launcher
    from sandbox.pool import BACKEND_NAMES, BACKENDS

    assert BACKEND_NAMES == ("auto", *BACKENDS) and set(BACKENDS) == {"process", "docker", "ray"}
    for name, launcher in BACKENDS.items():
        assert launcher.name == name
        assert all(callable(getattr(launcher, m)) for m in ("availability", "for_slot", "start", "notes"))
        assert set(Launcher.__dict__) & {"availability", "for_slot", "start", "notes"} == {
            "availability", "for_slot", "start", "notes"}


def test_user_paths_are_made_absolute_in_the_callers_directory(tmp_path, monkeypatch):
    from mpq.task import Task
    from sandbox.pool import absolute_paths

    monkeypatch.chdir(tmp_path)
    task = absolute_paths(Task(dataset="cifar10", data_root="../data/cifar10", weights="ckpt/m.pt"))
    assert task.data_root == str(tmp_path.parent / "data" / "cifar10")
    assert task.weights == str(tmp_path / "ckpt" / "m.pt")
    assert absolute_paths(Task(weights="torchvision")).weights == "torchvision"
    assert absolute_paths(Task()) == Task()


def test_workers_inherit_no_environment(monkeypatch):
    from sandbox.process_backend import PROJECT_ROOT, worker_environment

    monkeypatch.setenv("OPENAI_API_KEY", "sk-should-not-travel")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    env = worker_environment(gpu="1")
    assert "OPENAI_API_KEY" not in env and env["CUDA_VISIBLE_DEVICES"] == "1"
    assert env["PYTHONPATH"] == str(PROJECT_ROOT) and set(env) <= {
        "PATH", "PYTHONPATH", "HOME", "LANG", "PYTHONDONTWRITEBYTECODE", "CUDA_VISIBLE_DEVICES", "OMP_WAIT_POLICY"}
    assert "CUDA_VISIBLE_DEVICES" not in worker_environment(gpu="all")


def test_workers_keep_the_thread_budget_and_nothing_else(monkeypatch):
    from sandbox.process_backend import worker_environment

    monkeypatch.setenv("OPENAI_API_KEY", "sk-should-not-travel")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MKL_NUM_THREADS", "1; echo sk-should-not-travel")  # digits only
    env = worker_environment()
    assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == "1"  # one budget, never the caller's text
    assert "sk-should-not-travel" not in " ".join(env.values())
    monkeypatch.setenv("OMP_NUM_THREADS", "0")
    assert "OMP_NUM_THREADS" not in worker_environment()


def test_every_slot_shares_the_cores_unless_the_caller_set_a_budget(monkeypatch):
    from sandbox.pool import slot_specs
    from sandbox.process_backend import worker_environment

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    env = worker_environment(threads=3)
    assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == "3" and env["OMP_WAIT_POLICY"] == "PASSIVE"
    assert "OMP_NUM_THREADS" not in worker_environment()
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    cpu = slot_specs({}, Limits(), Path("/tmp"), 4, [])
    assert [s.threads for s in cpu] == [2, 2, 2, 2] and {s.gpu for s in cpu} == {None}
    # GPU slots too (found on the GPU machine: 8 slots of a thread per core each oversubscribe it)
    gpu = slot_specs({}, Limits(), Path("/tmp"), 3, ["0", "1"])
    assert [s.gpu for s in gpu] == ["0", "1", "0"] and {s.threads for s in gpu} == {2}
    assert slot_specs({}, Limits(), Path("/tmp"), 16, [])[0].threads == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # the caller's budget wins, on every backend (the spec carries it)
    assert {s.threads for s in slot_specs({}, Limits(), Path("/tmp"), 2, ["0"])} == {3}
    # a slot's own budget wins over the environment it is started from (a Ray actor's OMP_NUM_THREADS=1)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert worker_environment(threads=4)["OMP_NUM_THREADS"] == "4"
