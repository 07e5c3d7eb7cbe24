"""One real scripted search, shared by test_graph.py and test_experiment.py (``scripted_search`` in
conftest.py): a real ``python -m graph.run`` process, real process sandbox, real SQLite, MobileNetV2 on
the embedded data set; only the LLM is scripted, its responses going through the agents' real parsing.

A search is the suite's costliest fixture (a graph.run process, its fork server and slot, the final
step): run once per test session, even across pytest-xdist's processes (a file lock), and copied into
each module's own runs folder, which it then changes as it likes.

Generation 0 uses all three init responses (population 3): one fails in the sandbox, one does not
even parse; the critic repairs both. Generation 1's crossover writes generation 0's first proxy again
(another reasoning, the same code): it is judged once, its evaluation marked ``reused_from``.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUN_ID = "base"

GOOD = [
    ("Weight magnitude, decayed with depth.",
     "import math\n\ndef score(layer):\n    return float(layer.weight.abs().mean()) * math.exp(-layer.depth / layer.num_layers)\n"),
    ("Fisher information per weight.",
     "def score(layer):\n    g = layer.grad if layer.grad is not None else layer.weight\n"
     "    return float((g * layer.weight).pow(2).mean())\n"),
    ("Rank-combine magnitude and size.",
     "import numpy as np\n\ndef score_all(layers):\n    a = [float(l.weight.abs().mean()) for l in layers]\n"
     "    b = [l.params for l in layers]\n    return list(np.argsort(np.argsort(a)) + 0.5 * np.argsort(np.argsort(b)))\n"),
]
DUPLICATE = ("Magnitude again, for a crossover of the two parents.", GOOD[0][1])
BROKEN = ("Kurtosis of the weights.",  # 'weights' is not a layer attribute: fails in the sandbox
          "def score(layer):\n    w = layer.weights.flatten()\n    return float(w.pow(4).mean())\n")
UNPARSABLE = ("Layer size.",  # does not parse: a draft error whose code goes to the critic
              "def score(layer:\n    return float(layer.params)\n")
FIXED = ("The attribute is 'weight'.",
         "def score(layer):\n    w = layer.weight.flatten()\n    c = w - w.mean()\n"
         "    return float(c.pow(4).mean() / (c.pow(2).mean() ** 2 + 1e-12))\n")
FIXED_TOO = ("Close the parenthesis.", "def score(layer):\n    return float(layer.params) ** 0.5\n")


def response(reasoning: str, code: str) -> str:
    return f"{reasoning}\n\n```python\n{code}```\n"


SCRIPT = {
    "init": [response(*GOOD[0]), response(*BROKEN), response(*UNPARSABLE)],
    "mutation": [response(*GOOD[1]), response(*GOOD[2])],
    "crossover": [response(*DUPLICATE)],
    "critic": [response(*FIXED), response(*FIXED_TOO)],
}


def environment() -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.setdefault("TAP_MPQ_CACHE", str(Path.home() / ".cache" / "tap-mpq"))
    return env


def checkpoint(folder: Path) -> str:
    """The committed MobileNetV2 checkpoint; random weights (the same code path) where there is none."""
    from mpq.models import checkpoint_path

    weights = checkpoint_path("mobilenetv2", "embedded")
    if weights.is_file():
        return str(weights)
    import torch

    from mpq.data import load_splits
    from mpq.models import build_model, save_checkpoint

    torch.manual_seed(0)
    weights = folder / "mobilenetv2_random.pt"
    save_checkpoint(build_model("mobilenetv2", load_splits("embedded").spec), weights, {"note": "test"})
    return str(weights)


def run_args(script: Path, weights: str, runs: Path, run_id: str, *extra: str) -> list[str]:
    return ["--model", "mobilenetv2", "--dataset", "embedded", "--weights", weights, "--eval-limit", "32",
            "--llm", f"scripted:{script}", "--population", "3", "--generations", "2",
            "--sandbox", "process", "--workers", "1", "--no-tui", "--json",
            "--runs-dir", str(runs), "--run-id", run_id, *extra]


def run_search(folder: Path) -> dict:
    """The search into ``folder/runs/base``; what the fixture hands out (all JSON: it is read back by
    the other test process)."""
    script = folder / "script.json"
    script.write_text(json.dumps(SCRIPT))
    weights, runs = checkpoint(folder), folder / "runs"
    done = subprocess.run([sys.executable, "-m", "graph.run", *run_args(script, weights, runs, RUN_ID)], cwd=ROOT,
                          env=environment(), capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    return {"script": str(script), "weights": weights, "runs": str(runs), "result": json.loads(done.stdout),
            "log": done.stderr}


def copy_run(search: dict, runs: Path) -> Path:
    """The shared run, copied into ``runs`` (a module's own folder); its folder there."""
    target = runs / RUN_ID
    shutil.copytree(Path(search["runs"]) / RUN_ID, target)
    return target
