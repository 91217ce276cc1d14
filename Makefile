# Two commands set everything up on a fresh machine: `make demo` and `make test`.
# Both create (or refresh, when pyproject.toml changes) the virtual environment first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch is installed first and only when the venv has none: this is the build the project
# is tested with, and pyproject.toml's ranges then keep it (no second multi-GB download).
TORCH ?= torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.installed-stamp

.PHONY: venv demo test test-slow test-all test-gpu test-browser test-slurm lessons lab lint format clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch, torchvision" 2>/dev/null || $(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

venv: $(STAMP)

demo: venv
	$(PY) -m interlab quickstart

test: venv
	$(PY) -m pytest

# The tests marked slow only (learning runs, notebooks, torch.compile); CI runs them after `test`.
test-slow: venv
	$(PY) -m pytest -m slow

# Everything CI runs but the browser test: the fast suite plus the tests marked slow.
test-all: venv
	$(PY) -m pytest -m "not gpu and not browser and not slurm"

# The tests marked gpu (skipped without CUDA): the first thing to run on a GPU. On a GPU
# machine without the venv: make test-gpu PY=python3. Every tests/test_gpu*.py file joins by
# its name (benchmarks/gpu_pack.py's gpu_tests globs the same).
GPU_TESTS := $(sort $(wildcard tests/test_gpu*.py)) tests/test_augment.py tests/test_data.py
test-gpu: $(if $(filter $(VENV)/%,$(PY)),venv)
	$(PY) -m pytest -m gpu -p no:cacheprovider $(GPU_TESTS)

# JupyterLab + Debian's Chromium (apt-get install chromium), driven by Playwright; screenshots
# in tests/artifacts/browser/ (or $$INTERLAB_ARTIFACTS/browser/).
test-browser: venv
	$(PY) -m pytest -m browser tests/test_browser.py

# Sweeps against a real single-node SLURM (apt-get install slurm-wlm munge; root): the tests
# start the daemons and stop them by pid (../shared/reference/slurm.md).
test-slurm: venv
	$(PY) -m pytest -m slurm tests/test_slurm.py

# Every lesson executed with its solutions into runs/lessons/ (outputs + an HTML copy each).
lessons: venv
	$(PY) -m interlab.lessons.build --out runs/lessons

lab: venv
	$(VENV)/bin/jupyter lab notebooks/

lint: venv
	$(VENV)/bin/ruff check interlab tests benchmarks
	$(VENV)/bin/ruff format --check interlab tests benchmarks

format: venv
	$(VENV)/bin/ruff format interlab tests benchmarks
	$(VENV)/bin/ruff check --fix interlab tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
