"""checkov, the policy scanner a peer runs on our manifests, in a side venv of its own.

checkov pins many libraries of its own (boto3, packaging, pydantic ranges...) that must not
constrain the project's venv, so it gets `<cache>/checkov-venv` (see e2e.paths.cache_root),
created on first use with progress on stderr and reused afterwards. It is run without
network: `BC_SKIP_MAPPING` and `--skip-download` keep it from fetching its guideline
mappings, and where this process may (root, with `unshare`) it runs in a network namespace
of its own that has no route anywhere.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import sidevenv
from e2e.paths import cache_root

CHECKOV_REQUIREMENT = "checkov==3.3.30"


class CheckovUnavailable(RuntimeError):
    """checkov could not be installed or run here; the message says why."""


def venv_dir() -> Path:
    override = os.environ.get("CCS_CHECKOV_VENV")
    return Path(override).expanduser() if override else cache_root() / "checkov-venv"


def ensure_venv(path: Path | None = None) -> Path:
    """Create (once) the side venv with checkov; return its python."""
    return sidevenv.ensure(path or venv_dir(), CHECKOV_REQUIREMENT, "checkov", CheckovUnavailable)


def _isolated(argv: list[str]) -> list[str]:
    """argv in a network namespace of its own (loopback only), where that can be made."""
    unshare = shutil.which("unshare")
    if unshare and os.geteuid() == 0:
        probe = subprocess.run([unshare, "--net", "true"], capture_output=True, check=False)
        if probe.returncode == 0:
            return [unshare, "--net", "--", *argv]
    return argv


def scan(directory: Path) -> dict[str, Any]:
    """checkov's Kubernetes checks over every manifest in `directory`; its JSON report."""
    python = ensure_venv()
    argv = [
        str(python),
        "-m",
        "checkov.main",
        "--directory",
        str(directory),
        "--framework",
        "kubernetes",
        "--output",
        "json",
        "--skip-download",
    ]
    env = {**os.environ, "BC_SKIP_MAPPING": "TRUE", "CHECKOV_NO_VERSION_CHECK": "TRUE"}
    done = subprocess.run(
        _isolated(argv), capture_output=True, text=True, env=env, timeout=300, check=False
    )
    # Exit 1 means "checks failed": the report says which.
    if done.returncode not in (0, 1) or not done.stdout.strip():
        raise CheckovUnavailable(f"checkov exited {done.returncode}: {done.stderr[-2000:]}")
    report = json.loads(done.stdout)
    reports = report if isinstance(report, list) else [report]
    (kubernetes,) = [r for r in reports if r.get("check_type") == "kubernetes"]
    return dict(kubernetes)
