"""Set before any test imports torch: idle OpenMP threads of the test process sleep instead of
spinning. With two torch threads spinning on a 2-core machine that also runs other work (a local
LLM, other engineers' jobs), every parallel region waits for a preempted thread: HAWQ-V2 on
ResNet50 took 229 s instead of 21 s beside the LLM benchmark (benchmarks/results/test_suite.md,
session 7). The sandbox's workers set the same (sandbox/process_backend.py: worker_environment).

Also the order in which ``make test``'s two processes take the test files, and the session's one
scripted search (tests/scripted_search.py)."""
import json
import os

import pytest

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

LONGEST_FIRST = (
    "test_sandbox_ray_lifecycle.py",  # 40-80 s, mostly waiting: its SIGKILL case waits up to 60 s on Ray's agents
    "test_graph.py",
    "test_sandbox_ray.py",
    "test_sandbox_lifecycle.py",
    "test_llm_local.py",
    "test_experiment.py",  # after test_graph.py: the scripted search is ready by then, nobody waits on it
    "test_export.py",
    "test_leaderboard.py",
    "test_sandbox_pool.py",
    "test_sandbox_forkserver.py",
    "test_sandbox_docker.py",
    "test_proxies.py",
    "test_graph_final.py",
    "test_train.py",
    "test_models.py",
    "test_local_server.py",
    "test_transformers.py",
)
"""Files by their seconds in a suite run (benchmarks/results/test_suite.md, session 12), longest first,
except where a comment says why a file goes earlier or later.
pytest-xdist hands whole files (``--dist loadfile``) to its processes in collection order when the
Makefile's ``--no-loadscope-reorder`` is given; by default it orders them by their number of tests,
which put the Ray lifecycle file's three tests last, the other process idle while its SIGKILL case
waited on Ray (79 s at the end of a 493 s suite). Longest first is the classic heuristic for the
shortest finish of jobs on parallel machines (Graham's LPT rule); the rest keep their order."""


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a file's tests keep their order


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
