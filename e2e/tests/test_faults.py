"""Faults on the real local cluster: nothing is lost and everything converges by itself.

Each test runs its own operator process(es) on a `solo-*` namespace (never the session
operator), injects one fault, and waits (bounded) until the cluster is back to exactly one
owned set of children per ClaudeCodeService, all Ready:

- the operator SIGKILLed while it creates 100 services;
- the API server restarted under a running operator;
- etcd restarted under a running operator;
- children deleted every few seconds for a minute (chaos);
- two operators started at once on the same lease: only one acts.

"Prometheus down for several intervals" is covered in e2e/tests/test_floor_e2e.py
(test_floor_rises_under_load_holds_without_prometheus_and_steps_down), with a real
Prometheus stopped and started.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import yaml
from kubernetes import client

from e2e.fixtures import Cluster
from e2e.operator_fixtures import GROUP, PLURAL, VERSION, OperatorProcess, Services, sample

pytestmark = [pytest.mark.cluster, pytest.mark.usefixtures("release_services")]

# kind -> (kubectl resource, child name from the service name)
CHILDREN: dict[str, tuple[str, Callable[[str], str]]] = {
    "ConfigMap": ("configmaps", lambda n: f"{n}-model-config"),
    "Deployment": ("deployments", lambda n: n),
    "Service": ("services", lambda n: n),
    "HorizontalPodAutoscaler": ("horizontalpodautoscalers", lambda n: n),
    "ServiceMonitor": ("servicemonitors", lambda n: n),
}
MANAGED = "app.kubernetes.io/managed-by=ccs-operator"


@pytest.fixture
def release_services(cluster: Cluster, solo_namespace: str) -> Iterator[None]:
    """After each fault test: no service carries a finalizer (the operator keeps nothing
    outside the cluster, so nothing may block `kubectl delete` or namespace deletion when
    no operator runs). A check, never a cleanup: stripping them would hide a regression."""
    yield
    with cluster.api_client() as api_client:
        custom = client.CustomObjectsApi(api_client)
        listed = custom.list_namespaced_custom_object(GROUP, VERSION, solo_namespace, PLURAL)
    held = {
        item["metadata"]["name"]: item["metadata"]["finalizers"]
        for item in listed.get("items", ())
        if item["metadata"].get("finalizers")
    }
    assert not held, f"services left with finalizers: {held}"


def light(name: str, **spec: Any) -> dict[str, Any]:
    """The sample without a GPU: many replicas fit the CI cluster's few fake nodes (the
    toleration lets them use the GPU nodes' pod slots too)."""
    return sample(
        name,
        resources={"gpus": 0, "cpu": "10m", "memory": "16Mi"},
        instanceGroups=[{"count": 1, "kind": "KIND_CPU"}],
        replicas={"min": 1, "max": 2},
        tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        **spec,
    )


def _list(cluster: Cluster, namespace: str, resource: str, *extra: str) -> list[dict[str, Any]]:
    out = cluster.kubectl("get", resource, "-n", namespace, "-o", "json", *extra).stdout
    return list(json.loads(out)["items"])


def _ready(body: dict[str, Any]) -> bool:
    status = body.get("status") or {}
    return (
        status.get("phase") == "Ready"
        and status.get("observedGeneration") == body["metadata"]["generation"]
    )


def wait_all_ready(cluster: Cluster, namespace: str, count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    ready = 0
    while time.monotonic() < deadline:
        items = _list(cluster, namespace, "ccs")
        ready = sum(1 for b in items if _ready(b))
        if len(items) == count and ready == count:
            return
        time.sleep(2)
    raise AssertionError(f"{ready}/{count} services Ready after {timeout}s")


def assert_one_set_each(cluster: Cluster, namespace: str) -> None:
    """Every service has exactly its children, each controlled by it; nothing else is ours."""
    services = {
        b["metadata"]["uid"]: b["metadata"]["name"] for b in _list(cluster, namespace, "ccs")
    }
    for kind, (resource, child_name) in CHILDREN.items():
        found = _list(cluster, namespace, resource, "-l", MANAGED)
        by_owner: dict[str, list[str]] = {}
        for item in found:
            refs = [r for r in item["metadata"].get("ownerReferences") or () if r.get("controller")]
            assert len(refs) == 1, f"{kind} {item['metadata']['name']}: owners {refs}"
            assert refs[0]["uid"] in services, f"orphan {kind} {item['metadata']['name']}"
            by_owner.setdefault(refs[0]["uid"], []).append(item["metadata"]["name"])
        for uid, name in services.items():
            assert by_owner.get(uid) == [child_name(name)], f"{kind} of {name}: {by_owner.get(uid)}"
        assert len(found) == len(services), kind
    # One ReplicaSet per Deployment: no spurious template change rolled anything.
    replica_sets = _list(cluster, namespace, "replicasets")
    assert len(replica_sets) == len(services), [r["metadata"]["name"] for r in replica_sets]


def metric(process: OperatorProcess, name: str) -> float:
    total = 0.0
    for line in process.metrics().splitlines():
        if line.startswith(name) and not line.startswith("#"):
            head = line.split(" ")[0]
            if head == name or head.startswith(name + "{"):
                total += float(line.rsplit(" ", 1)[1])
    return total


def test_operator_sigkilled_while_creating_100_services(
    cluster: Cluster,
    solo_namespace: str,
    start_operator: Callable[..., OperatorProcess],
) -> None:
    lease = f"faults-kill-{solo_namespace}"
    first = start_operator(solo_namespace, lease=lease, CCS_LEASE_DURATION_SECONDS="5")
    names = [f"svc-{i:03d}" for i in range(100)]
    manifests = yaml.safe_dump_all([light(n) for n in names])
    cluster.kubectl("apply", "--server-side", "-n", solo_namespace, "-f", "-", input=manifests)
    # Kill while it works: some services reconciled, far from all.
    deadline = time.monotonic() + 120
    while metric(first, "ccs_reconcile_total") < 10:
        assert time.monotonic() < deadline, "the operator never started reconciling"
        time.sleep(0.1)
    first.kill()
    ready_at_kill = sum(1 for b in _list(cluster, solo_namespace, "ccs") if _ready(b))
    assert ready_at_kill < len(names), "the kill came too late to interrupt anything"

    start_operator(solo_namespace, lease=lease, CCS_LEASE_DURATION_SECONDS="5")
    wait_all_ready(cluster, solo_namespace, len(names), timeout=240)
    assert_one_set_each(cluster, solo_namespace)


def _survives_restart(
    cluster: Cluster,
    namespace: str,
    services: Services,
    start_operator: Callable[..., OperatorProcess],
    restart: Callable[[], None],
) -> None:
    # A lease long enough to ride out the restart (its renew deadline is two thirds of it);
    # with a shorter one the operator must step down: see the lease test below.
    operator = start_operator(namespace, CCS_RESYNC_SECONDS="30", CCS_LEASE_DURATION_SECONDS="45")
    services.apply(namespace, light("before"))
    services.wait_ready(namespace, "before")
    restart()
    # A service created and one changed after the restart: both reconciled by the same process.
    services.apply(namespace, light("after"))
    services.patch(namespace, "before", {"spec": {"replicas": {"max": 5}}})
    services.wait_ready(namespace, "after", timeout=120)
    services.wait_ready(namespace, "before", timeout=120)
    hpa = _list(cluster, namespace, "hpa")
    assert {h["metadata"]["name"]: h["spec"]["maxReplicas"] for h in hpa} == {
        "before": 5,
        "after": 2,
    }
    assert operator.process is not None and operator.process.poll() is None, "operator exited"
    assert operator.health()["role"] == "leader"
    assert_one_set_each(cluster, namespace)


def test_apiserver_restart_under_a_running_operator(
    cluster: Cluster,
    solo_namespace: str,
    services: Services,
    start_operator: Callable[..., OperatorProcess],
) -> None:
    if cluster.local is None:
        pytest.skip("restarts the local provider's API server")
    _survives_restart(cluster, solo_namespace, services, start_operator, cluster.restart_apiserver)


def test_a_leader_that_cannot_renew_stops_writing_and_exits(
    cluster: Cluster,
    solo_namespace: str,
    services: Services,
    start_operator: Callable[..., OperatorProcess],
) -> None:
    """The API server refuses connections for longer than the renew deadline: the leader
    must stop acting at once and exit non-zero (the kubelet restarts it), never go on
    believing it leads while a standby takes over. A fresh process then converges."""
    if cluster.local is None:
        pytest.skip("restarts the local provider's API server")
    lease = f"faults-renew-{solo_namespace}"
    leader = start_operator(solo_namespace, lease=lease, CCS_LEASE_DURATION_SECONDS="5")
    services.apply(solo_namespace, light("renew"))
    services.wait_ready(solo_namespace, "renew")
    assert leader.health()["role"] == "leader"
    cluster.restart_apiserver()  # refused for several seconds: past the 3.3 s deadline
    assert leader.process is not None
    try:
        code = leader.process.wait(timeout=60)
    except Exception as exc:  # still running: it kept acting on a lease it could not renew
        raise AssertionError(f"the leader did not step down:\n{leader.log_tail()}") from exc
    assert code == 1, leader.log_tail()
    log = leader.log_path.read_text(errors="replace")
    assert "lost lease" in log and "lost leadership" in log
    # Like the kubelet: a fresh process takes the lease and acts.
    start_operator(solo_namespace, lease=lease, CCS_LEASE_DURATION_SECONDS="5")
    services.patch(solo_namespace, "renew", {"spec": {"replicas": {"max": 5}}})
    services.wait_ready(solo_namespace, "renew", timeout=120)
    hpa = _list(cluster, solo_namespace, "hpa")
    assert [h["spec"]["maxReplicas"] for h in hpa] == [5]
    assert_one_set_each(cluster, solo_namespace)


def test_etcd_restart_under_a_running_operator(
    cluster: Cluster,
    solo_namespace: str,
    services: Services,
    start_operator: Callable[..., OperatorProcess],
) -> None:
    if cluster.local is None:
        pytest.skip("restarts the local provider's etcd")
    _survives_restart(cluster, solo_namespace, services, start_operator, cluster.restart_etcd)


def test_children_deleted_every_few_seconds_for_a_minute(
    cluster: Cluster,
    solo_namespace: str,
    services: Services,
    start_operator: Callable[..., OperatorProcess],
) -> None:
    # Every kind is watched (ServiceMonitors by the operator's own watch, their CRD may
    # vanish); the resync is the backstop.
    start_operator(solo_namespace, CCS_RESYNC_SECONDS="10")
    names = ["chaos-a", "chaos-b", "chaos-c"]
    for name in names:
        services.apply(solo_namespace, light(name))
    for name in names:
        services.wait_ready(solo_namespace, name)

    def desired() -> dict[str, Any]:
        def strip(item: dict[str, Any]) -> Any:
            return item.get("data") or {
                k: v for k, v in item["spec"].items() if k not in ("clusterIP", "clusterIPs")
            }

        return {
            (kind, item["metadata"]["name"]): strip(item)
            for kind in ("configmaps", "services", "hpa", "servicemonitors")
            for item in _list(cluster, solo_namespace, kind, "-l", MANAGED)
        }

    before = desired()
    rng = random.Random(9)
    deleted = 0
    end = time.monotonic() + 60
    while time.monotonic() < end:
        resource = rng.choice(("configmaps", "services", "hpa", "servicemonitors"))
        name = rng.choice(names)
        child = f"{name}-model-config" if resource == "configmaps" else name
        done = cluster.kubectl(
            "delete", resource, child, "-n", solo_namespace, "--wait=false", check=False
        )
        deleted += done.returncode == 0
        time.sleep(3)
    assert deleted >= 10, f"only {deleted} deletions went through"

    deadline = time.monotonic() + 60
    while (now := desired()) != before:
        differing = sorted(k for k in before.keys() | now.keys() if before.get(k) != now.get(k))
        assert time.monotonic() < deadline, f"not restored 60s after the chaos: {differing}"
        time.sleep(1)
    wait_all_ready(cluster, solo_namespace, len(names), timeout=60)
    assert_one_set_each(cluster, solo_namespace)


def test_two_operators_started_at_once_only_one_acts(
    cluster: Cluster,
    solo_namespace: str,
    services: Services,
    start_operator: Callable[..., OperatorProcess],
) -> None:
    lease = f"faults-two-{solo_namespace}"
    started: list[OperatorProcess] = []

    def start() -> None:
        started.append(start_operator(solo_namespace, lease=lease, CCS_LEASE_DURATION_SECONDS="5"))

    threads = [threading.Thread(target=start) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=90)
    assert len(started) == 2

    names = [f"pair-{i}" for i in range(5)]
    for name in names:
        services.apply(solo_namespace, light(name))
    wait_all_ready(cluster, solo_namespace, len(names), timeout=120)

    roles = {p.health()["role"]: p for p in started}
    assert set(roles) == {"leader", "standby"}, roles
    leader, standby = roles["leader"], roles["standby"]
    holder = json.loads(
        cluster.kubectl("get", "lease", lease, "-n", "default", "-o", "json").stdout
    )["spec"]["holderIdentity"]
    assert leader.process is not None and f"_{leader.process.pid}_" in holder
    assert metric(leader, "ccs_apply_requests_total") >= 5 * len(names)
    assert metric(leader, "ccs_status_writes_total") >= len(names)
    for name in ("ccs_apply_requests_total", "ccs_status_writes_total", "ccs_reconcile_total"):
        assert metric(standby, name) == 0, f"the standby wrote: {name}"
    assert_one_set_each(cluster, solo_namespace)

    # The standby takes over when the leader dies, and acts from then on.
    leader.kill()
    services.apply(solo_namespace, light("after-failover"))
    services.wait_ready(solo_namespace, "after-failover", timeout=90)
    assert standby.health()["role"] == "leader"
    assert metric(standby, "ccs_apply_requests_total") >= 5
    assert_one_set_each(cluster, solo_namespace)
