# aic-ml: every target creates .venv when it is missing, so each works first on a fresh clone.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CORE_STAMP := $(VENV)/.installed-core
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
TOOLS := .tools
TOOLS_STAMP := $(TOOLS)/.installed
export AIC_CHECKOV := $(CURDIR)/$(TOOLS)/bin/checkov
NCA := $(TOOLS)/nca
NCA_STAMP := $(NCA)/.installed
export AIC_NCA := $(CURDIR)/$(NCA)/bin/nca

.PHONY: help core docs venv tools system-deps demo test test-fast lint fmt up down status bench bench-deps clean audit \
	rehearsal-deps k8s-images k8s-rehearsal k8s-smoke

help: ## List every target
	@grep -E '^[a-zA-Z0-9_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  make %-10s %s\n", $$1, $$2}'

# Two installs from the same pins: the core (what `make demo`, `up` and `run` need) and, on top of it, everything the
# tests need (the dev, k8s, s3, embeddings and tensorflow extras).
# The installer is uv (pinned, itself installed by pip): about 20 s for the core where pip takes about 2 minutes.
# uv reads no pip configuration, so a machine's local wheel directory (pip's find-links, where a CPU build of
# torch may lie) is handed to it; `make INSTALLER=pip ...` installs with pip alone.
INSTALLER ?= uv
PROJECT_CODE := aicml flows tasks blocks deployments
UV_VERSION := 0.13.9
FIND_LINKS := $(shell $(PYTHON) -m pip config get global.find-links 2>/dev/null)
# Bytecode is compiled at install time (pip does it by default, uv with --compile-bytecode): where the environment
# sets PYTHONDONTWRITEBYTECODE, as these machines do, no process would ever write a .pyc, and every one of them
# (each flow run, server and worker) compiled torch, Lightning and MLflow from source again: 7.7 of a flow
# run's 22 s, measured with cProfile (builtins.compile).
ifeq ($(INSTALLER),uv)
INSTALL = $(BIN)/uv pip install -q --compile-bytecode --python $(BIN)/python $(foreach d,$(FIND_LINKS),--find-links $(d)) -c constraints.txt
else
INSTALL = $(BIN)/pip install -q -c constraints.txt
endif

$(CORE_STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip $(if $(filter uv,$(INSTALLER)),uv==$(UV_VERSION))
	# torch first, alone, so the installer takes the CPU build pinned in constraints.txt where one lies on disk
	$(INSTALL) torch
	$(INSTALL) -e .
	$(BIN)/python -m compileall -q $(PROJECT_CODE)
	@touch $(CORE_STAMP)

$(STAMP): $(CORE_STAMP)
	$(INSTALL) -e '.[dev,tensorflow]'
	$(BIN)/python -m compileall -q $(PROJECT_CODE)
	@touch $(STAMP)

core: $(CORE_STAMP) ## Create .venv with aic-ml alone (what the demo uses), from the pinned constraints

venv: $(STAMP) ## Create .venv with aic-ml and everything the tests use (dev, k8s, s3, embeddings, tensorflow)

$(TOOLS_STAMP): tools-requirements.txt
	@test -x $(TOOLS)/bin/python || $(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install -q -r tools-requirements.txt
	@touch $(TOOLS_STAMP)

$(NCA_STAMP): tools-nca-requirements.txt
	@test -x $(NCA)/bin/python || $(PYTHON) -m venv $(NCA)
	$(NCA)/bin/pip install -q -r tools-nca-requirements.txt
	@touch $(NCA_STAMP)

tools: $(TOOLS_STAMP) $(NCA_STAMP) ## Install checkov (.tools/) and the NetworkPolicy analyser nca (.tools/nca): their pins clash with torch's and each other's

system-deps: ## Debian packages the tests use (promtool/prometheus, pg_dump, chromium); installs only what is missing
	@command -v promtool >/dev/null && command -v prometheus >/dev/null || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null; }
	@command -v pg_dump >/dev/null || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-client >/dev/null; }
	@# headless Chromium: the tests open the HTML pages (Data Docs, plots, the local metrics page) in a real browser
	@command -v chromium >/dev/null || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

demo: $(CORE_STAMP) ## Start the local stack, run the pipeline as a deployment, show the quality gate and a prediction
	$(BIN)/aicml demo

up: $(CORE_STAMP) ## Start the local stack (Prefect server, MLflow server, worker, metrics exporter)
	$(BIN)/aicml up

down: $(CORE_STAMP) ## Stop what `make up` started
	$(BIN)/aicml down

status: $(CORE_STAMP) ## Show what runs, where, and the UI addresses
	$(BIN)/aicml status

lint: $(STAMP) ## ruff, mypy and the import-linter contracts (layers, library allowlists)
	$(BIN)/ruff check flows tasks blocks deployments aicml tests benchmarks
	$(BIN)/ruff format --check flows tasks blocks deployments aicml tests benchmarks
	$(BIN)/mypy flows tasks blocks aicml deployments
	$(BIN)/lint-imports

fmt: $(STAMP) ## Format and auto-fix
	$(BIN)/ruff format flows tasks blocks deployments aicml tests benchmarks
	$(BIN)/ruff check --fix flows tasks blocks deployments aicml tests benchmarks

test: lint tools system-deps ## Lint, then the whole test suite on real services
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP) tools ## The suite without tests marked slow
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

AUDIT := $(TOOLS)/audit
$(AUDIT)/.installed: tools-audit-requirements.txt
	@test -x $(AUDIT)/bin/python || $(PYTHON) -m venv $(AUDIT)
	$(AUDIT)/bin/pip install -q -r tools-audit-requirements.txt
	@touch $(AUDIT)/.installed

audit: $(AUDIT)/.installed ## pip-audit over the pinned constraints (PyPI advisories); exits 1 on a finding or a package it could not check
	$(AUDIT)/bin/pip-audit --strict --disable-pip --no-deps -r constraints.txt --progress-spinner off

BENCH_STAMP := $(VENV)/.installed-bench
MLSERVER := .bench/mlserver

$(BENCH_STAMP): $(STAMP)
	$(INSTALL) -e '.[bench]'
	@touch $(BENCH_STAMP)

# MLServer (the serving benchmark's peer) in its own venv: its pins clash with ours (uvloop below 0.22).
$(MLSERVER)/.installed: benchmarks/mlserver-requirements.txt
	@test -x $(MLSERVER)/bin/python || $(PYTHON) -m venv $(MLSERVER)
	$(MLSERVER)/bin/pip install -q -r benchmarks/mlserver-requirements.txt
	@touch $(MLSERVER)/.installed

bench-deps: $(BENCH_STAMP) $(MLSERVER)/.installed ## Install the benchmarks' peers: DuckDB, Polars, py-spy, MLServer (.bench/)

bench: bench-deps ## Run the side-by-side benchmarks; each prints a JSON line last
	$(BIN)/python benchmarks/pipeline_overhead.py
	$(BIN)/python benchmarks/ingest.py --rows 10000000 --files 8
	$(BIN)/python benchmarks/serving.py
	$(BIN)/python benchmarks/agents.py
	$(BIN)/python benchmarks/training.py
	$(BIN)/python benchmarks/tuning.py
	$(BIN)/python benchmarks/gpu_utilisation.py
	$(BIN)/python benchmarks/startup.py --rounds 2

docs: $(STAMP) ## Regenerate docs/parameters.md and the settings tables of docs/settings.md from the code
	$(BIN)/python -m aicml.stack.params_reference --write

clean: ## Remove the venv and the local stack's state
	-$(BIN)/aicml down
	rm -rf $(VENV) .aic

# --- Kubernetes: the podman rehearsal (this machine, no API server) and the kind smoke test (clusters) ---
CONTAINERS_CONF ?= /etc/containers/containers.conf
KIND_CLUSTER ?= aic-ml-smoke
K8S_IMAGE ?= ghcr.io/aic/aic-ml:$(shell sed -n 's/^__version__ = "\(.*\)".*/\1/p' aicml/__init__.py)

rehearsal-deps: ## Install podman, runc and debootstrap; containers.conf with runc and explicit ulimits
	@command -v podman >/dev/null && command -v runc >/dev/null && command -v debootstrap >/dev/null || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman runc debootstrap >/dev/null; }
	@# Debian's crun refuses this kernel's hybrid cgroups; raising ulimits is not permitted here.
	@grep -qs 'runtime = "runc"' $(CONTAINERS_CONF) || { mkdir -p $(dir $(CONTAINERS_CONF)) && printf '%s\n' \
	  '[containers]' 'default_ulimits = ["nofile=4096:4096", "nproc=4096:4096"]' '' '[engine]' 'runtime = "runc"' \
	  >> $(CONTAINERS_CONF); }

k8s-images: $(STAMP) rehearsal-deps ## Build the rehearsal's base (debootstrap), app and externals images; cached by inputs
	$(BIN)/python -c "from pathlib import Path; from aicml.kube.rehearsal.images import build_images; \
	  from aicml.kube.rehearsal.run import CACHE_DIR; build_images(Path('.').resolve(), CACHE_DIR / 'build')"

k8s-rehearsal: k8s-images ## Rehearse the dev overlay with podman: every workload as a container, probed; one table
	$(BIN)/aicml k8s rehearse --overlay dev --no-build

k8s-smoke: $(STAMP) ## With Docker and kind (not here): cluster, image, apply dev, rollouts, a flow per pool (k8s-gpu needs a GPU node)
	kind create cluster --name $(KIND_CLUSTER)
	trap 'kind delete cluster --name $(KIND_CLUSTER)' EXIT; set -e; ctx=kind-$(KIND_CLUSTER); \
	  k="kubectl --context $$ctx -n aic-ai-ml"; \
	  docker build -f docker/Dockerfile -t $(K8S_IMAGE) .; \
	  kind load docker-image $(K8S_IMAGE) --name $(KIND_CLUSTER); \
	  $(BIN)/aicml k8s apply --overlay dev --context $$ctx; \
	  $$k wait --for=condition=complete job/postgresql-ai-ml-init --timeout=300s; \
	  for d in $$($$k get deploy -o name); do $$k rollout status $$d --timeout=600s; done; \
	  $$k run aic-seed --image $(K8S_IMAGE) --restart Never --overrides '{"spec": {"securityContext": {"runAsUser": 10001, "fsGroup": 10001}, "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "training-data-pvc"}}], "containers": [{"name": "aic-seed", "image": "$(K8S_IMAGE)", "command": ["sh", "-c", "aicml demo-data --out /mnt/data/churn --rows 5000 && rm /mnt/data/churn/churn-corrupted.csv"], "volumeMounts": [{"name": "data", "mountPath": "/mnt/data"}]}]}}'; \
	  $$k wait --for=jsonpath='{.status.phase}'=Succeeded pod/aic-seed --timeout=300s; \
	  $$k port-forward svc/prefect-server 4200:4200 & pf=$$!; trap 'kill $$pf; kind delete cluster --name $(KIND_CLUSTER)' EXIT; sleep 5; \
	  export PREFECT_API_URL=http://127.0.0.1:4200/api; \
	  export PREFECT_API_AUTH_STRING="$$($$k get secret prefect-api-auth -o jsonpath='{.data.auth-string}' | base64 -d)"; \
	  $(BIN)/prefect deployment run 'ml-pipeline/k8s-cpu' --watch
