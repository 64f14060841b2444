"""`make bundle`: the install bundle and the CRD, as the release attaches them.

ccs-operator-<chart version>.yaml is `helm template` of chart/ccs-operator (release
ccs-operator, namespace ccs-system, CRDs included, default values) behind a Namespace
object, so `kubectl apply --server-side -f` of that one file installs what `helm install`
does: the CRD, the ServiceAccount, the RBAC, the Deployment and its Service (plus the
dashboard ConfigMap). With `--digest` the operator image is pinned by that digest
(image.digest), as the release workflow does once it has pushed the image.
claudecodeservices.yaml is the CRD alone (crds/, the chart's copy of it is the same).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from e2e.helmchart import CHART_DIR, helm
from e2e.paths import REPO_ROOT
from e2e.toolchain import kubernetes_version

RELEASE, NAMESPACE = "ccs-operator", "ccs-system"
CRD = REPO_ROOT / "crds" / "claudecodeservices.yaml"


def chart_version() -> str:
    return str(yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())["version"])


def template_args(digest: str | None = None) -> list[str]:
    """The `helm template` arguments of the bundle (the test renders with the same)."""
    args = ["template", RELEASE, str(CHART_DIR), "--namespace", NAMESPACE, "--include-crds"]
    # The chart states a kubeVersion; helm template checks it against this, not a cluster.
    args += ["--kube-version", kubernetes_version()]
    if digest:
        args += ["--set", f"image.digest={digest}"]
    return args


def namespace_document() -> str:
    namespace = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": NAMESPACE,
            "labels": {"pod-security.kubernetes.io/enforce": "restricted"},
        },
    }
    return "---\n" + yaml.safe_dump(namespace, sort_keys=False)


def render(digest: str | None = None) -> str:
    header = (
        f"# ccs-operator {chart_version()}: `kubectl apply --server-side -f` this file.\n"
        f"# The chart's default values rendered by `helm template {RELEASE} --namespace "
        f"{NAMESPACE} --include-crds`.\n"
    )
    return header + namespace_document() + str(helm(*template_args(digest)).stdout)


def write_bundle(out: Path | None = None, digest: str | None = None) -> list[Path]:
    out = out or REPO_ROOT / "build" / "bundle"
    out.mkdir(parents=True, exist_ok=True)
    bundle = out / f"ccs-operator-{chart_version()}.yaml"
    bundle.write_text(render(digest))
    crd = out / CRD.name
    shutil.copyfile(CRD, crd)
    return [bundle, crd]
