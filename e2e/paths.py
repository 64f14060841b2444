"""Where the harness keeps binaries and cluster state."""

from __future__ import annotations

import os
from pathlib import Path

E2E_DIR = Path(__file__).resolve().parent
REPO_ROOT = E2E_DIR.parent
TOOLCHAIN_DIR = E2E_DIR / "toolchain"


def cache_root() -> Path:
    """~/.cache/ccs-operator, or $XDG_CACHE_HOME/ccs-operator where that is set."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ccs-operator"


def bin_root() -> Path:
    return cache_root() / "bin"


def user_state_dir() -> Path:
    """The cluster `make demo` and `python -m e2e up` run (and leave up to explore)."""
    return cache_root() / "cluster"


def test_state_dir() -> Path:
    """The test suite's own cluster: started fresh, never the one a user explores."""
    return cache_root() / "test-cluster"


def default_state_dir() -> Path:
    """The local cluster's state: certificates, etcd data, pid files and logs."""
    override = os.environ.get("CCS_E2E_STATE_DIR")
    return Path(override).expanduser() if override else user_state_dir()
