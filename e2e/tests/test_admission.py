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
    ("model.cache", {"enabled": True, "hostPath": "/var/lib/kubelet"}, "not a system directory"),
    ("model.cache", {"hostPath": "/data/../etc"}, "plain absolute directory"),
    ("model.cache", {"sizeLimit": "lots"}, "spec.model.cache.sizeLimit"),
    ("autoscaling.floor.query", "  ", "spec.autoscaling.floor.query is empty"),
    (
        "autoscaling.floor.query",
        'sum(process_resident_memory_bytes{namespace="other-tenant"}) / 1e6',
        "spec.autoscaling.floor.query may not name another namespace",
    ),
    (
        "autoscaling.floor.query",
        'max(x{namespace=~".+"})',
        "spec.autoscaling.floor.query may match namespace and service only with =",
    ),
    (
        "autoscaling.floor.query",
        'max(x{service!="svc"})',
        "spec.autoscaling.floor.query may match namespace and service only with =",
    ),
    (
        "autoscaling.floor.query",
        'max({__name__=~".+"})',
        "spec.autoscaling.floor.query must name each metric",
    ),
    (
        "autoscaling",
        {"engine": "KEDA", "requestsPerSecond": 0, "cpuUtilization": 0},
        "spec.autoscaling.engine KEDA needs at least one trigger",
    ),
    ("networkPolicy.allowFrom", [{}], "allowFrom entries need podSelector, namespaceSelector"),
    (
        "networkPolicy.allowFrom",
        [{"ipBlock": {"cidr": "192.0.2.0/24"}, "podSelector": {}}],
        "ipBlock cannot be combined with podSelector",
    ),
    (
        "networkPolicy.allowFrom",
        [{"ipBlock": {"cidr": "192.0.2.300/24"}}],
        "ipBlock.cidr must be a CIDR",
    ),
]

# Overrides the CRD admits (the operator confines them; tests/test_confine.py).
ADMITTED_QUERIES = [
    'max(nv_inference_queue_summary_us{namespace={namespace}, service="{service}"}) / 1e3',
    "max(nv_inference_queue_summary_us{namespace='{namespace}'}) / 1e3",
    'max(label_replace(rate(x[{window}]), "dst", "$1", "namespace", "(.*)"))',
    "sum by (namespace, service) (rate(nv_inference_exec_count[1m]))",
]


def test_a_network_policy_with_its_peers_is_admitted(
    cluster: Cluster, ccs_crd: None, namespace: str
) -> None:
    peers = [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "gateway"}}},
        {
            "namespaceSelector": {},
            "podSelector": {
                "matchExpressions": [{"key": "app", "operator": "In", "values": ["a"]}]
            },
        },
        {"ipBlock": {"cidr": "192.0.2.0/24", "except": ["192.0.2.128/25"]}},
    ]
    body = _with("networkPolicy", {"enabled": True, "allowFrom": peers})
    result = _apply(cluster, namespace, body)
    assert result.returncode == 0, result.stderr


def test_the_node_cache_is_refused_for_repositories_already_on_the_node(
    cluster: Cluster, ccs_crd: None, namespace: str
) -> None:
    body = _with("model.cache", {"enabled": True})
    assert _apply(cluster, namespace, body).returncode == 0, "s3:// with a cache is fine"
    body["spec"]["model"]["repository"] = "pvc://weights/claude-code"
    result = _apply(cluster, namespace, body)
    assert result.returncode != 0
    assert "spec.model.cache applies to s3:// repositories" in result.stderr, result.stderr


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


@pytest.mark.parametrize("query", ADMITTED_QUERIES)
def test_legitimate_query_overrides_are_admitted(
    cluster: Cluster, ccs_crd: None, namespace: str, query: str
) -> None:
    result = _apply(cluster, namespace, _with("autoscaling.floor.query", query, "ok"))
    assert result.returncode == 0, result.stderr


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
