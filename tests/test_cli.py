"""`ccs-operator render | crd | version` as a user runs them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from helpers import CRD_PATH, ROOT


def _cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ccs_operator.cli", *args],
        input=stdin, capture_output=True, text=True, check=False, cwd=ROOT,
    )


def test_render_prints_every_child_of_the_sample() -> None:
    result = _cli("render", "-f", "samples/claude-code.yaml")
    assert result.returncode == 0, result.stderr
    kinds = [d["kind"] for d in yaml.safe_load_all(result.stdout)]
    assert kinds == ["ConfigMap", "Deployment", "Service", "HorizontalPodAutoscaler",
                     "ServiceMonitor"]


def test_bad_file_gives_one_line_naming_the_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "apiVersion: serving.claudecode.io/v1alpha1\nkind: ClaudeCodeService\n"
        "metadata: {name: x}\nspec:\n  model: {name: m, repository: s3://b/m}\n"
        "  replicas: {min: 4, max: 2}\n"
    )
    result = _cli("render", "-f", str(bad))
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert "spec.replicas" in result.stderr and "Traceback" not in result.stderr


def test_unreadable_and_non_yaml_files_fail_cleanly(tmp_path: Path) -> None:
    assert _cli("render", "-f", str(tmp_path / "missing.yaml")).returncode == 2
    garbage = tmp_path / "g.yaml"
    garbage.write_text("a: [\n")
    result = _cli("render", "-f", str(garbage))
    assert result.returncode == 2 and "Traceback" not in result.stderr


def test_render_reads_stdin_and_sets_namespace() -> None:
    text = (ROOT / "samples" / "claude-code.yaml").read_text()
    result = _cli("render", "-f", "-", "-n", "prod", "--no-service-monitor", stdin=text)
    assert result.returncode == 0
    docs = list(yaml.safe_load_all(result.stdout))
    assert {d["metadata"]["namespace"] for d in docs} == {"prod"}
    assert "ServiceMonitor" not in {d["kind"] for d in docs}


def test_crd_prints_the_single_source() -> None:
    result = _cli("crd")
    assert result.returncode == 0
    assert result.stdout == CRD_PATH.read_text()


def test_version() -> None:
    result = _cli("version")
    assert result.returncode == 0 and result.stdout.strip()


def test_render_takes_the_operators_settings_from_the_environment() -> None:
    # As `run` does: the chart's networkPolicy.metricsFrom reaches the operator as
    # CCS_METRICS_FROM, and `render` shows what the operator would apply.
    peers = '[{"namespaceSelector": {"matchLabels": {"team": "observability"}}}]'
    result = _cli_env("render", "-f", "samples/queue-policy.yaml", env={"CCS_METRICS_FROM": peers})
    assert result.returncode == 0, result.stderr
    policy = next(d for d in yaml.safe_load_all(result.stdout) if d["kind"] == "NetworkPolicy")
    sources = [peer for rule in policy["spec"]["ingress"] for peer in rule.get("from", [])]
    assert {"namespaceSelector": {"matchLabels": {"team": "observability"}}} in sources

    bad = _cli_env("render", "-f", "samples/queue-policy.yaml", env={"CCS_METRICS_FROM": "["})
    assert bad.returncode == 2 and bad.stdout == ""
    assert "CCS_METRICS_FROM" in bad.stderr and "Traceback" not in bad.stderr


def _cli_env(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ccs_operator.cli", *args],
        capture_output=True, text=True, check=False, cwd=ROOT, env={**os.environ, **env},
    )
