# aic-ml: every target creates .venv when it is missing, so each works first on a fresh clone.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
TOOLS := .tools
TOOLS_STAMP := $(TOOLS)/.installed
export AIC_CHECKOV := $(CURDIR)/$(TOOLS)/bin/checkov

.PHONY: help venv tools system-deps demo test test-fast lint fmt up down status bench clean

help: ## List every target
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, alone, so pip takes the CPU build pinned in constraints.txt
	$(BIN)/pip install -q -c constraints.txt torch
	$(BIN)/pip install -q -c constraints.txt -e '.[dev,tensorflow]'
	@touch $(STAMP)

venv: $(STAMP) ## Create .venv and install aic-ml with its dev extra from the pinned constraints

$(TOOLS_STAMP): tools-requirements.txt
	@test -x $(TOOLS)/bin/python || $(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install -q -r tools-requirements.txt
	@touch $(TOOLS_STAMP)

tools: $(TOOLS_STAMP) ## Install checkov into its own venv (.tools/): its pins clash with torch's

system-deps: ## Debian packages the tests use (promtool/prometheus, pg_dump); installs only what is missing
	@command -v promtool >/dev/null && command -v prometheus >/dev/null || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null; }
	@command -v pg_dump >/dev/null || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-client >/dev/null; }

demo: $(STAMP) ## Start the local stack, run the pipeline as a deployment, show the quality gate and a prediction
	$(BIN)/aicml demo

up: $(STAMP) ## Start the local stack (Prefect server, MLflow server, worker, metrics exporter)
	$(BIN)/aicml up

down: $(STAMP) ## Stop what `make up` started
	$(BIN)/aicml down

status: $(STAMP) ## Show what runs, where, and the UI addresses
	$(BIN)/aicml status

lint: $(STAMP) ## ruff, mypy and the import-linter layer contract
	$(BIN)/ruff check flows tasks blocks deployments aicml tests benchmarks
	$(BIN)/ruff format --check flows tasks blocks deployments aicml tests benchmarks
	$(BIN)/mypy flows tasks blocks aicml
	$(BIN)/lint-imports

fmt: $(STAMP) ## Format and auto-fix
	$(BIN)/ruff format flows tasks blocks deployments aicml tests benchmarks
	$(BIN)/ruff check --fix flows tasks blocks deployments aicml tests benchmarks

test: lint tools system-deps ## Lint, then the whole test suite on real services
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP) tools ## The suite without tests marked slow
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

bench: $(STAMP) ## Run the side-by-side benchmarks; each prints a JSON line last
	$(BIN)/python benchmarks/pipeline_overhead.py
	$(BIN)/python benchmarks/ingest.py --rows 10000000 --files 8
	$(BIN)/python benchmarks/serving.py
	$(BIN)/python benchmarks/agents.py
	$(BIN)/python benchmarks/training.py
	$(BIN)/python benchmarks/tuning.py
	$(BIN)/python benchmarks/gpu_utilisation.py

clean: ## Remove the venv and the local stack's state
	-$(BIN)/aicml down
	rm -rf $(VENV) .aic
