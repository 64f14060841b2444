# ccs-operator developer entry points. `make test` is what CI runs (.ci/run).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test unit lint demo down

$(STAMP): pyproject.toml
	@echo "==> installing ccs-operator and its test tools into $(VENV)" >&2
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -q --upgrade pip
	@$(PY) -m pip install -q -e '.[test,dev]'
	@touch $(STAMP)

# The whole suite: lint, unit tests, API-server tests and end-to-end tests on the local
# cluster (built from the Kubernetes Go modules on first use, then cached).
test: $(STAMP)
	@$(PY) -m ruff check operator tests e2e bench serving_image conftest.py
	@$(PY) -m mypy
	@# Builds (first run only) before pytest, so no test's timeout covers a cold Go build.
	@$(PY) -m e2e build >/dev/null
	@$(PY) -m pytest -p no:cacheprovider

# The main job on this machine: local control plane with fake GPU nodes, the CRD, the
# operator and samples/claude-code.yaml, ending with `kubectl get ccs`.
demo: $(STAMP)
	@$(PY) -m e2e demo

down: $(STAMP)
	@$(PY) -m e2e down

unit: $(STAMP)
	@$(PY) -m pytest -p no:cacheprovider tests -m "not cluster and not triton and not prometheus"

lint: $(STAMP)
	@$(PY) -m ruff check operator tests e2e bench serving_image conftest.py
	@$(PY) -m mypy
