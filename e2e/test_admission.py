"""Every CEL rule of the CRD refuses its counter-example at `kubectl apply`, naming the field."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml

from e2e.fixtures import Cluster
from e2e.operator_fixtures import sample

pytestmark = pytest.mark.cluster


def _with(path: str, value: Any, name: str = "bad") -> dict[str, Any]:
    body = copy.deepcopy(sample(name))
    target = body["spec"]
    *parents, leaf = path.split(".")
    for key in parents:
        target = target.setdefault(key, {})
    target[leaf] = value
    return body


COUNTER_EXAMPLES = [
    ("replicas", {"min": 5, "max": 2}, "spec.replicas.min must be <= spec.replicas.max"),
    ("batching.preferredBatchSizes", [8, 64], "spec.batching.preferredBatchSizes must all be"),
    ("batching.queuePolicy", {"timeoutAction": "DELAY"}, "timeoutAction DELAY needs"),
    ("model.repository", "http://example/model", "spec.model.repository must be"),
    ("model.repository", "pvc://Bad_Claim/x", "spec.model.repository must be"),
    ("model.name", "..", "spec.model.name cannot be"),
    (
        "model.inputs",
        [
            {"name": "a", "dataType": "TYPE_INT32", "dims": [1]},
            {"name": "a", "dataType": "TYPE_INT32", "dims": [1]},
        ],
        "spec.model.inputs names must be unique",
    ),
    (
        "model.outputs",
        [{"name": "o", "dataType": "TYPE_FP32", "dims": [0]}],
        "dims must be positive or -1",
    ),
    ("model.versionPolicy", {"policy": "Specific"}, "versions must list at least one"),
    ("ports", {"http": 8000, "grpc": 8000}, "must be three different ports"),
    ("resources", {"gpus": 0}, "has a KIND_GPU group but spec.resources.gpus is 0"),
    (
        "autoscaling.floor",
        {"evaluationIntervalSeconds": 60, "cooldownSeconds": 30},
        "cooldownSeconds must be 0 or at least",
    ),
    (
        "autoscaling.floor",
        {"evaluationIntervalSeconds": 30, "prewarm": {"enabled": True, "leadTimeSeconds": 10}},
        "leadTimeSeconds must be at least evaluationIntervalSeconds",
    ),
    ("model.warmup", {"enabled": True, "batchSize": 64}, "warmup.batchSize must not exceed"),
    (
        "batching",
        {"enabled": False, "queuePolicy": {"maxQueueSize": 4}},
        "queuePolicy needs spec.batching.enabled",
    ),
    (
        "autoscaling",
        {"engine": "KEDA", "requestsPerSecond": 0, "cpuUtilization": 0},
        "spec.autoscaling.engine KEDA needs at least one trigger",
    ),
]


def _apply(cluster: Cluster, namespace: str, body: dict[str, Any]) -> Any:
    return cluster.kubectl(
        "apply",
        "--dry-run=server",
        "-n",
        namespace,
        "-f",
        "-",
        input=yaml.safe_dump(body),
        check=False,
    )


@pytest.mark.parametrize(
    ("path", "value", "message"),
    COUNTER_EXAMPLES,
    ids=[f"{p}-{i}" for i, (p, _, _) in enumerate(COUNTER_EXAMPLES)],
)
def test_cel_rule_refuses_its_counter_example(
    cluster: Cluster, ccs_crd: None, namespace: str, path: str, value: Any, message: str
) -> None:
    result = _apply(cluster, namespace, _with(path, value))
    assert result.returncode != 0, f"accepted: {path}={value!r}"
    assert message in result.stderr, result.stderr


@pytest.mark.parametrize(
    ("name", "message"),
    [("x" * 51, "at most 50 characters"), ("has.dot", "must start with a lowercase letter")],
)
def test_bad_service_names_are_refused(
    cluster: Cluster, ccs_crd: None, namespace: str, name: str, message: str
) -> None:
    result = _apply(cluster, namespace, sample(name))
    assert result.returncode != 0
    assert message in result.stderr, result.stderr


def test_schema_errors_name_the_field(cluster: Cluster, ccs_crd: None, namespace: str) -> None:
    result = _apply(cluster, namespace, _with("batching.maxBatchSize", 0))
    assert result.returncode != 0 and "spec.batching.maxBatchSize" in result.stderr


def test_engine_is_hpa_or_keda(cluster: Cluster, ccs_crd: None, namespace: str) -> None:
    result = _apply(cluster, namespace, _with("autoscaling.engine", "Keda"))
    assert result.returncode != 0
    assert "spec.autoscaling.engine" in result.stderr and '"KEDA"' in result.stderr
    for engine in ("HPA", "KEDA"):
        accepted = _apply(cluster, namespace, _with("autoscaling.engine", engine))
        assert accepted.returncode == 0, accepted.stderr


@pytest.mark.parametrize("engine", ["HPA", "KEDA"])
def test_scale_to_zero_needs_the_requests_per_second_metric(
    cluster: Cluster, ccs_crd: None, namespace: str, engine: str
) -> None:
    """HPAScaleToZero refuses minReplicas 0 without an External or Object metric, and KEDA
    cannot idle on CPU alone: the CRD says so at `kubectl apply`, with the fix."""
    body = _with("replicas", {"min": 0, "max": 3})
    body["spec"]["autoscaling"] = {
        **(body["spec"].get("autoscaling") or {}),
        "engine": engine,
        "requestsPerSecond": 0,
    }
    result = _apply(cluster, namespace, body)
    assert result.returncode != 0, "min 0 without the rps metric was accepted"
    assert "spec.replicas.min 0 (scale to zero) needs the requests-per-second metric" in (
        result.stderr
    )
    assert "set spec.autoscaling.requestsPerSecond above 0" in result.stderr
    body["spec"]["autoscaling"]["requestsPerSecond"] = 50  # the fix the message names
    accepted = _apply(cluster, namespace, body)
    assert accepted.returncode == 0, accepted.stderr


def test_every_sample_is_admitted(cluster: Cluster, ccs_crd: None, namespace: str) -> None:
    from e2e.operator_fixtures import ROOT

    for path in sorted((ROOT / "samples").glob("*.yaml")):
        result = cluster.kubectl(
            "apply", "--dry-run=server", "-n", namespace, "-f", str(path), check=False
        )
        assert result.returncode == 0, f"{path.name}: {result.stderr}"


def test_defaults_are_applied_by_the_api_server(
    cluster: Cluster, ccs_crd: None, namespace: str
) -> None:
    minimal = {
        "apiVersion": "serving.claudecode.io/v1alpha1",
        "kind": "ClaudeCodeService",
        "metadata": {"name": "minimal"},
        "spec": {"model": {"name": "claude_code", "repository": "s3://m/c"}},
    }
    result = cluster.kubectl(
        "apply",
        "--dry-run=server",
        "-o",
        "yaml",
        "-n",
        namespace,
        "-f",
        "-",
        input=yaml.safe_dump(minimal),
    )
    spec = yaml.safe_load(result.stdout)["spec"]
    assert spec["batching"]["maxBatchSize"] == 32
    assert spec["replicas"] == {"min": 2, "max": 10}
    assert spec["instanceGroups"] == [{"count": 2, "kind": "KIND_GPU"}]
    assert spec["autoscaling"]["cpuUtilization"] == 60
    assert spec["model"]["outputs"][0]["dims"] == [-1, 50257]
