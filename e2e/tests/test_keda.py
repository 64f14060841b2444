"""KEDA mode in-process against the real local API server, with KEDA's own ScaledObject CRD
(from KEDA's Go module, e2e/keda.py) installed or absent.

- The ScaledObject the operator renders is admitted by KEDA's schema and stored as sent
  (a structural CRD silently prunes unknown fields: every field we send must survive).
- Switching the engine HPA -> KEDA -> HPA on the server leaves exactly one autoscaler
  after each reconcile; min 0 is accepted by the API server in both modes (the HPA's
  minReplicas 0 through HPAScaleToZero, on by default in 1.37).
- Without the CRD, engine KEDA reports KEDAMissing in status and creates nothing.

No KEDA operator runs here: these tests are about what the operator writes. Scaling by
KEDA itself needs KEDA's operator and metrics server (not built by this harness).
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from ccs_operator.clients.kube import CHILD_TYPES, KubeClient
from ccs_operator.controllers.handlers import MANAGED_BY_SELECTOR, OPTIONAL_CRD_KINDS
from ccs_operator.controllers.reconcile import Reconciler
from ccs_operator.core.api import parse_service
from ccs_operator.core.render import RenderSettings, render_children
from e2e import keda
from e2e.fixtures import Cluster
from e2e.operator_fixtures import GROUP, PLURAL, VERSION, Services, condition, sample

pytestmark = pytest.mark.cluster

PROMETHEUS = "http://prometheus.monitoring.svc:9090"


@pytest.fixture
def keda_crd(cluster: Cluster) -> Iterator[None]:
    with cluster.api_client() as api_client:
        keda.install(api_client)
    try:
        yield
    finally:
        with cluster.api_client() as api_client:
            keda.uninstall(api_client)


@pytest.fixture
def no_keda_crd(cluster: Cluster) -> None:
    with cluster.api_client() as api_client:
        keda.uninstall(api_client)


def _events(body: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
    pass


async def _controller(cluster: Cluster, namespace: str) -> tuple[Reconciler, KubeClient]:
    """A fresh in-process controller whose watched-kind cache is filled by a listing."""
    kube = KubeClient(cluster.api_client(), workers=4)
    reconciler = Reconciler(kube, RenderSettings(prometheus_url=PROMETHEUS), _events)
    for kind, resource in CHILD_TYPES.items():
        if kind in OPTIONAL_CRD_KINDS:
            continue
        reconciler.watched_kinds.add(kind)
        listed = await kube._call(
            "GET", resource.path(namespace), query=[("labelSelector", MANAGED_BY_SELECTOR)]
        )
        for item in listed.get("items", ()):
            item.setdefault("kind", kind)
            reconciler.remember_child(kind, item, deleted=False)
    return reconciler, kube


def _service(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    with cluster.api_client() as api_client:
        return dict(
            client.CustomObjectsApi(api_client).get_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, name
            )
        )


async def _reconcile(reconciler: Reconciler, cluster: Cluster, namespace: str, name: str) -> Any:
    body = _service(cluster, namespace, name)
    reconciler.remember_service(body)
    await reconciler.reconcile(body)
    return _service(cluster, namespace, name)


def _autoscalers(cluster: Cluster, namespace: str) -> set[str]:
    with cluster.api_client() as api_client:
        hpas = client.AutoscalingV2Api(api_client).list_namespaced_horizontal_pod_autoscaler(
            namespace
        )
        found = {f"HorizontalPodAutoscaler/{h.metadata.name}" for h in hpas.items}
        try:
            scaled = client.CustomObjectsApi(api_client).list_namespaced_custom_object(
                "keda.sh", "v1alpha1", namespace, "scaledobjects"
            )
        except ApiException as exc:
            if exc.status != 404:
                raise
            scaled = {"items": []}
    return found | {f"ScaledObject/{s['metadata']['name']}" for s in scaled["items"]}


def _scaled_object(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    with cluster.api_client() as api_client:
        return dict(
            client.CustomObjectsApi(api_client).get_namespaced_custom_object(
                "keda.sh", "v1alpha1", namespace, "scaledobjects", name
            )
        )


def _keda_sample(name: str, engine: str = "KEDA") -> dict[str, Any]:
    body = sample(name)
    autoscaling = copy.deepcopy(body["spec"].get("autoscaling") or {})
    autoscaling["engine"] = engine
    body["spec"]["autoscaling"] = autoscaling
    body["spec"]["replicas"] = {"min": 0, "max": 3}
    return body


def _set_engine(services: Services, namespace: str, name: str, engine: str) -> None:
    services.patch(namespace, name, {"spec": {"autoscaling": {"engine": engine}}})


@pytest.mark.asyncio
async def test_engine_switch_on_the_server_leaves_exactly_one_autoscaler(
    cluster: Cluster, solo_namespace: str, services: Services, ccs_crd: None, keda_crd: None
) -> None:
    ns, name = solo_namespace, "engines"
    services.apply(ns, _keda_sample(name))
    reconciler, kube = await _controller(cluster, ns)
    try:
        body = await _reconcile(reconciler, cluster, ns, name)
        assert _autoscalers(cluster, ns) == {f"ScaledObject/{name}"}
        degraded = condition(body, "Degraded")
        assert degraded is not None and degraded["status"] == "False", body["status"]
        # Stored as sent: KEDA's structural schema pruned none of our fields.
        rendered = render_children(
            parse_service(body), floor=None, settings=RenderSettings(prometheus_url=PROMETHEUS)
        )
        (want,) = [m for m in rendered if m["kind"] == "ScaledObject"]
        stored = _scaled_object(cluster, ns, name)
        assert stored["spec"] == want["spec"]
        assert stored["spec"]["minReplicaCount"] == 0  # scale to zero
        assert stored["metadata"]["ownerReferences"][0]["uid"] == body["metadata"]["uid"]
        assert condition(body, "ScaledToZero") is not None  # min 0 reports it

        _set_engine(services, ns, name, "HPA")
        await _reconcile(reconciler, cluster, ns, name)
        assert _autoscalers(cluster, ns) == {f"HorizontalPodAutoscaler/{name}"}
        with cluster.api_client() as api_client:
            hpa = client.AutoscalingV2Api(api_client).read_namespaced_horizontal_pod_autoscaler(
                name, ns
            )
        # HPAScaleToZero (on by default in 1.37): minReplicas 0 with an External metric.
        assert hpa.spec.min_replicas == 0
        assert any(m.type == "External" for m in hpa.spec.metrics)

        _set_engine(services, ns, name, "KEDA")
        body = await _reconcile(reconciler, cluster, ns, name)
        assert _autoscalers(cluster, ns) == {f"ScaledObject/{name}"}
        # And after a restart nothing is applied or deleted again.
        fresh, fresh_kube = await _controller(cluster, ns)
        try:
            await _reconcile(fresh, cluster, ns, name)
        finally:
            fresh_kube.close()
        assert _autoscalers(cluster, ns) == {f"ScaledObject/{name}"}
    finally:
        kube.close()


@pytest.mark.asyncio
async def test_keda_absent_is_a_condition_and_nothing_is_created(
    cluster: Cluster, solo_namespace: str, services: Services, ccs_crd: None, no_keda_crd: None
) -> None:
    ns, name = solo_namespace, "nokeda"
    services.apply(ns, _keda_sample(name))
    reconciler, kube = await _controller(cluster, ns)
    try:
        body = await _reconcile(reconciler, cluster, ns, name)
    finally:
        kube.close()
    degraded = condition(body, "Degraded")
    assert degraded is not None, body.get("status")
    assert (degraded["status"], degraded["reason"]) == ("True", "KEDAMissing")
    assert "install KEDA" in degraded["message"]
    assert body["status"]["phase"] == "Degraded"
    with cluster.api_client() as api_client:
        apps = client.AppsV1Api(api_client)
        core = client.CoreV1Api(api_client)
        assert apps.list_namespaced_deployment(ns).items == []
        assert [s.metadata.name for s in core.list_namespaced_service(ns).items] == []
        assert [
            c.metadata.name
            for c in core.list_namespaced_config_map(ns).items
            if c.metadata.name != "kube-root-ca.crt"
        ] == []
    assert _autoscalers(cluster, ns) == set()


@pytest.mark.asyncio
async def test_scaled_to_zero_status_on_the_server(
    cluster: Cluster, solo_namespace: str, services: Services, ccs_crd: None
) -> None:
    """HPA mode, min 0: the HPA is admitted with minReplicas 0; once the Deployment is at 0
    (scaled by hand here, standing in for the HPA: no external metrics adapter runs in this
    test, and the real HPA controller leaves a target at zero it did not scale there), the
    status written to the server says ScaledToZero (condition and phase, both admitted by
    the CRD); raising min to 1 removes the condition from the server's status."""
    ns, name = solo_namespace, "zero"
    services.apply(ns, _keda_sample(name, engine="HPA"))
    reconciler, kube = await _controller(cluster, ns)
    try:
        body = await _reconcile(reconciler, cluster, ns, name)
        zero = condition(body, "ScaledToZero")
        assert zero is not None and zero["status"] == "False", body["status"]
        cluster.kubectl("scale", "deployment", name, "-n", ns, "--replicas=0")
        with cluster.api_client() as api_client:
            apps = client.AppsV1Api(api_client)
            deadline = asyncio.get_running_loop().time() + 60
            while True:
                deployment = apps.read_namespaced_deployment(name, ns)
                status = deployment.status
                if (
                    (status.replicas or 0) == 0
                    and status.observed_generation == deployment.metadata.generation
                ):
                    break
                assert asyncio.get_running_loop().time() < deadline, status
                await asyncio.sleep(0.5)
        # What the Deployment's watch tells the operator: a fresh listing of the children.
        kube.close()
        reconciler, kube = await _controller(cluster, ns)
        body = await _reconcile(reconciler, cluster, ns, name)
        zero = condition(body, "ScaledToZero")
        assert zero is not None and (zero["status"], zero["reason"]) == ("True", "ScaledToZero")
        assert body["status"]["phase"] == "ScaledToZero"
        ready = condition(body, "Ready")
        assert ready is not None and ready["reason"] == "ScaledToZero"

        services.patch(ns, name, {"spec": {"replicas": {"min": 1}}})
        body = await _reconcile(reconciler, cluster, ns, name)
        assert condition(body, "ScaledToZero") is None, body["status"]["conditions"]
    finally:
        kube.close()
