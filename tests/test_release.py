"""The release: its workflow passes actionlint (built from its Go module), builds with the
project's own targets, and attaches an install bundle that is exactly `helm template` of
the chart at the released version."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from ccs_operator import __version__
from e2e.helmchart import CHART_DIR, find, helm
from e2e.toolchain import ensure_built
from release import bundle

from helpers import ROOT

WORKFLOWS = ROOT / ".github" / "workflows"
RELEASE = WORKFLOWS / "release.yml"


def _workflow() -> dict[Any, Any]:
    return dict(yaml.safe_load(RELEASE.read_text()))


def test_actionlint_passes_on_every_workflow() -> None:
    actionlint = ensure_built(("actionlint",)) / "actionlint"
    files = sorted(str(p) for p in WORKFLOWS.glob("*.y*ml"))
    assert str(RELEASE) in files
    result = subprocess.run(
        [str(actionlint), "-no-color", *files], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _runs(job: dict[str, Any]) -> str:
    return "\n".join(step.get("run", "") for step in job["steps"])


def test_the_workflow_runs_on_tags_and_uses_the_projects_targets() -> None:
    workflow = _workflow()
    # PyYAML reads the key `on` as True.
    assert workflow[True]["push"]["tags"] == ["v*"]
    jobs = workflow["jobs"]
    assert "bash .ci/run" in _runs(jobs["test"])  # build and test as CI does
    image = jobs["image"]
    assert {m["arch"] for m in image["strategy"]["matrix"]["include"]} == {"amd64", "arm64"}
    assert "make image" in _runs(image) and "tests/test_image.py" in _runs(image)
    assert image["needs"] == ["version", "test"]
    publish = jobs["publish"]
    assert publish["permissions"]["id-token"] == "write"  # provenance is signed
    uses = [step.get("uses", "") for step in publish["steps"]]
    assert any(u.startswith("actions/attest-build-provenance@") for u in uses)
    runs = _runs(publish)
    assert "make bundle" in runs and "helm\" push" in runs and "gh release create" in runs
    assert "skopeo copy --all" in runs
    assert workflow["env"]["IMAGE"] == yaml.safe_load(
        (CHART_DIR / "values.yaml").read_text()
    )["image"]["repository"]


def test_the_tag_check_matches_the_versions() -> None:
    """The version job compares the tag with pyproject, Chart.yaml version and appVersion;
    its sed expressions must read this Chart.yaml."""
    (step,) = [s for s in _workflow()["jobs"]["version"]["steps"] if s.get("id") == "version"]
    script = step["run"].split("echo \"tag")[0]
    result = subprocess.run(
        ["bash", "-c", f"set -e\n{script}\necho \"$package $chart $app\""],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={"GITHUB_REF_NAME": f"v{__version__}", "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [__version__] * 3


@pytest.mark.parametrize("digest", [None, "sha256:" + "b" * 64])
def test_the_bundle_is_helm_template_of_the_chart_at_its_version(
    tmp_path: Path, digest: str | None
) -> None:
    """`make bundle` (what the workflow attaches) against helm template run here."""
    bundle_file, crd_file = bundle.write_bundle(tmp_path, digest=digest)
    chart = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())
    assert bundle_file.name == f"ccs-operator-{chart['version']}.yaml"
    args = ["template", "ccs-operator", str(CHART_DIR), "-n", "ccs-system", "--include-crds"]
    if digest:
        args += ["--set", f"image.digest={digest}"]
    expected = helm(*args).stdout
    text = bundle_file.read_text()
    namespace = bundle.namespace_document()
    assert text.endswith(namespace + expected)
    docs = [d for d in yaml.safe_load_all(text) if d]
    assert [d["kind"] for d in docs[:2]] == ["Namespace", "CustomResourceDefinition"]
    for kind in ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Deployment"):
        assert find(docs, kind), kind
    for doc in docs[2:]:
        labels = doc["metadata"].get("labels", {})
        if "helm.sh/chart" in labels:
            assert labels["helm.sh/chart"] == f"ccs-operator-{chart['version']}"
        if doc["kind"] != "ClusterRole" and doc["kind"] != "ClusterRoleBinding":
            assert doc["metadata"].get("namespace", "ccs-system") == "ccs-system"
    (deployment,) = find(docs, "Deployment")
    image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
    repository = "ghcr.io/claudecode/ccs-operator"
    assert image == (f"{repository}@{digest}" if digest else f"{repository}:{__version__}")
    assert crd_file.read_bytes() == (ROOT / "crds" / "claudecodeservices.yaml").read_bytes()
    # The bundle's CRD is the file the release attaches.
    assert yaml.safe_load(crd_file.read_text()) == docs[1]


def test_the_chart_states_the_tested_kubernetes_version() -> None:
    from e2e.toolchain import kubernetes_version

    chart = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())
    major, minor = kubernetes_version().lstrip("v").split(".")[:2]
    assert chart["kubeVersion"] == f">={major}.{minor}.0-0"
    # helm refuses a cluster older than that (template checks --kube-version).
    old = helm("template", "x", str(CHART_DIR), "--kube-version", "1.30.0", check=False)
    assert old.returncode != 0 and "kubeVersion" in old.stderr
