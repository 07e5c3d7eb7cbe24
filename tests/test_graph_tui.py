"""The live view and the plain log are two renderings of one event stream."""
import io

import pytest
from rich.console import Console

from graph.tui import LiveSink, PlainSink, RunView

EVENTS = [
    {"event": "run", "run_id": "r1", "model": "mobilenetv2", "llm": "scripted:x", "generations": 2, "population": 2},
    {"event": "generation", "generation": 0, "operators": [{"id": "g0-c0", "operator": "init"},
                                                           {"id": "g0-c1", "operator": "init"}]},
    {"event": "draft", "id": "g0-c0", "operator": "init"},
    {"event": "eval_start", "id": "g0-c0", "attempt": 0},
    {"event": "eval_done", "id": "g0-c0", "attempt": 0, "status": "ok", "phi": 0.91234, "rho_sens": 0.5,
     "acc_quant": 0.96, "error": "", "reused": False, "final": True},
    {"event": "eval_done", "id": "g0-c1", "attempt": 0, "status": "error", "phi": None, "rho_sens": None,
     "acc_quant": None, "error": "AttributeError: weights", "reused": False, "final": False},
    {"event": "repair", "id": "g0-c1", "attempt": 1, "error": "AttributeError: weights"},
    {"event": "eval_done", "id": "g0-c1", "attempt": 1, "status": "ok", "phi": 0.5, "rho_sens": 0.1,
     "acc_quant": 0.54, "error": "", "reused": False, "final": True},
    {"event": "select", "generation": 0, "probs": {"init": 0.5, "mutation": 0.3, "crossover": 0.2},
     "population": [{"id": "g0-c0", "operator": "init", "status": "ok", "phi": 0.91234, "rho_sens": 0.5,
                     "acc_quant": 0.96}],
     "best": {"id": "g0-c0", "phi": 0.91234, "code": "def score(layer):\n    return 1.0\n"}},
    {"event": "finalize", "test_acc": 0.95, "avg_bits": 3.0, "run_dir": "runs/r1"},
]


def test_view_folds_events():
    view = RunView()
    for e in EVENTS:
        view.apply(e)
    assert view.finished == 2 and view.planned == 2 and not view.in_flight
    assert view.best["id"] == "g0-c0" and view.probs["init"] == 0.5
    assert any("repair 1" in line for line in view.log)


def test_live_layout_renders_state():
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=140, height=50, color_system=None)
    with LiveSink(console) as sink:
        for e in EVENTS:
            sink.emit(e)
    screen = buf.getvalue()
    for text in ("r1", "mobilenetv2", "g0-c0", "0.912", "template probabilities", "mutation", "repair 1",
                 "def score"):
        assert text in screen, text


def test_plain_lines():
    buf = io.StringIO()
    sink = PlainSink(Console(file=buf, width=200, color_system=None))
    for e in EVENTS:
        sink.emit(e)
    lines = buf.getvalue().splitlines()
    assert "g0-c0.0: ok phi=0.912 rho=0.500 acc=0.960" in lines
    assert any(line.startswith("g0-c1: critic repair 1 after: AttributeError") for line in lines)
    assert any("final: test top-1 0.950" in line for line in lines)


def test_eta_pipelined_stages():
    from graph.tui import eta_seconds

    assert eta_seconds(5, 0, 0.0, 0.0) is None  # nothing measured yet
    assert eta_seconds(0, 4, 40.0, 8.0) == 0.0
    # LLM 10 s / candidate, evaluation 2 s: the LLM sets the pace, the last evaluation follows it.
    assert eta_seconds(3, 4, 40.0, 8.0) == pytest.approx(3 * 10 + 2)
    # Evaluation 12 s / candidate over 2 slots = 6 s, LLM 1 s.
    assert eta_seconds(4, 2, 2.0, 24.0, workers=2) == pytest.approx(4 * 6 + 1)


def test_view_estimates_the_time_to_finish_from_measured_rates():
    view = RunView()
    for e in EVENTS[:2]:
        view.apply(e)
    assert view.eta() is None
    view.apply({"event": "llm_call", "id": "g0-c0", "seconds": 30.0})
    view.apply({**EVENTS[4], "eval_s": 6.0})  # g0-c0 done: 30 s LLM, 6 s evaluation
    # 1 left in this generation + 2 in the next, 30 s each, then one evaluation.
    assert view.finished == 1 and view.eta() == pytest.approx(3 * 30 + 6)
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=140, height=50, color_system=None)
    console.print(view.render())
    assert "expected to finish in" in buf.getvalue() and "1m 36s" in buf.getvalue()
