# `make demo`, `make test` and `make docs` each set up .venv from nothing, then run.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench docs clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned: this CPU build lies on the machine; a looser pin pulls CUDA.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[test,docs]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/ebsdnet demo

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks docs/conf.py
	$(BIN)/ruff format --check src tests benchmarks docs/conf.py

test: $(STAMP) lint
	$(BIN)/pytest

bench: $(STAMP)
	$(BIN)/ebsdnet bench --benchmarks BENCHMARKS.md

# Offline, warnings as errors; tests/test_docs.py runs the same build.
docs: $(STAMP)
	$(BIN)/sphinx-build -W --keep-going -b html docs docs/_build/html

clean:
	rm -rf $(VENV) build dist docs/_build src/*.egg-info
