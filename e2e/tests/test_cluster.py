"""The harness itself, proven against the real control plane.

Each test names the real component it relies on: the scheduler with GPU taints and extended
resources, the HPA and garbage-collector controllers, CEL validation in the API server,
etcd persistence, and a clean `down`.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from e2e import crds
from e2e.fixtures import Cluster
from e2e.kwok import GPU_PRODUCT, GPU_RESOURCE
from e2e.paths import REPO_ROOT
from e2e.toolchain import kubernetes_version

pytestmark = pytest.mark.cluster

T = TypeVar("T")
GPU_TOLERATION = {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 60) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.5)


def deployment(name: str, replicas: int, resources: dict, **pod_spec: Any) -> dict:
    labels = {"app": name}
    container = {"name": "main", "image": "registry.invalid/ccs-e2e:none", "resources": resources}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [container], **pod_spec},
            },
        },
    }


def _ready(pod: client.V1Pod) -> bool:
    conditions = pod.status.conditions or []
    return any(c.type == "Ready" and c.status == "True" for c in conditions)


def test_kubectl_and_server_report_the_pinned_release(cluster: Cluster) -> None:
    if cluster.local is None:
        pytest.skip("the version pin applies to the local provider's binaries")
    versions = json.loads(cluster.kubectl("version", "-o", "json").stdout)
    assert versions["clientVersion"]["gitVersion"] == kubernetes_version()
    assert versions["serverVersion"]["gitVersion"] == kubernetes_version()


def test_gpu_deployment_runs_on_fake_gpu_nodes(cluster: Cluster, namespace: str) -> None:
    gpu = {"limits": {GPU_RESOURCE: "1"}, "requests": {"cpu": "1", "memory": "1Gi"}}
    body = deployment(
        "gpu-app",
        2,
        gpu,
        tolerations=[GPU_TOLERATION],
        nodeSelector={"nvidia.com/gpu.product": GPU_PRODUCT},
    )
    with cluster.api_client() as api_client:
        apps, core = client.AppsV1Api(api_client), client.CoreV1Api(api_client)
        apps.create_namespaced_deployment(namespace, body)
        wait_for(
            "2 ready GPU replicas",
            lambda: (
                (apps.read_namespaced_deployment("gpu-app", namespace).status.ready_replicas or 0)
                == 2
            ),
        )
        pods = core.list_namespaced_pod(namespace, label_selector="app=gpu-app").items
        assert len(pods) == 2
        for pod in pods:
            assert _ready(pod)
            node = core.read_node(pod.spec.node_name)
            assert node.metadata.labels["nvidia.com/gpu.present"] == "true"
            assert node.status.allocatable[GPU_RESOURCE] == "8"


def test_gpu_pod_without_toleration_stays_pending(cluster: Cluster, namespace: str) -> None:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "no-toleration"},
        "spec": {
            "containers": [
                {
                    "name": "main",
                    "image": "registry.invalid/ccs-e2e:none",
                    "resources": {"limits": {GPU_RESOURCE: "1"}},
                }
            ],
        },
    }
    with cluster.api_client() as api_client:
        core = client.CoreV1Api(api_client)
        core.create_namespaced_pod(namespace, pod)

        def unschedulable() -> str | None:
            status = core.read_namespaced_pod("no-toleration", namespace).status
            for c in status.conditions or []:
                if c.type == "PodScheduled" and c.status == "False":
                    return str(c.message)
            return None

        message = wait_for("the scheduler to refuse the pod", unschedulable, timeout=30)
        assert "untolerated taint" in message or GPU_RESOURCE in message


def test_hpa_min_replicas_scales_deployment_up(cluster: Cluster, namespace: str) -> None:
    """The real HPA controller raises replicas to minReplicas before it needs any metric.

    No metrics API runs here, so the CPU metric cannot be read; upstream's controller
    handles `current < minReplicas` without computing metrics (reason "Current number of
    replicas below Spec.MinReplicas"), which is the floor behaviour the operator builds on.
    """
    hpa = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "web"},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
            "minReplicas": 3,
            "maxReplicas": 5,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": {"type": "Utilization", "averageUtilization": 60},
                    },
                }
            ],
        },
    }
    with cluster.api_client() as api_client:
        apps = client.AppsV1Api(api_client)
        autoscaling = client.AutoscalingV2Api(api_client)
        apps.create_namespaced_deployment(
            namespace, deployment("web", 1, {"requests": {"cpu": "100m"}})
        )
        autoscaling.create_namespaced_horizontal_pod_autoscaler(namespace, hpa)

        def ready_replicas() -> bool:
            status = apps.read_namespaced_deployment("web", namespace).status
            return status.ready_replicas == 3

        wait_for("the HPA to bring `web` to 3 ready replicas", ready_replicas, timeout=90)
        assert apps.read_namespaced_deployment("web", namespace).spec.replicas == 3
        status = autoscaling.read_namespaced_horizontal_pod_autoscaler("web", namespace).status
        assert status.desired_replicas == 3


def test_garbage_collector_deletes_owned_child(cluster: Cluster, namespace: str) -> None:
    with cluster.api_client() as api_client:
        core = client.CoreV1Api(api_client)
        owner = core.create_namespaced_config_map(
            namespace, {"metadata": {"name": "owner"}, "data": {"k": "v"}}
        )
        reference = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "name": "owner",
            "uid": owner.metadata.uid,
        }
        child = {"metadata": {"name": "child", "ownerReferences": [reference]}, "data": {}}
        core.create_namespaced_config_map(namespace, child)
        core.delete_namespaced_config_map(
            "owner", namespace, body=client.V1DeleteOptions(propagation_policy="Background")
        )

        def child_gone() -> bool:
            try:
                core.read_namespaced_config_map("child", namespace)
            except ApiException as exc:
                return exc.status == 404
            return False

        wait_for("the garbage collector to delete the child", child_gone, timeout=60)


def _cel_crd(group: str) -> dict:
    schema = {
        "type": "object",
        "properties": {
            "spec": {
                "type": "object",
                "properties": {
                    "minReplicas": {"type": "integer"},
                    "maxReplicas": {"type": "integer"},
                },
                "x-kubernetes-validations": [
                    {
                        "rule": "self.minReplicas <= self.maxReplicas",
                        "message": "minReplicas must not exceed maxReplicas",
                        "fieldPath": ".minReplicas",
                    }
                ],
            }
        },
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"widgets.{group}"},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": schema},
                }
            ],
        },
    }


def test_cel_validation_refuses_bad_object(cluster: Cluster, namespace: str) -> None:
    group = f"e2e-{uuid.uuid4().hex[:8]}.ccs.test"
    body = _cel_crd(group)
    with cluster.api_client() as api_client:
        extensions = client.ApiextensionsV1Api(api_client)
        custom = client.CustomObjectsApi(api_client)
        extensions.create_custom_resource_definition(body)
        try:

            def established() -> bool:
                crd = extensions.read_custom_resource_definition(body["metadata"]["name"])
                conditions = crd.status.conditions or []
                return any(c.type == "Established" and c.status == "True" for c in conditions)

            wait_for("the CRD to be served", established)

            def widget(name: str, low: int, high: int) -> dict:
                return {
                    "apiVersion": f"{group}/v1",
                    "kind": "Widget",
                    "metadata": {"name": name},
                    "spec": {"minReplicas": low, "maxReplicas": high},
                }

            # Discovery may lag Established by a moment; retry the good object until served.
            wait_for(
                "the good widget to be accepted",
                lambda: _create_widget(custom, group, namespace, widget("good", 1, 3)),
                timeout=30,
            )
            with pytest.raises(ApiException) as refused:
                custom.create_namespaced_custom_object(
                    group, "v1", namespace, "widgets", widget("bad", 5, 2)
                )
            assert refused.value.status == 422
            assert "minReplicas must not exceed maxReplicas" in str(refused.value.body)
            assert "spec.minReplicas" in str(refused.value.body)
        finally:
            extensions.delete_custom_resource_definition(body["metadata"]["name"])


def _create_widget(api: client.CustomObjectsApi, group: str, namespace: str, obj: dict) -> bool:
    try:
        api.create_namespaced_custom_object(group, "v1", namespace, "widgets", obj)
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise
    return True


def test_servicemonitor_crd_can_be_removed_and_restored(cluster: Cluster) -> None:
    with cluster.api_client() as api_client:
        was_installed = crds.installed(api_client)
        try:
            cluster.uninstall_servicemonitor_crd()
            assert not crds.installed(api_client)
            cluster.install_servicemonitor_crd()
            assert crds.installed(api_client)
            published = crds.published_crd(crds.SERVICEMONITOR)
            assert published["spec"]["names"]["kind"] == "ServiceMonitor"
        finally:
            if not was_installed:
                cluster.uninstall_servicemonitor_crd()


def test_data_survives_control_plane_restarts(cluster: Cluster, namespace: str) -> None:
    if cluster.local is None:
        pytest.skip("restarts need the local provider")
    with cluster.api_client() as api_client:
        client.CoreV1Api(api_client).create_namespaced_config_map(
            namespace, {"metadata": {"name": "keep"}, "data": {"answer": "42"}}
        )
    cluster.restart_etcd()
    cluster.restart_apiserver()
    with cluster.api_client() as api_client:
        kept = client.CoreV1Api(api_client).read_namespaced_config_map("keep", namespace)
    assert kept.data == {"answer": "42"}


def _cli(state_dir: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CCS_E2E_STATE_DIR": str(state_dir)}
    return subprocess.run(
        [sys.executable, "-m", "e2e", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmdline:
            found.append(f"{proc.name}: {cmdline}")
    return found


def test_cli_cluster_with_pod_ready_delay_and_clean_down(tmp_path: Path) -> None:
    """A second cluster in its own state dir, driven as a user would, then torn down."""
    state = tmp_path / "cluster"
    up = _cli(
        state,
        "up",
        "--gpu-nodes=0",
        "--cpu-nodes=1",
        "--no-servicemonitor-crd",
        "--pod-ready-delay=3",
    )
    assert up.returncode == 0, up.stderr
    lines = up.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("export KUBECONFIG="), up.stdout
    try:
        assert _cli(state, "status").returncode == 0
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "slow", "namespace": "default"},
            "spec": {"containers": [{"name": "main", "image": "registry.invalid/x:none"}]},
        }
        applied = _cli(state, "kubectl", "--", "apply", "-f", "-", timeout=60)
        assert applied.returncode != 0  # no stdin given: kubectl must say so, not hang
        kubeconfig = state / "kubeconfig"
        api_client = client.ApiClient(_load_config(kubeconfig))
        with api_client:
            core = client.CoreV1Api(api_client)
            wait_for(
                "the default service account",
                lambda: _exists(lambda: core.read_namespaced_service_account("default", "default")),
            )
            core.create_namespaced_pod("default", pod)
            ready = wait_for(
                "the delayed pod to be Ready",
                lambda: _ready_pod(core.read_namespaced_pod("slow", "default")),
                timeout=60,
            )
        scheduled, became_ready = ready
        assert (became_ready - scheduled) >= dt.timedelta(seconds=2)
    finally:
        down = _cli(state, "down")
    assert down.returncode == 0, down.stderr
    assert _cli(state, "status").returncode == 3
    assert _processes_mentioning(str(state)) == []


def _load_config(kubeconfig: Path) -> client.Configuration:
    from kubernetes import config

    configuration = client.Configuration()
    config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
    return configuration


def _exists(read: Callable[[], object]) -> bool:
    try:
        read()
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise
    return True


def _ready_pod(pod: client.V1Pod) -> tuple[dt.datetime, dt.datetime] | None:
    times = {c.type: c.last_transition_time for c in pod.status.conditions or []}
    if _ready(pod) and "PodScheduled" in times:
        return times["PodScheduled"], times["Ready"]
    return None
