"""A peer's policy checks: checkov's Kubernetes checks on the children of every sample and on
`helm template` of the chart pass, or are skipped by an annotation that carries its reason.

checkov runs from a side venv (tests/checkovtool.py), without network.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from ccs_operator.core.api import parse_service
from ccs_operator.core.render import RenderSettings, render_children, to_yaml
from checkovtool import scan
from e2e.helmchart import CHART_DIR, helm

from helpers import ROOT

pytestmark = pytest.mark.checkov

SAMPLES = sorted((ROOT / "samples").glob("*.yaml"))
NAMESPACE = "serving"  # children live in their ccs's namespace, never in `default`


def _children(sample: Path) -> list[dict[str, Any]]:
    manifests = []
    for document in yaml.safe_load_all(sample.read_text()):
        ccs = parse_service(document).model_copy(update={"namespace": NAMESPACE})
        manifests.extend(render_children(ccs))
    return manifests


def _write(directory: Path, name: str, manifests: list[dict[str, Any]]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{name}.yaml").write_text(to_yaml(manifests))


def _failures(report: dict[str, Any]) -> list[str]:
    return [
        f"{c['check_id']} {c['check_name']}: {c['resource']}"
        for c in report["results"].get("failed_checks", [])
    ]


def _assert_passes(report: dict[str, Any]) -> None:
    assert report["summary"]["parsing_errors"] == 0, report["summary"]
    assert report["summary"]["passed"] > 50, report["summary"]  # it really checked
    assert _failures(report) == []
    for skipped in report["results"].get("skipped_checks", []):
        # `checkov.io/skipN: CHECK=reason`: a reason a reviewer can read, not just an id.
        assert len(skipped["check_result"].get("suppress_comment") or "") > 40, skipped["check_id"]


@pytest.fixture(scope="module")
def samples_report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    directory = tmp_path_factory.mktemp("children")
    for sample in SAMPLES:
        _write(directory, sample.stem, _children(sample))
    return scan(directory)


def test_every_samples_children_pass(samples_report: dict[str, Any]) -> None:
    assert SAMPLES
    _assert_passes(samples_report)
    # Every Deployment was checked (one per sample), and its exceptions are few and named.
    skipped = {c["check_id"] for c in samples_report["results"].get("skipped_checks", [])}
    assert skipped <= {"CKV_K8S_11", "CKV_K8S_40", "CKV2_K8S_6", "CKV_K8S_43", "CKV_K8S_15"}


def test_exceptions_are_for_checks_that_really_fail(tmp_path: Path) -> None:
    """Positive control: without the annotations, exactly the excepted checks fail (so no
    exception is stale and the scanner sees what the annotations hide)."""
    manifests = _children(ROOT / "samples" / "claude-code.yaml")
    bare = copy.deepcopy(manifests)
    excepted: set[str] = set()
    for manifest in bare:
        annotations = manifest["metadata"].pop("annotations", {}) or {}
        excepted |= {v.split("=", 1)[0] for k, v in annotations.items() if "checkov" in k}
    _write(tmp_path, "bare", bare)
    report = scan(tmp_path)
    failed = {c["check_id"] for c in report["results"].get("failed_checks", [])}
    assert excepted and failed == excepted


def test_a_pinned_image_needs_no_digest_exception(tmp_path: Path) -> None:
    document = yaml.safe_load((ROOT / "samples" / "claude-code.yaml").read_text())
    document["spec"]["image"] = "nvcr.io/nvidia/tritonserver@sha256:" + "a" * 64
    ccs = parse_service(document).model_copy(update={"namespace": NAMESPACE})
    loader = "ghcr.io/claudecode/ccs-model-loader@sha256:" + "b" * 64
    manifests = render_children(ccs, settings=RenderSettings(loader_image=loader))
    (deployment,) = [m for m in manifests if m["kind"] == "Deployment"]
    assert not any("CKV_K8S_43" in v for v in deployment["metadata"]["annotations"].values())
    _write(tmp_path, "pinned", manifests)
    _assert_passes(scan(tmp_path))


@pytest.mark.parametrize(
    "values",
    [
        [],
        [
            "--set",
            "networkPolicy.enabled=true",
            "--set",
            "image.digest=sha256:" + "c" * 64,
            "--set",
            "resources.limits.cpu=1",
            "--set",
            "serviceMonitor.enabled=true",
        ],
    ],
    ids=["default", "hardened"],
)
def test_the_chart_passes(tmp_path: Path, values: list[str]) -> None:
    rendered = helm(
        "template", "ccs-operator", str(CHART_DIR), "--namespace", "ccs-system", *values
    ).stdout
    (tmp_path / "chart.yaml").write_text(rendered)
    report = scan(tmp_path)
    _assert_passes(report)
    skipped = {c["check_id"] for c in report["results"].get("skipped_checks", [])}
    if values:  # the values that meet a check remove its exception
        assert skipped == {"CKV_K8S_38", "CKV_K8S_15"}, skipped


def test_with_its_network_policy_a_service_needs_no_network_policy_exception(
    tmp_path: Path,
) -> None:
    """CKV2_K8S_6 (pods without a NetworkPolicy) passes on its own merit once
    spec.networkPolicy is on: the policy selects the Deployment's pods."""
    document = yaml.safe_load((ROOT / "samples" / "claude-code.yaml").read_text())
    document["spec"]["networkPolicy"] = {"enabled": True}
    ccs = parse_service(document).model_copy(update={"namespace": NAMESPACE})
    manifests = render_children(ccs)
    assert "NetworkPolicy" in {m["kind"] for m in manifests}
    _write(tmp_path, "policed", manifests)
    report = scan(tmp_path)
    _assert_passes(report)
    skipped = {c["check_id"] for c in report["results"].get("skipped_checks", [])}
    assert "CKV2_K8S_6" not in skipped
    passed = {c["check_id"] for c in report["results"].get("passed_checks", [])}
    assert "CKV2_K8S_6" in passed
