# ccs-operator developer entry points. `make test` is what CI runs (.ci/run).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test unit lint demo down image image-deps bundle lock

$(STAMP): pyproject.toml
	@echo "==> installing ccs-operator and its test tools into $(VENV)" >&2
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -q --upgrade pip
	@$(PY) -m pip install -q -e '.[test,dev]'
	@touch $(STAMP)

# The whole suite: lint, unit tests, API-server tests and end-to-end tests on the local
# cluster (built from the Kubernetes Go modules on first use, then cached).
test: $(STAMP) image-deps
	@$(PY) -m ruff check operator tests e2e bench serving_image release conftest.py
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
	@$(PY) -m pytest -p no:cacheprovider tests -m "not cluster and not triton and not prometheus and not image"

lint: $(STAMP)
	@$(PY) -m ruff check operator tests e2e bench serving_image release conftest.py
	@$(PY) -m mypy

# The operator's OCI image without Docker (release/image.py): a Debian bookworm base from
# mmdebstrap (cached under ~/.cache/ccs-operator/image), the wheel and its locked
# dependencies in /opt/ccs, packed as an OCI layout, a docker-archive tarball and an SPDX
# SBOM in build/image/<arch>/; prints the digest. Needs root. IMAGE_ARGS: e.g. --refresh-base.
image: $(STAMP) image-deps
	@$(PY) -m release image $(IMAGE_ARGS)

# Debian's mmdebstrap, umoci and skopeo, installed once when missing (the image tests too).
image-deps:
	@command -v mmdebstrap >/dev/null && command -v umoci >/dev/null \
		&& command -v skopeo >/dev/null || { \
		echo "==> installing mmdebstrap, umoci and skopeo (apt-get)" >&2; \
		apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -qq mmdebstrap umoci skopeo >&2; }

# The install bundle (helm template of the chart, CRD included, behind a Namespace) and the
# CRD, in build/bundle/, as the release attaches them. BUNDLE_ARGS: --digest sha256:...
bundle: $(STAMP)
	@$(PY) -m release bundle $(BUNDLE_ARGS)

# Resolve release/locks/ anew (the image's pinned dependencies, amd64 and arm64).
lock: $(STAMP)
	@$(PY) -m release lock
