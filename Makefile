# The interface of the project: `make demo`, `make test`, `make bench`, `make lab`.
# Each target creates .venv (Python 3.11) and installs stacklab with its extras when needed.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.stacklab-installed
DEMO_DIR ?= demo-output
TYPECHECK_ROOT := build/typecheck

.PHONY: demo test lint typecheck pytest bench lab install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e ".[dev]"
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (stacklab)" >/dev/null
	# Compile the numba kernels once (about 30 s), not in the first run or in every worker.
	$(BIN)/python -m stacklab.toolkit.warm_kernels
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/stacklab demo --out $(DEMO_DIR)

lint: install
	$(BIN)/ruff check toolkit widgets tests
	$(BIN)/ruff format --check toolkit widgets tests

# mypy cannot follow the editable install's import hook, so it checks the source
# through a small tree of links that spells the real package names.
typecheck: install
	mkdir -p $(TYPECHECK_ROOT)/stacklab
	ln -sfn ../../../toolkit $(TYPECHECK_ROOT)/stacklab/toolkit
	ln -sfn ../../../widgets $(TYPECHECK_ROOT)/stacklab/widgets
	cd $(TYPECHECK_ROOT) && ../../$(BIN)/mypy --config-file ../../pyproject.toml -p stacklab.toolkit -p stacklab.widgets

pytest: install
	$(BIN)/python -m pytest

test: lint typecheck pytest

bench: install
	$(BIN)/python -m pip install -q -e ".[dev,bench]"
	$(BIN)/python tests/bench/run_all.py

lab: install
	$(BIN)/jupyter lab --notebook-dir=notebooks

clean:
	rm -rf build dist $(DEMO_DIR) .mypy_cache .ruff_cache .pytest_cache
