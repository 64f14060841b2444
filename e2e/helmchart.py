"""The helm CLI (built from its Go module by e2e.toolchain) driving chart/ccs-operator.

Used by tests/test_chart.py (lint and template, no cluster) and e2e/tests/test_helm.py (install,
upgrade and uninstall on the local cluster). helm keeps its caches and configuration in a
private directory, so the tests never read or write the user's helm setup.
"""

from __future__ import annotations

import functools
import os
import shlex
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from e2e.paths import REPO_ROOT
from e2e.toolchain import ensure_built, kubernetes_version

CHART_DIR = REPO_ROOT / "chart" / "ccs-operator"


class HelmError(RuntimeError):
    """helm exited non-zero; `stderr` holds its message."""

    def __init__(self, args: Sequence[str], returncode: int, stderr: str) -> None:
        super().__init__(f"`helm {shlex.join(args)}` exited {returncode}:\n{stderr.strip()}")
        self.returncode = returncode
        self.stderr = stderr


@functools.cache
def helm_binary() -> Path:
    return ensure_built(("helm",)) / "helm"


@functools.cache
def _helm_home() -> Path:
    return Path(tempfile.mkdtemp(prefix="ccs-helm-"))


def helm(
    *args: str, kubeconfig: Path | None = None, timeout: float = 180, check: bool = True
) -> subprocess.CompletedProcess[str]:
    home = _helm_home()
    env = {
        **os.environ,
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
    }
    if kubeconfig is not None:
        env["KUBECONFIG"] = str(kubeconfig)
    if args and args[0] in ("template", "lint") and "--kube-version" not in args:
        # Chart.yaml's kubeVersion is checked against this (helm's own default is v1.20).
        args = (args[0], "--kube-version", kubernetes_version(), *args[1:])
    result = subprocess.run(
        [str(helm_binary()), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        cwd=REPO_ROOT,
    )
    if check and result.returncode != 0:
        raise HelmError(args, result.returncode, result.stderr)
    return result


def set_args(values: Mapping[str, Any] | None) -> list[str]:
    """`--set-json key=<json>` for each value, so types survive exactly."""
    import json

    out: list[str] = []
    for key, value in (values or {}).items():
        out += ["--set-json", f"{key}={json.dumps(value)}"]
    return out


def template(
    values: Mapping[str, Any] | None = None,
    *,
    release: str = "ccs-operator",
    namespace: str = "ccs-system",
    extra: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """`helm template` the chart; returns the manifests."""
    result = helm(
        "template", release, str(CHART_DIR), "--namespace", namespace, *set_args(values), *extra
    )
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def find(
    docs: Sequence[dict[str, Any]], kind: str, name: str | None = None
) -> list[dict[str, Any]]:
    return [
        d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]
