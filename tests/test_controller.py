"""The controller layer with a fake API client: every trigger goes through one work queue,
every error class is retried with backoff, deleted services stay deleted, discovery misses
delete nothing, and nothing is kept for services that are gone.

Each test here failed against the controller before the work-queue rebuild (the defect it
names is in its docstring).
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Mapping
from typing import Any

import kopf
import pytest

from ccs_operator.clients.kube import Rejected, Transient
from ccs_operator.config import OperatorConfig
from ccs_operator.controllers import handlers
from ccs_operator.controllers.handlers import MANAGED_BY_SELECTOR, configure, needs_reconcile
from ccs_operator.controllers.reconcile import (
    TOMBSTONE_SECONDS,
    ChildRecord,
    Reconciler,
    child_changed,
)
from ccs_operator.controllers.workqueue import Backoff, WorkQueue
from ccs_operator.core.render import RenderSettings
from fakekube import FakeKube

NS = "ns"


def service(name: str = "svc", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "serving.claudecode.io/v1alpha1",
        "kind": "ClaudeCodeService",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "model": {"name": "m", "repository": "/models"},
            "replicas": {"min": 1, "max": 4},
            **spec,
        },
    }


class Events:
    def __init__(self) -> None:
        self.posted: list[tuple[str, str, str]] = []

    def __call__(self, body: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        self.posted.append((body["metadata"]["name"], reason, message))


def make(*bodies: dict[str, Any]) -> tuple[Reconciler, FakeKube, Events]:
    kube = FakeKube()
    events = Events()
    reconciler = Reconciler(
        kube,  # type: ignore[arg-type]
        RenderSettings(),
        events,
        workers=2,
        queue=WorkQueue(Backoff(base=0.01, cap=0.2)),
    )
    # As the watches do in the operator: these kinds' cache is kept current.
    reconciler.watched_kinds.update(
        {"ConfigMap", "Deployment", "Service", "HorizontalPodAutoscaler"}
    )
    for body in bodies:
        reconciler.remember_service(kube.add_service(body))
    return reconciler, kube, events


async def settle(reconciler: Reconciler, timeout: float = 3.0) -> None:
    """Wait until the queue is empty, nothing is processing and no retry is pending."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        queue = reconciler.queue
        if not len(queue) and not queue.processing() and not queue._waiting:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the work queue did not settle")


def applies(kube: FakeKube, kind: str | None = None) -> int:
    return sum(1 for verb, k, _, _ in kube.log if verb == "APPLY" and kind in (None, k))


@pytest.mark.asyncio
async def test_every_trigger_reconciles_through_the_queue_once_per_burst() -> None:
    reconciler, kube, _ = make(service())
    reconciler.workers.start()
    try:
        for _ in range(10):  # a burst of events for one service
            reconciler.queue.add((NS, "svc"))
        await settle(reconciler)
        assert kube.kinds(NS) == {
            "ConfigMap",
            "Deployment",
            "Service",
            "HorizontalPodAutoscaler",
            "ServiceMonitor",
        }
        first = applies(kube)
        assert first == 5
        assert kube.calls["served"] <= 2  # one or two passes, not ten
        # A resync-style trigger with nothing changed: no apply is sent.
        reconciler.queue.add((NS, "svc"))
        await settle(reconciler)
        assert applies(kube) == first
    finally:
        await reconciler.workers.stop()


@pytest.mark.asyncio
async def test_a_throttled_floor_raise_is_retried_after_retry_after_not_at_resync() -> None:
    """Defect: a reconcile queued by the floor loop that got a 429 was logged and forgotten
    until the next resync (300 s)."""
    reconciler, kube, _ = make(service())
    reconciler.workers.start()
    try:
        reconciler.enqueue((NS, "svc"))
        await settle(reconciler)
        # The floor loop stores a higher floor, then asks for a reconcile; the apply of the
        # HPA is throttled once with Retry-After: 0.05.
        body = kube.service(NS, "svc")
        body["status"]["floor"] = 3
        kube.objects[("ClaudeCodeService", NS, "svc")] = copy.deepcopy(body)
        reconciler.remember_service(body)
        kube.fail["apply"].append(Transient("PATCH hpa: too many requests", 429, retry_after=0.05))
        loop = asyncio.get_running_loop()
        started = loop.time()
        reconciler.enqueue((NS, "svc"))
        await settle(reconciler)
        hpa = kube.objects[("HorizontalPodAutoscaler", NS, "svc")]
        assert hpa["spec"]["minReplicas"] == 3
        assert loop.time() - started >= 0.05  # not sooner than the server asked
        assert reconciler.queue.failures((NS, "svc")) == 0  # forgotten after the success
    finally:
        await reconciler.workers.stop()


@pytest.mark.asyncio
async def test_errors_of_any_class_are_retried_not_left_as_task_exceptions() -> None:
    """Defect: a Rejected GET (e.g. 403) or a Transient ServiceMonitor delete escaped as an
    unretrieved task exception and the service was never retried."""
    reconciler, kube, _ = make(service())
    kube.fail["get_metadata"].append(Rejected("forbidden: cannot get configmaps", 403))
    kube.fail["served"].append(RuntimeError("a bug in a collaborator"))
    reconciler.workers.start()
    try:
        reconciler.enqueue((NS, "svc"))
        await settle(reconciler)
        assert "Deployment" in kube.kinds(NS)
        assert kube.calls["get_metadata"] >= 2 or kube.calls["served"] >= 2
    finally:
        await reconciler.workers.stop()


@pytest.mark.asyncio
async def test_a_deleted_service_does_not_come_back_from_a_status_write_in_flight() -> None:
    """Defect: the body returned by a status write that raced the DELETED event was cached
    again, and the resync re-created children owned by a dead uid."""
    reconciler, kube, _ = make(service())
    kube.hold_status = asyncio.Event()
    reconciler.workers.start()
    try:
        reconciler.enqueue((NS, "svc"))
        await asyncio.wait_for(kube.status_started.wait(), timeout=3.0)
        # While the write is in flight the service is deleted (garbage collection takes
        # its children) and the DELETED event is handled.
        uid = kube.service(NS, "svc")["metadata"]["uid"]
        for key in [k for k in kube.objects if k[1] == NS]:
            del kube.objects[key]
        reconciler.forget_service((NS, "svc"), uid)
        kube.hold_status.set()
        await settle(reconciler)
        assert (NS, "svc") not in reconciler.services
        before = applies(kube)
        reconciler.queue.add((NS, "svc"))  # the resync's trigger
        await settle(reconciler)
        assert applies(kube) == before and not kube.kinds(NS)
        # A new service with the same name (a new uid) is not affected.
        reconciler.remember_service(kube.add_service(service()))
        reconciler.queue.add((NS, "svc"))
        await settle(reconciler)
        assert "Deployment" in kube.kinds(NS)
    finally:
        await reconciler.workers.stop()


@pytest.mark.asyncio
async def test_tombstones_block_for_their_lifetime_and_only_the_resync_prunes_them() -> None:
    """Defect: every service event scanned the whole tombstone map to prune it; the event
    path now only looks its uid up, and the resync prunes once per round."""
    reconciler, kube, _ = make()
    recent, expired = kube.add_service(service("recent")), kube.add_service(service("expired"))
    for body in (recent, expired):
        reconciler.forget_service((NS, body["metadata"]["name"]), body["metadata"]["uid"])
    reconciler.tombstones[expired["metadata"]["uid"]] -= TOMBSTONE_SECONDS + 1
    assert not reconciler.remember_service(recent)  # deleted within the lifetime: ignored
    assert reconciler.remember_service(expired)  # past it: no longer blocks
    # Neither event pruned anything: the map is only scanned by the resync.
    assert set(reconciler.tombstones) == {recent["metadata"]["uid"], expired["metadata"]["uid"]}
    stop = asyncio.Event()
    resync = asyncio.create_task(reconciler.resync(stop, interval=0.05))
    await asyncio.sleep(0.1)
    stop.set()
    await resync
    assert set(reconciler.tombstones) == {recent["metadata"]["uid"]}
    assert not reconciler.remember_service(recent)


@pytest.mark.asyncio
async def test_a_discovery_miss_deletes_no_service_monitor() -> None:
    """Defect: a transient 404 on monitoring.coreos.com right after an API server restart
    read as 'not served' and deleted every ServiceMonitor, then sent a DELETE on every later
    reconcile."""
    reconciler, kube, _ = make(service())
    await reconciler.reconcile(kube.service(NS, "svc"))
    assert "ServiceMonitor" in kube.kinds(NS)
    kube.servicemonitors_served = False  # the discovery miss
    await reconciler.reconcile(kube.service(NS, "svc"))
    kube.servicemonitors_served = True
    assert "ServiceMonitor" in kube.kinds(NS)
    assert not [entry for entry in kube.log if entry[0] == "DELETE"]


@pytest.mark.parametrize(
    ("on", "off", "kind", "message"),
    [
        (
            {},
            {"monitoring": {"serviceMonitor": False}},
            "ServiceMonitor",
            "Deleted ServiceMonitor svc: spec.monitoring.serviceMonitor is false",
        ),
        (
            {"networkPolicy": {"enabled": True}},
            {"networkPolicy": {"enabled": False}},
            "NetworkPolicy",
            "Deleted NetworkPolicy svc: spec.networkPolicy.enabled is false",
        ),
    ],
    ids=["ServiceMonitor", "NetworkPolicy"],
)
@pytest.mark.asyncio
async def test_an_optional_child_switched_off_is_deleted_once(
    on: dict[str, Any], off: dict[str, Any], kind: str, message: str
) -> None:
    reconciler, kube, events = make(service(**on))
    await reconciler.reconcile(kube.service(NS, "svc"))
    assert kind in kube.kinds(NS)
    body = kube.service(NS, "svc")
    body["spec"].update(off)
    body["metadata"]["generation"] = 2
    kube.objects[("ClaudeCodeService", NS, "svc")] = copy.deepcopy(body)
    reconciler.remember_service(body)
    for _ in range(3):
        await reconciler.reconcile(kube.service(NS, "svc"))
    assert kind not in kube.kinds(NS)
    assert [e for e in kube.log if e[0] == "DELETE"] == [("DELETE", kind, NS, "svc")]
    assert ("svc", "Deleted", message) in events.posted
    # The other children are untouched, and a service that never asked deletes nothing.
    assert {"ConfigMap", "Deployment", "Service", "HorizontalPodAutoscaler"} <= kube.kinds(NS)
    plain, plain_kube, _ = make(service())
    await plain.reconcile(plain_kube.service(NS, "svc"))
    assert not [e for e in plain_kube.log if e[0] == "DELETE"]


@pytest.mark.asyncio
async def test_a_service_monitor_switched_off_while_the_operator_was_down_is_deleted() -> None:
    reconciler, kube, _ = make(service())
    await reconciler.reconcile(kube.service(NS, "svc"))
    # A fresh operator process: nothing cached about children.
    fresh, _, _ = make()
    fresh.kube = kube  # type: ignore[assignment]
    body = kube.service(NS, "svc")
    body["spec"]["monitoring"] = {"serviceMonitor": False}
    kube.objects[("ClaudeCodeService", NS, "svc")] = copy.deepcopy(body)
    fresh.remember_service(body)
    await fresh.reconcile(body)
    assert "ServiceMonitor" not in kube.kinds(NS)


@pytest.mark.asyncio
async def test_a_network_policy_of_someone_else_is_never_taken_over() -> None:
    """A NetworkPolicy the namespace's admin made with the service's name: nothing is
    applied (a NameCollision), and switching ours off does not delete theirs."""
    reconciler, kube, _ = make(service(networkPolicy={"enabled": True}))
    theirs = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "svc", "namespace": NS, "uid": "admins"},
        "spec": {"podSelector": {}},
    }
    kube.objects[("NetworkPolicy", NS, "svc")] = copy.deepcopy(theirs)
    status = await reconciler.reconcile(kube.service(NS, "svc"))
    degraded = [c for c in status["conditions"] if c["type"] == "Degraded"]
    assert degraded[0]["reason"] == "NameCollision", degraded
    assert "NetworkPolicy ns/svc already exists" in degraded[0]["message"]
    assert applies(kube) == 0
    body = kube.service(NS, "svc")
    body["spec"]["networkPolicy"] = {"enabled": False}
    kube.objects[("ClaudeCodeService", NS, "svc")] = copy.deepcopy(body)
    reconciler.remember_service(body)
    await reconciler.reconcile(kube.service(NS, "svc"))
    assert kube.objects[("NetworkPolicy", NS, "svc")]["metadata"]["uid"] == "admins"
    assert not [e for e in kube.log if e[0] == "DELETE"]


@pytest.mark.asyncio
async def test_nothing_is_kept_for_a_deleted_service() -> None:
    """Defect: per-service locks and cold-start records were never pruned on delete."""
    reconciler, kube, _ = make(service())
    await reconciler.reconcile(kube.service(NS, "svc"))
    pod = {
        "metadata": {
            "namespace": NS,
            "name": "svc-1",
            "uid": "pod-1",
            "labels": {"serving.claudecode.io/service": "svc"},
            "creationTimestamp": "2026-01-01T00:00:00Z",
        },
        "status": {
            "conditions": [
                {"type": "Ready", "status": "True", "lastTransitionTime": "2026-01-01T00:01:00Z"}
            ]
        },
    }
    reconciler.observe_pod(pod, initial=False)
    reconciler.queue.add_rate_limited((NS, "svc"))
    reconciler.forget_service((NS, "svc"))
    assert (NS, "svc") not in reconciler._locks
    assert (NS, "svc") not in reconciler.cold_starts
    assert not reconciler.queue._waiting
    assert reconciler.queue.failures((NS, "svc")) == 0


@pytest.mark.asyncio
async def test_a_refused_apply_reports_the_replicas_that_run_not_zero() -> None:
    """Defect: after a rejected apply status said 0 replicas without reading the Deployment,
    and the floor then decided with ready=0."""
    reconciler, kube, _ = make(service())
    await reconciler.reconcile(kube.service(NS, "svc"))
    deployment = kube.objects[("Deployment", NS, "svc")]
    deployment["status"] = {
        "replicas": 2,
        "readyReplicas": 2,
        "updatedReplicas": 2,
        "observedGeneration": deployment["metadata"]["generation"],
    }
    reconciler.children.pop(("Deployment", NS, "svc"))  # e.g. just after a restart
    body = kube.service(NS, "svc")
    body["spec"]["replicas"]["max"] = 5
    body["metadata"]["generation"] = 2
    reconciler.remember_service(body)
    kube.fail["apply"].append(Rejected("admission webhook denied the request: " + "x" * 2000, 400))
    status = await reconciler.reconcile(body)
    assert status["readyReplicas"] == 2 and status["replicas"] == 2
    degraded = next(c for c in status["conditions"] if c["type"] == "Degraded")
    assert degraded["status"] == "True" and degraded["reason"] == "ApplyRejected"
    assert len(degraded["message"]) < 400  # one short sentence; the details are in the log


def test_pods_refused_at_admission_degrade_the_service() -> None:
    """Defect: pods forbidden by admission left the service Progressing, not Degraded."""
    from ccs_operator.core.status import ApplyOutcome, build_status

    deployment = {
        "metadata": {"generation": 1},
        "status": {
            "observedGeneration": 1,
            "replicas": 0,
            "conditions": [
                {
                    "type": "ReplicaFailure",
                    "status": "True",
                    "reason": "FailedCreate",
                    "message": 'pods "svc-1" is forbidden: no PriorityClass with name gpu',
                }
            ],
        },
    }
    from datetime import UTC, datetime

    status = build_status(
        {},
        generation=1,
        outcome=ApplyOutcome(),
        deployment=deployment,
        endpoint={"http": "h", "grpc": "g"},
        now=datetime(2026, 1, 1, tzinfo=UTC),
    )
    degraded = next(c for c in status["conditions"] if c["type"] == "Degraded")
    assert degraded["status"] == "True" and "PriorityClass" in degraded["message"]
    assert status["phase"] == "Degraded"


def _record(fingerprint: str = "f", generation: int = 1, **status: Any) -> ChildRecord:
    return ChildRecord("uid", "owner", "1", generation, fingerprint, status or None)


def test_only_changes_that_matter_trigger_a_reconcile() -> None:
    """Defect: every HPA status change and every Deployment replicas change (the HPA
    scaling) triggered a full render and apply."""
    hpa = "HorizontalPodAutoscaler"
    assert not child_changed(hpa, _record(currentReplicas=2), _record(currentReplicas=3))
    assert child_changed(hpa, _record("f"), _record("g"))  # someone edited its spec
    assert child_changed(hpa, _record(), None)  # deleted
    ready = {"replicas": 2, "readyReplicas": 1}
    assert child_changed("Deployment", _record(**ready), _record(replicas=2, readyReplicas=2))
    assert not child_changed("Deployment", _record(**ready), _record(**ready))
    from ccs_operator.controllers.reconcile import fingerprint

    deployment = {"kind": "Deployment", "metadata": {}, "spec": {"replicas": 2, "x": 1}}
    scaled = {"kind": "Deployment", "metadata": {}, "spec": {"replicas": 5, "x": 1}}
    assert fingerprint(deployment) == fingerprint(scaled)
    edited = {"kind": "Deployment", "metadata": {}, "spec": {"replicas": 2, "x": 2}}
    assert fingerprint(deployment) != fingerprint(edited)


def test_a_status_only_event_of_a_service_is_not_a_reason_to_reconcile() -> None:
    old = {"metadata": {"uid": "u", "generation": 1, "labels": {}}, "status": {"floor": 1}}
    status_only = copy.deepcopy(old)
    status_only["status"]["floor"] = 2
    assert not needs_reconcile(old["metadata"], status_only)
    spec_change = copy.deepcopy(old)
    spec_change["metadata"]["generation"] = 2
    assert needs_reconcile(old["metadata"], spec_change)
    assert needs_reconcile(None, old)


def test_kopf_keeps_no_last_handled_state_and_may_not_need_one() -> None:
    """kopf deep-copied every watched body into a diff base on every event, for change
    handlers; the operator registers only event handlers, so none is built or stored. If a
    change, spawning or state handler is ever registered, this fails (and NoDiffBase must go)."""
    settings = kopf.OperatorSettings()
    configure(settings, OperatorConfig())
    assert isinstance(settings.persistence.diffbase_storage, handlers.NoDiffBase)
    reconciler, _, _ = make()
    registry = handlers.build_registry(reconciler, OperatorConfig())
    assert list(registry._watching.get_all_handlers())  # positive control: it sees handlers
    assert not list(registry._changing.get_all_handlers())
    assert not list(registry._spawning.get_all_handlers())
    body = kopf.Body({"metadata": {"name": "x"}, "spec": {"a": [1, {"b": 2}]}})
    storage = settings.persistence.diffbase_storage
    assert storage.build(body=body) == {} and storage.fetch(body=body) is None


def test_no_service_is_handled_before_every_child_kind_is_listed() -> None:
    """Defect: the kopf-watched child kinds counted as watched from the start, so a reconcile
    right after a restart (before kopf had listed, say, the ConfigMaps) took a child it had
    not seen yet for absent and applied it again (5 of 20 ConfigMaps in the scale bench
    under load). kopf holds all handlers until every kind with an index handler is listed:
    each child kind it watches has one."""
    reconciler, _, _ = make()
    registry = handlers.build_registry(reconciler, OperatorConfig())
    watched = {h.id for h in registry._watching.get_all_handlers()}
    children = [plural for _, _, _, plural in handlers.watched_children()]
    assert children and {f"watch-{p}" for p in children} <= watched  # positive control
    indexed = {h.id for h in registry._indexing.get_all_handlers()}
    assert indexed == {f"listed-{p}" for p in children}


def test_watches_are_filtered_on_the_server() -> None:
    """Defect: `labels=` on kopf handlers filters on the client; the operator listed and
    watched every Pod, ConfigMap, Service, Deployment and HPA of the cluster."""
    settings = kopf.OperatorSettings()
    configure(settings, OperatorConfig())
    from kopf._cogs.structs.references import Resource

    for group, version, plural in [
        ("", "v1", "pods"),
        ("", "v1", "configmaps"),
        ("", "v1", "services"),
        ("apps", "v1", "deployments"),
        ("autoscaling", "v2", "horizontalpodautoscalers"),
        ("networking.k8s.io", "v1", "networkpolicies"),
    ]:
        resource = Resource(group, version, plural)
        assert list(settings.watching.label_selectors.collect(resource)) == [MANAGED_BY_SELECTOR]
    # The services themselves are watched whole.
    ours = Resource("serving.claudecode.io", "v1alpha1", "claudecodeservices")
    assert not list(settings.watching.label_selectors.collect(ours))
    assert {kind for kind, *_ in handlers.watched_children()} == {
        "ConfigMap",
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "NetworkPolicy",
    }
    # ServiceMonitors: the operator's own watch, with the same selector (tests/test_watch.py).
    reconciler, _, _ = make()
    (watch,) = handlers.own_watches(reconciler, "ServiceMonitor", OperatorConfig())
    assert watch.label_selector == MANAGED_BY_SELECTOR and watch.namespace is None
    scoped = handlers.own_watches(
        reconciler, "ServiceMonitor", OperatorConfig(namespaces=("team-a", "team-b"))
    )
    assert [w.namespace for w in scoped] == ["team-a", "team-b"]


def restarted(kube: FakeKube) -> Reconciler:
    """A fresh operator process: its watches list the children, the cache knows nothing of
    its predecessor's applies."""
    fresh, _, _ = make()
    fresh.kube = kube  # type: ignore[assignment]
    for (kind, _, _), body in kube.objects.items():
        if kind == "ClaudeCodeService":
            fresh.remember_service(copy.deepcopy(body))
        elif kind in fresh.watched_kinds:
            fresh.remember_child(kind, copy.deepcopy(body), deleted=False)
    return fresh


@pytest.mark.asyncio
async def test_after_a_restart_only_drifted_children_are_applied() -> None:
    """Defect: the no-op skip-cache was memory-only, so every restart re-applied 5 children
    per service (5,000 applies at 1000 services)."""
    reconciler, kube, _ = make(service())
    await reconciler.reconcile(kube.service(NS, "svc"))
    assert applies(kube) == 5
    # What other controllers do that is no drift: the Deployment controller's revision
    # annotation, the HPA scaling through /scale, status writes.
    kube.edit(
        "Deployment",
        NS,
        "svc",
        {"metadata": {"annotations": {"deployment.kubernetes.io/revision": "1"}}},
        manager="kube-controller-manager",
        fields={
            "f:metadata": {"f:annotations": {".": {}, "f:deployment.kubernetes.io/revision": {}}}
        },
    )
    kube.edit(
        "Deployment",
        NS,
        "svc",
        {"spec": {"replicas": 3}},
        manager="kube-controller-manager",
        subresource="scale",
    )
    kube.edit(
        "HorizontalPodAutoscaler",
        NS,
        "svc",
        {"status": {"currentReplicas": 3}},
        manager="kube-controller-manager",
        subresource="status",
    )
    fresh = restarted(kube)
    await fresh.reconcile(kube.service(NS, "svc"))
    assert applies(kube) == 5  # nothing re-applied, the ServiceMonitor read once instead
    # A hand edit of the ConfigMap while no operator ran: exactly that child is applied.
    kube.edit(
        "ConfigMap",
        NS,
        "svc-model-config",
        {"data": {"config.pbtxt": "tampered"}},
        fields={"f:data": {"f:config.pbtxt": {}}},
    )
    again = restarted(kube)
    await again.reconcile(kube.service(NS, "svc"))
    assert applies(kube) == 6
    assert [e[1] for e in kube.log if e[0] == "APPLY"][-1] == "ConfigMap"
    assert kube.objects[("ConfigMap", NS, "svc-model-config")]["data"]["config.pbtxt"] != "tampered"


@pytest.mark.asyncio
async def test_the_resync_repairs_what_a_watch_gap_hid() -> None:
    """Defect: a child deleted during a watch gap (a relist after 410 Gone sends no DELETED)
    stayed in the cache, so every reconcile, the resync's too, skipped re-creating it."""
    reconciler, kube, _ = make(service())
    await reconciler.reconcile(kube.service(NS, "svc"))
    del kube.objects[("Service", NS, "svc")]  # gone, and the watch never said so
    await reconciler.reconcile(kube.service(NS, "svc"))
    assert "Service" not in kube.kinds(NS)  # an event-triggered pass trusts the cache
    stop = asyncio.Event()
    resync = asyncio.create_task(reconciler.resync(stop, interval=0.05))
    reconciler.workers.start()
    try:
        await asyncio.sleep(0.2)
        await settle(reconciler)
    finally:
        stop.set()
        await resync
        await reconciler.workers.stop()
    assert "Service" in kube.kinds(NS)
    assert applies(kube, "Service") == 2 and applies(kube) == 6  # only the missing one


async def resync_rounds(reconciler: Reconciler, seconds: float = 0.2) -> None:
    """Let the periodic resync run (a round every 50 ms; the workers run), then settle."""
    stop = asyncio.Event()
    resync = asyncio.create_task(reconciler.resync(stop, interval=0.05))
    try:
        await asyncio.sleep(seconds)
    finally:
        stop.set()
        await resync
    await settle(reconciler)


def reads(kube: FakeKube, verb: str) -> list[str]:
    return [kind for v, kind, _, _ in kube.log if v == verb]


@pytest.mark.asyncio
async def test_the_resync_reads_metadata_and_reads_whole_only_what_moved() -> None:
    """Defect: the resync read every child back whole, 5 GETs of full objects per service
    per round (the operator's main CPU cost at 1000 services), to find what a watch gap
    hid. Unchanged children now cost one metadata read each."""
    reconciler, kube, _ = make(service())
    await reconciler.reconcile(kube.service(NS, "svc"))
    assert reads(kube, "GET") == []  # the names' owners (collisions) are metadata too
    kube.log.clear()
    reconciler.workers.start()
    try:
        await resync_rounds(reconciler)
        children = {"ConfigMap", "Deployment", "Service", "HorizontalPodAutoscaler"}
        assert set(reads(kube, "GET_METADATA")) == children | {"ServiceMonitor"}
        assert reads(kube, "GET") == [] and applies(kube) == 0
        # Writes the watch did not deliver (a gap): a hand edit of the ConfigMap and of the
        # unwatched ServiceMonitor, and an HPA status write (no drift).
        kube.edit(
            "ConfigMap",
            NS,
            "svc-model-config",
            {"data": {"config.pbtxt": "tampered"}},
            fields={"f:data": {"f:config.pbtxt": {}}},
        )
        kube.edit("ServiceMonitor", NS, "svc", {"spec": {"endpoints": []}})
        kube.edit(
            "HorizontalPodAutoscaler",
            NS,
            "svc",
            {"status": {"currentReplicas": 3}},
            manager="kube-controller-manager",
            subresource="status",
        )
        kube.log.clear()
        await resync_rounds(reconciler)
    finally:
        await reconciler.workers.stop()
    # Each moved child is read whole once (later rounds find the version they cached), and
    # only the drifted ones are applied.
    assert sorted(reads(kube, "GET")) == ["ConfigMap", "HorizontalPodAutoscaler", "ServiceMonitor"]
    assert sorted(reads(kube, "APPLY")) == ["ConfigMap", "ServiceMonitor"]
    assert kube.objects[("ConfigMap", NS, "svc-model-config")]["data"]["config.pbtxt"] != "tampered"
    assert kube.objects[("ServiceMonitor", NS, "svc")]["spec"]["endpoints"]


@pytest.mark.asyncio
async def test_a_namespace_being_deleted_is_not_retried_or_reported() -> None:
    reconciler, kube, events = make(service())
    kube.fail["apply"].append(
        Rejected(
            'configmaps "svc-model-config" is forbidden: unable to create new content in '
            "namespace ns because it is being terminated",
            403,
        )
    )
    reconciler.workers.start()
    try:
        reconciler.enqueue((NS, "svc"))
        await settle(reconciler)
    finally:
        await reconciler.workers.stop()
    assert kube.calls["apply"] == 1 and not events.posted


def deliver(reconciler: Reconciler, kube: FakeKube, kind: str, name: str, type_: str) -> None:
    """What the child's watch hands the reconciler after a write: the object as it is now."""
    reconciler.child_event(kind, type_, copy.deepcopy(kube.objects[(kind, NS, name)]))


def revision(kube: FakeKube, name: str, number: int) -> None:
    """The Deployment controller's write of its revision annotation on a rollout."""
    kube.edit(
        "Deployment",
        NS,
        name,
        {"metadata": {"annotations": {"deployment.kubernetes.io/revision": str(number)}}},
        manager="kube-controller-manager",
        fields={
            "f:metadata": {"f:annotations": {".": {}, "f:deployment.kubernetes.io/revision": {}}}
        },
    )


@pytest.mark.asyncio
async def test_a_rollout_costs_one_deployment_apply() -> None:
    """Defect (issue 14): the Deployment controller's revision annotation was part of the
    child's fingerprint, so its write after every rollout read as drift: one more reconcile
    and one more Deployment apply per rollout."""
    reconciler, kube, _ = make(service())
    reconciler.workers.start()
    try:
        reconciler.queue.add((NS, "svc"))
        await settle(reconciler)
        for kind, name in [
            ("ConfigMap", "svc-model-config"),
            ("Deployment", "svc"),
            ("Service", "svc"),
            ("HorizontalPodAutoscaler", "svc"),
        ]:
            deliver(reconciler, kube, kind, name, "ADDED")
        revision(kube, "svc", 1)
        deliver(reconciler, kube, "Deployment", "svc", "MODIFIED")
        await settle(reconciler)
        assert applies(kube, "Deployment") == 1
        # A spec change that rolls the pods: one apply, then the watch shows our write and
        # the controller's new revision.
        body = kube.service(NS, "svc")
        body["spec"]["priorityClassName"] = "inference"
        body["metadata"]["generation"] = 2
        kube.objects[("ClaudeCodeService", NS, "svc")] = copy.deepcopy(body)
        reconciler.remember_service(body)
        reconciler.queue.add((NS, "svc"))
        await settle(reconciler)
        assert applies(kube, "Deployment") == 2
        deployment = kube.objects[("Deployment", NS, "svc")]
        assert deployment["spec"]["template"]["spec"]["priorityClassName"] == "inference"
        deliver(reconciler, kube, "Deployment", "svc", "MODIFIED")
        revision(kube, "svc", 2)
        deliver(reconciler, kube, "Deployment", "svc", "MODIFIED")
        await settle(reconciler)
        reconciler.queue.add((NS, "svc"))  # and a resync-style pass on top
        await settle(reconciler)
        assert applies(kube, "Deployment") == 2
        # A hand edit of a label we set is drift still: applied back at once.
        kube.edit(
            "Deployment",
            NS,
            "svc",
            {"metadata": {"labels": {"app.kubernetes.io/component": "tampered"}}},
            fields={"f:metadata": {"f:labels": {"f:app.kubernetes.io/component": {}}}},
        )
        deliver(reconciler, kube, "Deployment", "svc", "MODIFIED")
        await settle(reconciler)
    finally:
        await reconciler.workers.stop()
    assert applies(kube, "Deployment") == 3
    labels = kube.objects[("Deployment", NS, "svc")]["metadata"]["labels"]
    assert labels["app.kubernetes.io/component"] == "inference"


@pytest.mark.asyncio
async def test_a_refused_apply_reads_the_deployment_whole_only_if_it_is_ours_and_once() -> None:
    """Defect (issue 14): after a refused apply the Deployment missing from the cache was read
    whole (spec and pod template included) on every reconcile, even when it did not exist."""
    reconciler, kube, _ = make(service())
    kube.fail["apply"].append(Rejected("admission webhook denied the request", 400))
    status = await reconciler.reconcile(kube.service(NS, "svc"))  # the ConfigMap is refused
    assert status["replicas"] == 0
    assert reads(kube, "GET") == [] and "Deployment" in reads(kube, "GET_METADATA")
    # Now it exists and runs, and the cache lost it (e.g. just after a restart).
    await reconciler.reconcile(kube.service(NS, "svc"))
    kube.objects[("Deployment", NS, "svc")]["status"] = {"replicas": 2, "readyReplicas": 2}
    reconciler.children.pop(("Deployment", NS, "svc"))
    kube.log.clear()
    for _ in range(3):
        kube.fail["apply"].append(Rejected("admission webhook denied the request", 400))
        status = await reconciler.reconcile(kube.service(NS, "svc"))
        assert status["readyReplicas"] == 2
    assert reads(kube, "GET") == ["Deployment"]  # read whole once, then from the cache


@pytest.mark.asyncio
async def test_a_service_monitor_switched_off_is_found_from_metadata_or_the_watch() -> None:
    """Defect (issue 14): a ServiceMonitor this process had not applied was read whole to
    learn its owner; its metadata says that, and once ServiceMonitors are watched the cache
    does (nothing is read)."""
    reconciler, kube, _ = make(service())
    await reconciler.reconcile(kube.service(NS, "svc"))
    body = kube.service(NS, "svc")
    body["spec"]["monitoring"] = {"serviceMonitor": False}
    kube.objects[("ClaudeCodeService", NS, "svc")] = copy.deepcopy(body)
    fresh = restarted(kube)
    kube.log.clear()
    await fresh.reconcile(body)
    assert "ServiceMonitor" not in kube.kinds(NS)
    assert "ServiceMonitor" in reads(kube, "GET_METADATA") and reads(kube, "GET") == []
    # With the ServiceMonitor watch listed, the cache is the answer: no read at all.
    watching = restarted(kube)
    watching.watched_kinds.add("ServiceMonitor")
    kube.log.clear()
    await watching.reconcile(body)
    assert "ServiceMonitor" not in {kind for _, kind, _, _ in kube.log}
