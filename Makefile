# The two commands of the README, each installing what it needs into .venv:
#   make demo   the loan demo on the embedded default (no server needed)
#   make test   the whole test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test unit lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# Re-install when pyproject.toml changes.
$(VENV)/.base: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e .
	touch $@

$(VENV)/.dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@ $(VENV)/.base

demo: $(VENV)/.base
	$(BIN)/pausepoint demo

test: $(VENV)/.dev
	$(BIN)/python -m pytest

unit: $(VENV)/.dev
	$(BIN)/python -m pytest tests/unit tests/contract -k "not postgres"

$(VENV)/.bench: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e ".[dev,bench]"
	touch $@ $(VENV)/.dev $(VENV)/.base

# Every benchmark, 3 repetitions, table + bench/results/bench.json + bench.png (not a test).
bench: $(VENV)/.bench
	$(BIN)/python -m bench all

# mypy cannot follow the editable install's finder: it reads the three folders through
# a tree of links that names them as they install (pausepoint.persistence, ...).
TYPECHECK := $(VENV)/typecheck

lint: $(VENV)/.dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	mkdir -p $(TYPECHECK)/pausepoint
	for p in persistence tasks worker; do ln -sfn "$(CURDIR)/$$p" $(TYPECHECK)/pausepoint/$$p; done
	MYPYPATH=$(TYPECHECK) $(BIN)/mypy

clean:
	rm -rf $(VENV) .pausepoint-demo .pytest_cache .mypy_cache .ruff_cache *.egg-info
