"""The operator against the real API server, controller-manager, scheduler and kwok nodes."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
import yaml

from e2e.fixtures import Cluster
from e2e.operator_fixtures import OperatorProcess, Services, condition, sample

pytestmark = pytest.mark.cluster

CHILD_KINDS = ("configmap", "deployment", "service", "horizontalpodautoscaler", "servicemonitor")


def _children(cluster: Cluster, namespace: str, name: str) -> dict[str, dict[str, Any]]:
    found = {}
    for kind in CHILD_KINDS:
        child = f"{name}-model-config" if kind == "configmap" else name
        result = cluster.kubectl(
            "get", kind, child, "-n", namespace, "-o", "yaml", "--show-managed-fields", check=False
        )
        if result.returncode == 0:
            found[kind] = yaml.safe_load(result.stdout)
    return found


def _until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    raise AssertionError(f"{what} not reached in {timeout}s")


def test_create_makes_every_child_owned_and_reports_ready(
    cluster: Cluster, op_namespace: str, services: Services
) -> None:
    services.apply(op_namespace, sample("claude-code"))
    body = services.wait_ready(op_namespace, "claude-code")
    children = _children(cluster, op_namespace, "claude-code")
    assert sorted(children) == sorted(CHILD_KINDS)
    for kind, child in children.items():
        (owner,) = child["metadata"]["ownerReferences"]
        assert owner["uid"] == body["metadata"]["uid"], kind
        assert owner["controller"] is True
    # Ready means one replica serves; the second may turn Ready a moment later.
    body = services.wait(
        op_namespace,
        "claude-code",
        lambda b: (b.get("status") or {}).get("readyReplicas", 0) >= 2,
        timeout=90,
        what="both replicas ready",
    )
    status = body["status"]
    assert status["readyReplicas"] >= 2 and status["replicas"] >= 2
    assert status["endpoint"]["http"] == f"http://claude-code.{op_namespace}.svc:8000"
    assert condition(body, "Ready")["status"] == "True"  # type: ignore[index]
    assert condition(body, "MonitoringConfigured")["status"] == "True"  # type: ignore[index]
    hpa = children["horizontalpodautoscaler"]["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (2, 10)
    # The kwok GPU nodes took the pods: the GPU request and toleration are real.
    pods = cluster.kubectl("get", "pods", "-n", op_namespace, "-o", "yaml").stdout
    nodes = {p["spec"]["nodeName"] for p in yaml.safe_load(pods)["items"]}
    assert nodes and all(n for n in nodes)

    table = cluster.kubectl("get", "ccs", "-n", op_namespace).stdout
    header, row = table.splitlines()[:2]
    assert header.split() == ["NAME", "READY", "FLOOR", "MAX", "QUEUE-P99", "PHASE", "AGE"]
    assert row.split()[0] == "claude-code" and "Ready" in row.split()
    wide = cluster.kubectl("get", "ccs", "-n", op_namespace, "-o", "wide").stdout
    assert f"http://claude-code.{op_namespace}.svc:8000" in wide

    events = cluster.kubectl(
        "get",
        "events",
        "-n",
        op_namespace,
        "--field-selector",
        "involvedObject.kind=ClaudeCodeService",
    ).stdout
    assert "Created" in events and "Ready" in events


def test_update_changes_children_and_rolls_pods(
    cluster: Cluster, op_namespace: str, services: Services
) -> None:
    services.apply(op_namespace, sample("svc"))
    services.wait_ready(op_namespace, "svc")
    before = _children(cluster, op_namespace, "svc")
    old_hash = before["deployment"]["spec"]["template"]["metadata"]["annotations"][
        "serving.claudecode.io/config-hash"
    ]
    services.patch(
        op_namespace,
        "svc",
        {
            "spec": {
                "batching": {"maxBatchSize": 16, "preferredBatchSizes": [8, 16]},
                "image": "nvcr.io/nvidia/tritonserver:25.02-py3",
                "replicas": {"max": 6},
            }
        },
    )
    services.wait_ready(op_namespace, "svc")
    after = _children(cluster, op_namespace, "svc")
    assert "max_batch_size: 16" in after["configmap"]["data"]["config.pbtxt"]
    template = after["deployment"]["spec"]["template"]
    assert template["metadata"]["annotations"]["serving.claudecode.io/config-hash"] != old_hash
    assert template["spec"]["containers"][0]["image"].endswith("25.02-py3")
    assert after["horizontalpodautoscaler"]["spec"]["maxReplicas"] == 6
    # The Deployment really rolled: a new ReplicaSet carries the new template.
    replica_sets = yaml.safe_load(
        cluster.kubectl("get", "replicasets", "-n", op_namespace, "-o", "yaml").stdout
    )["items"]
    assert len(replica_sets) >= 2


def test_deleted_or_edited_children_are_restored(
    cluster: Cluster, op_namespace: str, services: Services
) -> None:
    services.apply(op_namespace, sample("drift"))
    services.wait_ready(op_namespace, "drift")
    desired = _children(cluster, op_namespace, "drift")

    cluster.kubectl("delete", "configmap", "drift-model-config", "-n", op_namespace)
    _until(
        lambda: "configmap" in _children(cluster, op_namespace, "drift"), 20, "ConfigMap re-created"
    )

    cluster.kubectl("set", "image", "deployment/drift", "triton=evil:latest", "-n", op_namespace)
    cluster.kubectl(
        "patch",
        "hpa",
        "drift",
        "-n",
        op_namespace,
        "--type=merge",
        "-p",
        '{"spec": {"maxReplicas": 99}}',
    )
    cluster.kubectl(
        "patch",
        "configmap",
        "drift-model-config",
        "-n",
        op_namespace,
        "--type=merge",
        "-p",
        '{"data": {"config.pbtxt": "garbage"}}',
    )

    def restored() -> bool:
        now = _children(cluster, op_namespace, "drift")
        image = now["deployment"]["spec"]["template"]["spec"]["containers"][0]["image"]
        return (
            image == desired["deployment"]["spec"]["template"]["spec"]["containers"][0]["image"]
            and now["horizontalpodautoscaler"]["spec"]["maxReplicas"] == 10
            and now["configmap"]["data"] == desired["configmap"]["data"]
        )

    _until(restored, 20, "image, HPA max and config restored")


def test_fields_owned_by_others_are_left_alone(
    cluster: Cluster, op_namespace: str, services: Services
) -> None:
    """The HPA owns Deployment.spec.replicas; our applies never reset it."""
    services.apply(op_namespace, sample("owned", replicas={"min": 2, "max": 5}))
    services.wait_ready(op_namespace, "owned")
    deployment = _children(cluster, op_namespace, "owned")["deployment"]
    managers = {
        f["manager"]
        for f in deployment["metadata"]["managedFields"]
        if "f:replicas" in str(f.get("fieldsV1", {}).get("f:spec", {}))
    }
    assert "ccs-operator" not in managers


def test_deleting_the_service_removes_its_children(
    cluster: Cluster, op_namespace: str, services: Services
) -> None:
    services.apply(op_namespace, sample("gone"))
    services.wait_ready(op_namespace, "gone")
    cluster.kubectl("delete", "ccs", "gone", "-n", op_namespace, "--wait=true")
    _until(lambda: not _children(cluster, op_namespace, "gone"), 60, "children garbage-collected")


def test_missing_servicemonitor_crd_leaves_the_service_ready(
    cluster: Cluster, op_namespace: str, services: Services
) -> None:
    cluster.uninstall_servicemonitor_crd()
    try:
        services.apply(op_namespace, sample("nomon"))
        body = services.wait(
            op_namespace,
            "nomon",
            lambda b: (
                (condition(b, "MonitoringConfigured") or {}).get("reason")
                == "ServiceMonitorCRDMissing"
                and (b.get("status") or {}).get("phase") == "Ready"
            ),
            timeout=90,
            what="Ready with monitoring off",
        )
        assert "install" in condition(body, "MonitoringConfigured")["message"]  # type: ignore[index]
        assert "servicemonitor" not in _children(cluster, op_namespace, "nomon")
        events = cluster.kubectl("get", "events", "-n", op_namespace).stdout
        assert "ServiceMonitorCRDMissing" in events
    finally:
        cluster.install_servicemonitor_crd()


def test_name_collision_is_degraded_and_applies_nothing(
    cluster: Cluster, op_namespace: str, services: Services
) -> None:
    foreign = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "taken-model-config", "namespace": op_namespace},
        "data": {"owner": "somebody else"},
    }
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(foreign))
    services.apply(op_namespace, sample("taken"))
    body = services.wait(
        op_namespace,
        "taken",
        lambda b: (b.get("status") or {}).get("phase") == "Degraded",
        what="Degraded",
    )
    degraded = condition(body, "Degraded")
    assert degraded is not None and degraded["reason"] == "NameCollision"
    assert "ConfigMap" in degraded["message"] and "taken-model-config" in degraded["message"]
    configmap = _children(cluster, op_namespace, "taken")["configmap"]
    assert configmap["data"] == {"owner": "somebody else"}
    assert "ownerReferences" not in configmap["metadata"]
    # Never half-applied: nothing else was created either.
    assert set(_children(cluster, op_namespace, "taken")) == {"configmap"}

    cluster.kubectl("delete", "configmap", "taken-model-config", "-n", op_namespace)
    services.wait_ready(op_namespace, "taken", timeout=120)


# Writes the operator sends: server-side applies of children, writes of its services.
CHILD_RESOURCES = frozenset(
    {"configmaps", "deployments", "services", "horizontalpodautoscalers", "servicemonitors"}
)


def apiserver_writes(cluster: Cluster) -> dict[str, float]:
    """The API server's own count of the writes an operator makes, by verb and resource:
    APPLY of child kinds, and any write of claudecodeservices (status included); accepted
    ones only (2xx), so another operator's refused retries into a namespace being deleted
    by an earlier test do not count. The operator's own counters catch refused ones."""
    from prometheus_client.parser import text_string_to_metric_families

    text = cluster.kubectl("get", "--raw", "/metrics").stdout
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name != "apiserver_request":
            continue
        for point in family.samples:
            if not point.name.endswith("_total"):
                continue
            verb, resource = point.labels.get("verb"), point.labels.get("resource")
            if not str(point.labels.get("code", "")).startswith("2"):
                continue
            ours = (verb == "APPLY" and resource in CHILD_RESOURCES) or (
                resource == "claudecodeservices" and verb in ("APPLY", "PATCH", "UPDATE")
            )
            if ours:
                key = f"{verb} {resource}/{point.labels.get('subresource') or ''}"
                counts[key] = counts.get(key, 0.0) + point.value
    return counts


def test_noop_resync_writes_nothing(
    cluster: Cluster,
    solo_namespace: str,
    services: Services,
    start_operator: Callable[..., OperatorProcess],
) -> None:
    """Counted by the API server itself (a no-op server-side apply changes neither
    managedFields times nor resourceVersions, so those cannot tell)."""
    from e2e.tests.test_faults import metric

    before_create = apiserver_writes(cluster)
    operator = start_operator(solo_namespace, CCS_RESYNC_SECONDS="10")
    services.apply(solo_namespace, sample("quiet"))
    services.wait_ready(solo_namespace, "quiet")
    time.sleep(3)  # let the rollout's last status updates land
    after_create = apiserver_writes(cluster)
    # Positive control: the counter sees this operator's writes.
    applied = sum(v for k, v in after_create.items() if k.startswith("APPLY")) - sum(
        v for k, v in before_create.items() if k.startswith("APPLY")
    )
    assert applied >= 5, after_create

    resyncs_before = metric(operator, "ccs_reconcile_total")
    sent_before = metric(operator, "ccs_apply_requests_total") + metric(
        operator, "ccs_status_writes_total"
    )
    # Two resyncs at least (the period is jittered, and a loaded machine is slow): wait for
    # them by count, not by the clock.
    deadline = time.monotonic() + 90
    while metric(operator, "ccs_reconcile_total") < resyncs_before + 2:
        assert time.monotonic() < deadline, "two resyncs did not run in 90 s"
        time.sleep(1)
    assert apiserver_writes(cluster) == after_create
    sent = metric(operator, "ccs_apply_requests_total")
    assert sent + metric(operator, "ccs_status_writes_total") == sent_before

    # A restarted operator applies nothing either: the children still carry the digest of
    # what was applied, and nobody else wrote to them.
    operator.stop()
    restarted = start_operator(solo_namespace, CCS_RESYNC_SECONDS="10")
    deadline = time.monotonic() + 60
    while metric(restarted, "ccs_apply_skipped_total") < 5:
        assert time.monotonic() < deadline, "the restarted operator never reconciled"
        time.sleep(0.5)

    # Children only: status is server-side applied too, and a fresh floor loop may write it.
    def child_applies(writes: dict[str, float]) -> dict[str, float]:
        return {
            k: v
            for k, v in writes.items()
            if k.startswith("APPLY") and k.split(" ", 1)[1].split("/")[0] in CHILD_RESOURCES
        }

    assert child_applies(apiserver_writes(cluster)) == child_applies(after_create)
    assert metric(restarted, "ccs_apply_requests_total") == 0


def test_operator_killed_mid_reconcile_converges_without_duplicates(
    cluster: Cluster,
    solo_namespace: str,
    services: Services,
    start_operator: Callable[..., OperatorProcess],
) -> None:
    """Child names are deterministic, so duplicates of them cannot exist: what can go wrong
    is an interrupted set (a child missing, an orphan, a second owner) or a spurious rollout
    (a second ReplicaSet). The kill must land while work is half done."""
    from e2e.tests.test_faults import _list, _ready, assert_one_set_each, metric

    first = start_operator(solo_namespace, lease="ccs-e2e-kill")
    names = [f"svc-{i}" for i in range(10)]
    for name in names:
        services.apply(solo_namespace, sample(name, replicas={"min": 1, "max": 2}))
    deadline = time.monotonic() + 60
    while metric(first, "ccs_apply_requests_total") < 1:
        assert time.monotonic() < deadline, "the operator never started applying"
        time.sleep(0.05)
    first.kill()
    ready_at_kill = sum(1 for b in _list(cluster, solo_namespace, "ccs") if _ready(b))
    assert ready_at_kill < len(names), "the kill came too late to interrupt anything"
    start_operator(solo_namespace, lease="ccs-e2e-kill", CCS_LEASE_DURATION_SECONDS="5")
    for name in names:
        services.wait_ready(solo_namespace, name, timeout=120)
    assert_one_set_each(cluster, solo_namespace)


def test_operator_exposes_metrics_and_health(operator: OperatorProcess) -> None:
    assert operator.health()["role"] == "leader"
    text = operator.metrics()
    for metric in (
        "ccs_reconcile_total",
        "ccs_reconcile_duration_seconds",
        "ccs_children_applied_total",
        "ccs_services",
    ):
        assert metric in text


def test_services_carry_no_finalizer_and_delete_without_the_operator(
    cluster: Cluster,
    solo_namespace: str,
    services: Services,
    start_operator: Callable[..., OperatorProcess],
) -> None:
    """Nothing outside the cluster needs cleaning: a stopped operator must not block delete."""
    operator = start_operator(solo_namespace, CCS_RESYNC_SECONDS="10")
    services.apply(solo_namespace, sample("free"))
    body = services.wait_ready(solo_namespace, "free")
    assert not body["metadata"].get("finalizers"), body["metadata"]
    time.sleep(12)  # one resync passes: it must not add a finalizer either
    assert not services.get(solo_namespace, "free")["metadata"].get("finalizers")
    operator.stop()
    cluster.kubectl("delete", "ccs", "free", "-n", solo_namespace, "--wait=true", timeout=30)
    # The garbage collector, not the operator, removes the children.
    _until(lambda: not _children(cluster, solo_namespace, "free"), 60, "children garbage-collected")
