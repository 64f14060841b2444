"""Pods backed by real Triton: readiness is Triton's, the Service's endpoints serve, a deleted
pod's Triton stops, and past the machine's limit a pod says why it is not served.

Every request to a pod address is sent from inside the cluster's pod network
(`LocalCluster.exec_argv`), never from the test process itself.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from e2e import kwok, loadgen, podserving
from e2e.fixtures import Cluster
from e2e.localcluster import LocalCluster
from e2e.operator_fixtures import Services, sample

pytestmark = [pytest.mark.cluster, pytest.mark.triton]

NAME = "served"


def _spec(replicas: int = 1) -> dict[str, Any]:
    placement = kwok.serving_placement()
    return {
        "resources": {"gpus": 1, "cpu": "1", "memory": "1Gi"},
        "batching": {"maxBatchSize": 4, "maxQueueDelayMicroseconds": 1000},
        "instanceGroups": [{"count": 1, "kind": "KIND_GPU"}],
        "replicas": {"min": replicas, "max": max(replicas, 2)},
        "autoscaling": {"cpuUtilization": 60, "requestsPerSecond": 0, "floor": {"enabled": False}},
        "monitoring": {"serviceMonitor": False},
        "nodeSelector": placement["nodeSelector"],
        "tolerations": placement["tolerations"],
    }


@pytest.fixture
def core(cluster: Cluster) -> Iterator[client.CoreV1Api]:
    with cluster.api_client() as api_client:
        yield client.CoreV1Api(api_client)


def _pods(core: client.CoreV1Api, namespace: str) -> list[Any]:
    selector = f"serving.claudecode.io/service={NAME}"
    return [
        p
        for p in core.list_namespaced_pod(namespace, label_selector=selector).items
        if p.metadata.deletion_timestamp is None
    ]


def _ready(pod: Any) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in (pod.status.conditions or []))


def _wait(what: str, check: Callable[[], Any], timeout: float = 120, every: float = 0.3) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(every)
    raise AssertionError(f"{what}: not within {timeout:.0f}s")


def _inside(served_cluster: LocalCluster, code: str) -> subprocess.CompletedProcess[str]:
    """Run Python `code` inside the pod network (where pod addresses may be dialled)."""
    argv = served_cluster.exec_argv([sys.executable, "-c", code])
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


def _http_inside(served_cluster: LocalCluster, url: str, body: dict[str, Any] | None = None) -> Any:
    code = (
        "import json,sys,urllib.request\n"
        f"data = {json.dumps(json.dumps(body)) if body is not None else None}\n"
        f"req = urllib.request.Request({url!r}, data=data.encode() if data else None,"
        " headers={'Content-Type': 'application/json'})\n"
        "try:\n"
        "    r = urllib.request.urlopen(req, timeout=20)\n"
        "    print(json.dumps({'status': r.status, 'body': r.read().decode()}))\n"
        "except urllib.error.HTTPError as e:\n"
        "    print(json.dumps({'status': e.code, 'body': e.read().decode()}))\n"
        "except OSError as e:\n"
        "    print(json.dumps({'status': None, 'body': str(e)}))\n"
    )
    done = _inside(served_cluster, code)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _tritons_on(ip: str) -> list[int]:
    """pids of tritonserver processes bound to `ip` (read from /proc, no network)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"tritonserver") and f"--http-address={ip}".encode() in argv:
            found.append(int(entry.name))
    return found


def _settled_tritons(core: client.CoreV1Api, quiet_s: float = 3, timeout: float = 120) -> int:
    """How many pod Tritons keep running: once every Triton on this machine serves a live
    pod (an earlier test's namespace may still be deleting its pods when this one starts)
    and that has held for `quiet_s`."""
    deadline = time.monotonic() + timeout
    since: float | None = None
    while time.monotonic() < deadline:
        terminating = {
            n.metadata.name
            for n in core.list_namespace().items
            if n.status and n.status.phase == "Terminating"
        }
        live = {
            p.status.pod_ip
            for p in core.list_pod_for_all_namespaces().items
            if p.status.pod_ip
            and p.metadata.deletion_timestamp is None
            and p.metadata.namespace not in terminating
        }
        tritons = podserving.pod_triton_addresses()
        if set(tritons.values()) <= live:
            since = since or time.monotonic()
            if time.monotonic() - since >= quiet_s:
                return len(tritons)
        else:
            since = None
        time.sleep(0.5)
    raise AssertionError(f"pod Tritons of deleted pods still ran after {timeout:.0f}s")


def _events(core: client.CoreV1Api, namespace: str, pod: str) -> list[Any]:
    return [
        e
        for e in core.list_namespaced_event(namespace).items
        if e.involved_object.name == pod and e.source.component == podserving.EVENT_SOURCE
    ]


def test_pods_turn_ready_when_their_triton_does_and_the_service_endpoints_serve(
    served_cluster: LocalCluster, core: client.CoreV1Api, op_namespace: str, services: Services
) -> None:
    ns = op_namespace
    services.apply(ns, sample(NAME, **_spec()))
    # kwok gives the pod an address and Running, but not Ready: that is Triton's to say.
    running = _wait(
        "pod Running with an address",
        lambda: next((p for p in _pods(core, ns) if p.status.pod_ip), None),
    )
    assert running.spec.node_name in kwok.served_node_names(served_cluster.options.served_nodes)
    pod = _wait("pod Ready", lambda: next((p for p in _pods(core, ns) if _ready(p)), None))
    ip, name = pod.status.pod_ip, pod.metadata.name
    assert ip.startswith("10.244.")
    # The kubelet writes its event just after the status.
    reasons = _wait(
        "TritonStarted and TritonReady events",
        lambda: (
            {"TritonStarted", "TritonReady"}
            <= (found := {e.reason for e in _events(core, ns, name)})
            and found
        ),
        timeout=10,
    )
    assert "NoServingCapacity" not in reasons
    assert len(_tritons_on(ip)) == 1

    # The pod's own readiness endpoint, and inference, answered from inside the pod network.
    health = _http_inside(served_cluster, f"http://{ip}:8000/v2/health/ready")
    assert health["status"] == 200, health
    slices = client.DiscoveryV1Api(core.api_client).list_namespaced_endpoint_slice(
        ns, label_selector=f"kubernetes.io/service-name={NAME}"
    )
    addresses = [
        (a, e.conditions.ready)
        for s in slices.items
        for e in s.endpoints or []
        for a in e.addresses
    ]
    assert addresses == [(ip, True)], addresses
    infer = _http_inside(
        served_cluster,
        f"http://{ip}:8000/v2/models/claude_code/infer",
        {
            "inputs": [
                {"name": "input_ids", "shape": [1, 3], "datatype": "INT32", "data": [1, 2, 3]}
            ]
        },
    )
    assert infer["status"] == 200, infer
    output = json.loads(infer["body"])["outputs"][0]
    assert output["shape"][:2] == [1, 3]

    # The test process itself may not dial the pod: the harness refuses.
    with pytest.raises(Exception, match="refusing to connect to pod address"):
        served_cluster.network.require_inside(f"{ip}:8000")

    # Kill the Triton: the pod turns unready (it no longer serves), then Ready again after
    # the restart, with the restart counted as a kubelet would.
    for pid in _tritons_on(ip):
        os.kill(pid, 9)

    def current() -> Any:
        return core.read_namespaced_pod(name, ns)

    _wait("pod NotReady after its Triton died", lambda: not _ready(current()))
    back = _wait("pod Ready again after the restart", lambda: _ready(p := current()) and p)
    assert back.status.container_statuses[0].restart_count == 1


def test_a_deleted_pods_triton_stops_and_the_replacement_gets_its_own(
    served_cluster: LocalCluster, core: client.CoreV1Api, op_namespace: str, services: Services
) -> None:
    ns = op_namespace
    services.apply(ns, sample(NAME, **_spec()))
    pod = _wait("pod Ready", lambda: next((p for p in _pods(core, ns) if _ready(p)), None))
    old_ip, old_name = pod.status.pod_ip, pod.metadata.name
    assert _tritons_on(old_ip)
    core.delete_namespaced_pod(old_name, ns)
    _wait("the deleted pod's Triton stopped", lambda: not _tritons_on(old_ip), timeout=60)
    new = _wait(
        "replacement pod Ready",
        lambda: next(
            (p for p in _pods(core, ns) if _ready(p) and p.metadata.name != old_name), None
        ),
    )
    assert _tritons_on(new.status.pod_ip)


def test_past_the_machines_limit_a_pod_stays_unready_and_says_why(
    served_cluster: LocalCluster, core: client.CoreV1Api, op_namespace: str, services: Services
) -> None:
    ns = op_namespace
    before = podserving.Settings.read(served_cluster.state_dir / podserving.SETTINGS_FILE)
    # Tritons already running (earlier tests draining, a demo left up) count against the
    # limit: allow exactly one more.
    others = _settled_tritons(core)
    podserving.write_settings(served_cluster.state_dir, max_tritons=others + 1)
    try:
        services.apply(ns, sample(NAME, **_spec(replicas=2)))
        _wait("two pods Running", lambda: len([p for p in _pods(core, ns) if p.status.pod_ip]) == 2)

        def refused() -> Any:
            for p in _pods(core, ns):
                for c in p.status.conditions or []:
                    if c.type == "Ready" and c.reason == "NoServingCapacity":
                        return p
            return None

        pod = _wait("a pod refused for capacity", refused, timeout=90)
        condition = next(c for c in pod.status.conditions if c.type == "Ready")
        assert condition.status == "False"
        assert "max_tritons" in condition.message
        # The kubelet writes its event just after the condition.
        _wait(
            "a NoServingCapacity event",
            lambda: "NoServingCapacity" in [e.reason for e in _events(core, ns, pod.metadata.name)],
            timeout=10,
        )
        # The limit is one: exactly one pod is served, the other is not.
        served = _wait("one pod Ready", lambda: [p for p in _pods(core, ns) if _ready(p)])
        assert len(served) == 1 and served[0].metadata.name != pod.metadata.name
        time.sleep(3)
        assert len(podserving.pod_tritons()) == others + 1
    finally:
        podserving.write_settings(served_cluster.state_dir, max_tritons=before.max_tritons)
    # With the limit back, the refused pod is served.
    _wait("both pods Ready", lambda: sum(1 for p in _pods(core, ns) if _ready(p)) == 2)


def test_serving_is_refused_outside_the_pod_network(served_cluster: LocalCluster) -> None:
    """The kubelet refuses to start in the root namespace, where it would dial pod IPs."""
    done = subprocess.run(
        [sys.executable, "-m", "e2e.podserving", f"--podserving-state={served_cluster.state_dir}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2 and "must run inside the pod network" in done.stderr


def test_load_sent_to_the_service_is_spread_over_its_ready_pods(
    served_cluster: LocalCluster, core: client.CoreV1Api, op_namespace: str, services: Services
) -> None:
    ns = op_namespace
    services.apply(ns, sample(NAME, **_spec(replicas=2)))
    _wait("two pods Ready", lambda: sum(1 for p in _pods(core, ns) if _ready(p)) == 2, timeout=180)
    argv = served_cluster.exec_argv(
        loadgen.command(served_cluster.state_dir, ns, NAME, "0:20,6:20")
    )
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    summary = lines[-1]["summary"]
    assert summary["ok"] > 60 and summary["failed"] == 0, summary
    assert max(line.get("endpoints", 0) for line in lines[:-1]) == 2
    # Both pods' Tritons counted requests (read from their metrics inside the pod network).
    for pod in _pods(core, ns):
        metrics = _http_inside(served_cluster, f"http://{pod.status.pod_ip}:8002/metrics")
        counts = [
            float(line.rsplit(" ", 1)[1])
            for line in metrics["body"].splitlines()
            if line.startswith("nv_inference_request_success{")
        ]
        assert counts and sum(counts) > 10, (pod.metadata.name, counts)


def test_load_refuses_to_run_outside_the_pod_network(served_cluster: LocalCluster) -> None:
    done = subprocess.run(
        loadgen.command(served_cluster.state_dir, "x", "y", "0:1,1:1"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2 and "inside the pod network" in done.stderr


def test_a_restricted_namespace_admits_the_serving_pods_and_they_serve(
    served_cluster: LocalCluster,
    cluster: Cluster,
    core: client.CoreV1Api,
    op_namespace: str,
    services: Services,
) -> None:
    """Pod Security `restricted`, enforced by the API server, admits the operator's pods:
    non-root, no privilege escalation, all capabilities dropped, seccomp RuntimeDefault, a
    read-only root, no ServiceAccount token; and real Triton serves behind them."""
    ns = op_namespace
    cluster.kubectl("label", "namespace", ns, "pod-security.kubernetes.io/enforce=restricted")
    # Negative control: the level is enforced here (a pod without a securityContext is not).
    plain = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "plain"},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]},
    }
    refused = cluster.kubectl(
        "apply", "--dry-run=server", "-n", ns, "-f", "-", input=json.dumps(plain), check=False
    )
    assert refused.returncode != 0 and "violates PodSecurity" in refused.stderr, refused.stderr

    services.apply(ns, sample(NAME, **_spec()))
    pod = _wait("pod Ready", lambda: next((p for p in _pods(core, ns) if _ready(p)), None))
    assert pod.spec.automount_service_account_token is False
    for container in [*pod.spec.init_containers, *pod.spec.containers]:
        assert container.security_context.read_only_root_filesystem is True, container.name
    reasons = _wait(
        "TritonReady event",
        lambda: "TritonReady" in (found := {e.reason for e in _events(core, ns, pod.metadata.name)})
        and found,
        timeout=10,
    )
    assert "NoServingCapacity" not in reasons
    health = _http_inside(served_cluster, f"http://{pod.status.pod_ip}:8000/v2/health/ready")
    assert health["status"] == 200, health
    # The ReplicaSet was never refused a pod.
    failed = [
        e.message
        for e in core.list_namespaced_event(ns).items
        if e.reason == "FailedCreate" and "PodSecurity" in (e.message or "")
    ]
    assert failed == []
