"""The controller layer in-process against the real local API server (not a subprocess):
what the fakes of tests/test_controller.py assume about the server, checked on the server.

- Status is server-side applied with one field manager per writer, so the reconcile and the
  floor loop each own their conditions: a write of one, even from a stale view, never
  removes what the other wrote.
- After a restart, a fresh controller that lists the children (as its watches do) applies
  nothing: the digest stamped on each child and its real managedFields (the Deployment
  controller's revision annotation, the HPA's status writes) say nothing drifted; a hand
  edit is applied back.
- The resync's read-back asks the server for metadata only (PartialObjectMetadata): an
  unchanged child is not read whole, and one deleted behind the controller's back (its
  cache never told) is re-created.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Mapping
from typing import Any

import pytest
from kubernetes import client

from ccs_operator.handlers import MANAGED_BY_SELECTOR, OPTIONAL_CRD_KINDS
from ccs_operator.kube import CHILD_TYPES, KubeClient
from ccs_operator.reconcile import DIGEST_ANNOTATION, Reconciler
from ccs_operator.render import RenderSettings
from ccs_operator.status import FLOOR_STATUS, RECONCILE_STATUS
from e2e.fixtures import Cluster
from e2e.operator_fixtures import GROUP, PLURAL, VERSION, Services, sample

pytestmark = pytest.mark.cluster


class Counting(KubeClient):
    """The real client, counting the applies and the reads it sends."""

    def __init__(self, api_client: client.ApiClient) -> None:
        super().__init__(api_client, workers=4)
        self.applies: list[str] = []
        self.gets: list[str] = []
        self.metadata_gets: list[str] = []

    async def apply(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        self.applies.append(manifest["kind"])
        return await super().apply(manifest)

    async def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        self.gets.append(kind)
        return await super().get(kind, namespace, name)

    async def get_metadata(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        self.metadata_gets.append(kind)
        return await super().get_metadata(kind, namespace, name)


def _no_events(body: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
    pass


async def _controller(cluster: Cluster, namespace: str) -> tuple[Reconciler, Counting]:
    """A fresh controller whose child cache is filled as its watches' first listing would."""
    kube = Counting(cluster.api_client())
    reconciler = Reconciler(kube, RenderSettings(), _no_events)
    for kind, resource in CHILD_TYPES.items():
        if kind in OPTIONAL_CRD_KINDS:
            continue  # not watched by the operator: read on demand
        reconciler.watched_kinds.add(kind)
        listed = await kube._call(
            "GET",
            resource.path(namespace),
            query=[("labelSelector", MANAGED_BY_SELECTOR)],
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


@pytest.mark.asyncio
async def test_each_status_writer_owns_its_conditions_on_the_server(
    cluster: Cluster, solo_namespace: str, services: Services, ccs_crd: None
) -> None:
    services.apply(solo_namespace, sample("owners"))
    reconciler, kube = await _controller(cluster, solo_namespace)
    try:
        body = _service(cluster, solo_namespace, "owners")
        reconciler.remember_service(body)
        await reconciler.reconcile(body)
        stale = copy.deepcopy(body)  # the floor loop's view, from before the reconcile
        floor_part = {
            "floor": 2,
            "floorReason": "Steady",
            "conditions": [
                {
                    "type": "FloorControllerActive",
                    "status": "True",
                    "reason": "Evaluating",
                    "message": "evaluating",
                    "lastTransitionTime": "2026-01-01T00:00:00Z",
                }
            ],
        }
        assert not FLOOR_STATUS.part(stale.get("status")).get("conditions")
        await kube.apply_service_status(solo_namespace, "owners", floor_part, FLOOR_STATUS.manager)
        live = _service(cluster, solo_namespace, "owners")
        types = {c["type"] for c in live["status"]["conditions"]}
        assert {"Ready", "Degraded", "FloorControllerActive"} <= types
        # And the other way round: the reconcile's next write keeps the floor's part.
        changed = RECONCILE_STATUS.part(live["status"])
        changed["phase"] = "Progressing"
        await kube.apply_service_status(solo_namespace, "owners", changed, RECONCILE_STATUS.manager)
        live = _service(cluster, solo_namespace, "owners")
        assert live["status"]["floor"] == 2
        assert "FloorControllerActive" in {c["type"] for c in live["status"]["conditions"]}
        managers = {
            f["manager"]
            for f in live["metadata"]["managedFields"]
            if f.get("subresource") == "status"
        }
        assert {RECONCILE_STATUS.manager, FLOOR_STATUS.manager} <= managers
    finally:
        kube.close()


async def _applies_of_a_fresh_controller(cluster: Cluster, namespace: str, name: str) -> list[str]:
    """Start a fresh controller (as after a restart), reconcile one service once, and
    return the kinds it applied."""
    reconciler, kube = await _controller(cluster, namespace)
    try:
        body = _service(cluster, namespace, name)
        reconciler.remember_service(body)
        await reconciler.reconcile(body)
        return kube.applies
    finally:
        kube.close()


@pytest.mark.asyncio
async def test_a_restarted_controller_applies_only_what_drifted(
    cluster: Cluster, solo_namespace: str, services: Services, ccs_crd: None
) -> None:
    services.apply(solo_namespace, sample("restart"))
    # Positive control: the first pass applies everything.
    assert len(await _applies_of_a_fresh_controller(cluster, solo_namespace, "restart")) == 5
    # Let the Deployment controller and the HPA controller write what they write.
    await asyncio.sleep(6)
    assert await _applies_of_a_fresh_controller(cluster, solo_namespace, "restart") == []
    cluster.kubectl(
        "patch", "configmap", "restart-model-config", "-n", solo_namespace, "--type=merge",
        "-p", '{"data": {"config.pbtxt": "tampered"}}',
    )  # fmt: skip
    applied = await _applies_of_a_fresh_controller(cluster, solo_namespace, "restart")
    assert applied == ["ConfigMap"]


@pytest.mark.asyncio
async def test_the_resync_reads_metadata_only_and_recreates_a_hidden_deletion(
    cluster: Cluster, solo_namespace: str, services: Services, ccs_crd: None
) -> None:
    services.apply(solo_namespace, sample("meta"))
    assert len(await _applies_of_a_fresh_controller(cluster, solo_namespace, "meta")) == 5
    await asyncio.sleep(6)  # the Deployment and HPA controllers' first writes
    reconciler, kube = await _controller(cluster, solo_namespace)
    try:
        # What the server answers: metadata, with what the read-back compares, and no spec.
        head = await kube.get_metadata("ConfigMap", solo_namespace, "meta-model-config")
        assert head is not None
        assert (head["apiVersion"], head["kind"]) == ("meta.k8s.io/v1", "PartialObjectMetadata")
        assert "data" not in head and head["metadata"]["managedFields"]
        assert DIGEST_ANNOTATION in head["metadata"]["annotations"]
        assert await kube.get_metadata("ConfigMap", solo_namespace, "no-such-child") is None
        # A resync pass over children the cache knows as they are: metadata reads, no apply.
        body = _service(cluster, solo_namespace, "meta")
        reconciler.remember_service(body)
        kube.metadata_gets.clear()
        reconciler.verify.add((solo_namespace, "meta"))
        await reconciler.reconcile(body)
        assert {"ConfigMap", "Deployment", "Service", "HorizontalPodAutoscaler"} <= set(
            kube.metadata_gets
        )
        # Read whole: only what other controllers may have written since the listing, and
        # the unwatched ServiceMonitor, which this fresh controller has not cached yet.
        moved = {"Deployment", "HorizontalPodAutoscaler"}
        assert set(kube.gets) <= moved | {"ServiceMonitor"}
        assert kube.applies == []
        kube.gets.clear()
        # Deleted behind the controller's back (no watch here tells it): the resync's pass
        # re-creates exactly that child.
        cluster.kubectl("delete", "service", "meta", "-n", solo_namespace)
        assert ("Service", solo_namespace, "meta") in reconciler.children
        reconciler.verify.add((solo_namespace, "meta"))
        await reconciler.reconcile(_service(cluster, solo_namespace, "meta"))
        assert kube.applies == ["Service"]
        assert set(kube.gets) <= moved  # the deletion was seen in the metadata read
        cluster.kubectl("get", "service", "meta", "-n", solo_namespace)
    finally:
        kube.close()
