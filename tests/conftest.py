"""Set before any test imports torch: idle OpenMP threads of the test process sleep instead of
spinning. With two torch threads spinning on a 2-core machine that also runs other work (a local
LLM, other engineers' jobs), every parallel region waits for a preempted thread: HAWQ-V2 on
ResNet50 took 229 s instead of 21 s beside the LLM benchmark (benchmarks/results/test_suite.md,
session 7). The sandbox's workers set the same (sandbox/process_backend.py: worker_environment).

Also the session's one scripted search (tests/scripted_search.py)."""
import json
import os

import pytest

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


@pytest.fixture(scope="session")
def scripted_search(tmp_path_factory):
    """The real scripted search of tests/scripted_search.py, run once per session: under pytest-xdist
    the first process to ask runs it in the folder all processes share and the others read it there
    (pytest-xdist's documented recipe for a session fixture that runs once)."""
    from filelock import FileLock
    from scripted_search import run_search

    if not os.environ.get("PYTEST_XDIST_WORKER"):  # one pytest process
        return run_search(tmp_path_factory.mktemp("scripted_search"))
    shared = tmp_path_factory.getbasetemp().parent / "scripted_search"
    done = shared / "search.json"
    with FileLock(str(shared) + ".lock"):
        if not done.is_file():
            shared.mkdir(exist_ok=True)
            done.write_text(json.dumps(run_search(shared)))
    return json.loads(done.read_text())
