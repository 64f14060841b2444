"""The operator image's own operator on the local cluster: `ccs-operator run` from the
image's filesystem (chroot, its user, Python and dependencies; the host's network and the
cluster's kubeconfig) reconciles the seed sample, samples/claude-code.yaml, to Ready."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from e2e.image_fixtures import ImageOperator
from e2e.operator_fixtures import Services, condition, sample

pytestmark = [pytest.mark.cluster, pytest.mark.image]


def test_the_image_reconciles_the_seed_sample_to_ready(
    solo_namespace: str,
    image_operator: Callable[..., ImageOperator],
    services: Services,
) -> None:
    operator = image_operator(solo_namespace)
    services.apply(solo_namespace, sample("claude-code"))
    body = services.wait_ready(solo_namespace, "claude-code", timeout=120)
    assert condition(body, "Ready")["status"] == "True"  # type: ignore[index]
    assert body["status"]["endpoint"]["http"] == f"http://claude-code.{solo_namespace}.svc:8000"
    # It is the image's interpreter that runs: the process's executable is in the chroot.
    assert operator.process is not None and operator.process.poll() is None
    health = operator.health()
    assert health, "the image's operator serves /healthz"
    assert "ccs_" in operator.metrics()
    assert "Traceback" not in operator.log_path.read_text(errors="replace")
