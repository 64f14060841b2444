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
- Fed by real label-filtered watches (watch.LabelWatch): a rollout costs one Deployment
  apply (the Deployment controller's revision annotation is no drift), and a ServiceMonitor
  deleted or edited by hand is applied back within seconds, while an unlabelled one in the
  same namespace never reaches the controller.
"""

from __future__ import annotations

import asyncio
import copy
import json
import time
from collections.abc import Callable, Mapping
from typing import Any

import pytest
from kubernetes import client

from ccs_operator.clients.kube import CHILD_TYPES, KubeClient
from ccs_operator.clients.watch import LabelWatch
from ccs_operator.config import OperatorConfig
from ccs_operator.controllers.handlers import MANAGED_BY_SELECTOR, OPTIONAL_CRD_KINDS, own_watches
from ccs_operator.controllers.reconcile import DIGEST_ANNOTATION, Reconciler
from ccs_operator.core.render import RenderSettings
from ccs_operator.core.status import FLOOR_STATUS, RECONCILE_STATUS
from e2e import crds
from e2e.fixtures import Cluster
from e2e.operator_fixtures import (
    GROUP,
    PLURAL,
    VERSION,
    Services,
    admins_network_policy,
    sample,
)

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
            continue  # the operator's own watch, not kopf's: see the watch tests below
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
async def test_a_network_policy_is_admitted_kept_without_drift_and_deleted_when_off(
    cluster: Cluster, solo_namespace: str, services: Services, ccs_crd: None
) -> None:
    """spec.networkPolicy on the real API server: the NetworkPolicy is accepted as rendered,
    what the server stores reads as no drift (a restarted controller applies nothing), and
    switching it off deletes it (ours only: an admin's policy in the namespace stays)."""
    peers = [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "gateway"}}},
        {"ipBlock": {"cidr": "192.0.2.0/24", "except": ["192.0.2.128/25"]}},
    ]
    services.apply(
        solo_namespace, sample("policed", networkPolicy={"enabled": True, "allowFrom": peers})
    )
    admins = admins_network_policy("admins", solo_namespace)
    cluster.kubectl("apply", "-f", "-", input=json.dumps(admins))
    applied = await _applies_of_a_fresh_controller(cluster, solo_namespace, "policed")
    assert "NetworkPolicy" in applied, applied
    policy = json.loads(
        cluster.kubectl(
            "get", "networkpolicy", "policed", "-n", solo_namespace, "-o", "json"
        ).stdout
    )
    assert policy["spec"]["podSelector"] == {
        "matchLabels": {"serving.claudecode.io/service": "policed"}
    }
    assert {
        "from": peers,
        "ports": [{"port": 8000, "protocol": "TCP"}, {"port": 8001, "protocol": "TCP"}],
    } in policy["spec"]["ingress"]
    await asyncio.sleep(6)  # the Deployment and HPA controllers write what they write
    assert await _applies_of_a_fresh_controller(cluster, solo_namespace, "policed") == []
    # Switched off: a fresh controller (it finds the policy from the watch's listing)
    # deletes it, and only it.
    cluster.kubectl(
        "patch", "ccs", "policed", "-n", solo_namespace, "--type=merge",
        "-p", '{"spec": {"networkPolicy": {"enabled": false}}}',
    )  # fmt: skip
    await _applies_of_a_fresh_controller(cluster, solo_namespace, "policed")
    left = json.loads(
        cluster.kubectl("get", "networkpolicy", "-n", solo_namespace, "-o", "json").stdout
    )
    assert [item["metadata"]["name"] for item in left["items"]] == ["admins"]


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


async def _until(what: str, check: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"not within {timeout:.0f}s: {what}"
        await asyncio.sleep(0.1)


async def _settled(reconciler: Reconciler, quiet: float = 1.0, timeout: float = 60.0) -> None:
    """The queue empty and idle for `quiet` seconds (late watch events included)."""
    queue = reconciler.queue
    deadline = time.monotonic() + timeout
    idle_since: float | None = None
    while True:
        busy = len(queue) or queue.processing() or queue._waiting
        now = time.monotonic()
        if busy:
            idle_since = None
        elif idle_since is None:
            idle_since = now
        elif now - idle_since >= quiet:
            return
        assert now < deadline, "the controller's queue did not settle"
        await asyncio.sleep(0.05)


def _revision(reconciler: Reconciler, namespace: str, name: str) -> str | None:
    known = reconciler.children.get(("Deployment", namespace, name))
    return known.annotations.get("deployment.kubernetes.io/revision") if known else None


@pytest.mark.asyncio
async def test_a_rollout_costs_one_deployment_apply_on_the_server(
    cluster: Cluster, solo_namespace: str, services: Services, ccs_crd: None
) -> None:
    """The Deployment controller writes its revision annotation after every rollout; read
    through a real watch, that write is not drift (issue 14: it cost one more apply)."""
    services.apply(solo_namespace, sample("roll"))
    reconciler, kube = await _controller(cluster, solo_namespace)
    stop = asyncio.Event()

    def on_event(event_type: str | None, body: dict[str, Any]) -> None:
        reconciler.child_event("Deployment", event_type, body)

    watch = LabelWatch(
        kube, "Deployment", MANAGED_BY_SELECTOR, solo_namespace, on_event, lambda _: None
    )
    watching = asyncio.create_task(watch.run(stop))
    reconciler.workers.start()
    try:
        reconciler.remember_service(_service(cluster, solo_namespace, "roll"))
        reconciler.queue.add((solo_namespace, "roll"))
        await _until("revision 1", lambda: _revision(reconciler, solo_namespace, "roll") == "1")
        await _settled(reconciler)
        assert kube.applies.count("Deployment") == 1
        # A change of the pod template: a rollout.
        cluster.kubectl(
            "patch", "ccs", "roll", "-n", solo_namespace, "--type=merge",
            "-p", json.dumps({"spec": {"imagePullPolicy": "Always"}}),
        )  # fmt: skip
        reconciler.remember_service(_service(cluster, solo_namespace, "roll"))
        reconciler.queue.add((solo_namespace, "roll"))
        await _until("revision 2", lambda: _revision(reconciler, solo_namespace, "roll") == "2")
        await _settled(reconciler, quiet=3.0)
        assert kube.applies.count("Deployment") == 2, kube.applies
        live = cluster.kubectl(
            "get", "deployment", "roll", "-n", solo_namespace, "-o", "json"
        ).stdout
        assert (
            json.loads(live)["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"]
            == "Always"
        )
        # Every request of the watch carried the selector.
        assert watch.requests and all(
            q["labelSelector"] == MANAGED_BY_SELECTOR for _, _, q in watch.requests
        )
    finally:
        stop.set()
        await watching
        await reconciler.workers.stop()
        kube.close()


@pytest.mark.asyncio
async def test_a_service_monitor_deleted_or_edited_by_hand_is_restored_from_its_watch(
    cluster: Cluster, solo_namespace: str, services: Services, ccs_crd: None
) -> None:
    with cluster.api_client() as api_client:
        if not crds.installed(api_client, crds.SERVICEMONITOR):
            pytest.fail("the ServiceMonitor CRD is missing (a test removed it and did not restore)")
    services.apply(solo_namespace, sample("mon"))
    reconciler, kube = await _controller(cluster, solo_namespace)
    stop = asyncio.Event()
    (watch,) = own_watches(
        reconciler, "ServiceMonitor", OperatorConfig(namespaces=(solo_namespace,))
    )
    watching = asyncio.create_task(watch.run(stop))
    reconciler.workers.start()
    key = ("ServiceMonitor", solo_namespace, "mon")

    def uid() -> str | None:
        known = reconciler.children.get(key)
        return known.uid if known else None

    try:
        await _until("the watch listed", lambda: "ServiceMonitor" in reconciler.watched_kinds)
        reconciler.remember_service(_service(cluster, solo_namespace, "mon"))
        reconciler.queue.add((solo_namespace, "mon"))
        await _until("the ServiceMonitor applied and seen", lambda: uid() is not None)
        await _settled(reconciler)
        first = uid()
        # An unlabelled ServiceMonitor of somebody else: the server never sends it.
        stranger = {
            "apiVersion": "monitoring.coreos.com/v1",
            "kind": "ServiceMonitor",
            "metadata": {"name": "stranger", "namespace": solo_namespace},
            "spec": {"selector": {}, "endpoints": [{"port": "metrics"}]},
        }
        cluster.kubectl("apply", "-f", "-", input=json.dumps(stranger))
        # Deleted by hand: applied back from the watch's DELETED, long before any resync.
        started = time.monotonic()
        cluster.kubectl("delete", "servicemonitor", "mon", "-n", solo_namespace)
        await _until("re-created", lambda: uid() not in (None, first), timeout=15)
        restored_in = time.monotonic() - started
        # Edited by hand: the same.
        cluster.kubectl(
            "patch", "servicemonitor", "mon", "-n", solo_namespace, "--type=merge",
            "-p", json.dumps({"spec": {"endpoints": [{"port": "http", "interval": "1h"}]}}),
        )  # fmt: skip

        def endpoints() -> Any:
            raw = cluster.kubectl(
                "get", "servicemonitor", "mon", "-n", solo_namespace, "-o", "json"
            )
            return json.loads(raw.stdout)["spec"]["endpoints"]

        await _until("the edit undone", lambda: endpoints()[0]["port"] == "metrics", timeout=15)
        await _settled(reconciler)
        assert ("ServiceMonitor", solo_namespace, "stranger") not in reconciler.children
        assert all(q["labelSelector"] == MANAGED_BY_SELECTOR for _, _, q in watch.requests)
        assert kube.applies.count("ServiceMonitor") == 3, kube.applies
        assert restored_in < 15
    finally:
        stop.set()
        await watching
        await reconciler.workers.stop()
        kube.close()
    assert "ServiceMonitor" not in reconciler.watched_kinds
