# Two fresh-machine entry points (README Quickstart): `make app` and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
WORKSPACE ?= workspace
STAMP := $(VENV)/.installed

.PHONY: setup app demo test test-all clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# The local CPU wheel first: a bare `torch` requirement would pull a multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0 || $(BIN)/pip install -q "torch>=2.3,<3"
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

app: $(STAMP)
	$(BIN)/stride --workspace $(WORKSPACE) app

demo: $(STAMP)
	$(BIN)/stride --workspace $(WORKSPACE) demo

test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow and not gpu" tests

test-all: $(STAMP)
	$(BIN)/python -m pytest -q tests

clean:
	rm -rf $(VENV) $(WORKSPACE) test-output
