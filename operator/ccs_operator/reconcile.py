"""One level-based reconcile: make a service's children match its spec, then report status.

Create, update, resume, periodic resync and child events all end here. The reconcile renders
the full desired set (pure), refuses to touch objects it does not own, server-side applies the
rest, and writes status once, only if it changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from . import metrics
from .api import KIND, ClaudeCodeService, SpecError, parse_service
from .coldstart import ColdStartWindow, pod_cold_start
from .kube import CHILD_TYPES, KubeClient, KubeError, NotFound, Rejected, Transient
from .render import SERVICE_LABEL, ChildNames, RenderSettings, render_children
from .status import (
    DEGRADED,
    MONITORING,
    READY,
    ApplyOutcome,
    Condition,
    build_status,
    merge_conditions,
    status_patch,
)

log = logging.getLogger(__name__)

ServiceKey = tuple[str, str]  # (namespace, name)
ChildKey = tuple[str, str, str]  # (kind, namespace, name)


class EventSink(Protocol):
    def __call__(self, body: Mapping[str, Any], type_: str, reason: str, message: str) -> None: ...


class RetryLater(Exception):
    """The API server was unreachable or overloaded; the caller retries after `delay`."""

    def __init__(self, message: str, delay: float = 10.0) -> None:
        super().__init__(message)
        self.delay = delay


# Children whose status the operator reads from its watch cache.
STATUS_KINDS = frozenset({"Deployment", "HorizontalPodAutoscaler"})


class InvalidSpec(Exception):
    """The spec cannot be rendered; nothing was applied and status says why."""


@dataclass(frozen=True)
class ChildRecord:
    uid: str
    owner_uid: str | None
    resource_version: str
    generation: int | None
    # What the object says to anyone applying it (see `fingerprint`); status excluded.
    fingerprint: str = ""
    # Deployments: the status the reconcile reports readiness from; HPAs: the status the
    # floor's accounting reads what the HPA alone would run from.
    status: Mapping[str, Any] | None = None

    def workload(self) -> dict[str, Any]:
        """The slice of a Deployment that status.build_status reads."""
        return {"metadata": {"generation": self.generation}, "status": dict(self.status or {})}


def fingerprint(body: Mapping[str, Any]) -> str:
    """A digest of everything an apply of ours could change: labels, annotations, owners,
    spec, data. Status and bookkeeping (resourceVersion, managedFields) are left out, so a
    controller's status write does not count as a change."""
    meta = body.get("metadata") or {}
    content = {
        "labels": meta.get("labels"),
        "annotations": meta.get("annotations"),
        "ownerReferences": meta.get("ownerReferences"),
        "spec": body.get("spec"),
        "data": body.get("data"),
    }
    return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()


def manifest_digest(manifest: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(manifest, sort_keys=True, default=str).encode()).hexdigest()


def controller_uid(body: Mapping[str, Any]) -> str | None:
    for ref in body.get("metadata", {}).get("ownerReferences") or ():
        if ref.get("controller") and ref.get("kind") == KIND:
            return str(ref.get("uid"))
    return None


def controller_name(body: Mapping[str, Any]) -> str | None:
    for ref in body.get("metadata", {}).get("ownerReferences") or ():
        if ref.get("controller") and ref.get("kind") == KIND:
            return str(ref.get("name"))
    return None


def endpoints(ccs: ClaudeCodeService) -> dict[str, str]:
    host = f"{ChildNames.of(ccs.name).service}.{ccs.namespace}.svc"
    return {
        "http": f"http://{host}:{ccs.spec.ports.http}",
        "grpc": f"{host}:{ccs.spec.ports.grpc}",
    }


class Reconciler:
    """Reconciles services; one at a time per service, requests coalesced while one runs."""

    def __init__(
        self,
        kube: KubeClient,
        settings: RenderSettings,
        post_event: EventSink,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.kube = kube
        self.settings = settings
        self.post_event = post_event
        self.clock = clock
        self.services: dict[ServiceKey, dict[str, Any]] = {}
        self.children: dict[ChildKey, ChildRecord] = {}
        # Per child: (digest of the manifest we last applied, the child's fingerprint that
        # apply returned). While both still hold, applying again is a no-op: skip the request.
        self.applied: dict[ChildKey, tuple[str, str]] = {}
        # Kinds whose watch keeps `children` current (handlers registers them). Others are
        # read back before an apply is skipped.
        self.watched_kinds: set[str] = set()
        self.cold_starts: dict[ServiceKey, ColdStartWindow] = {}
        self._locks: dict[ServiceKey, asyncio.Lock] = {}
        self._queued: dict[ServiceKey, asyncio.Task[None]] = {}
        self._cold_start_writes: dict[ServiceKey, asyncio.Task[None]] = {}

    # -- caches fed by watch events -------------------------------------------------------
    def remember_service(self, body: Mapping[str, Any]) -> None:
        """Keep the newest copy of a service (watch events and our own writes race)."""
        meta = body["metadata"]
        key = (meta["namespace"], meta["name"])
        known = self.services.get(key)
        if known is None or not _older(meta, known["metadata"]):
            self.services[key] = dict(body)
            _export_conditions(key, (body.get("status") or {}).get("conditions") or ())
        metrics.SERVICES.set(len(self.services))

    def forget_service(self, key: ServiceKey) -> None:
        self.services.pop(key, None)
        metrics.SERVICES.set(len(self.services))
        self.cold_starts.pop(key, None)
        for gauge in (
            metrics.FLOOR,
            metrics.FLOOR_MAX,
            metrics.FLOOR_DEMAND,
            metrics.FLOOR_FORECAST,
            metrics.FLOOR_FORECAST_ERROR,
            metrics.FLOOR_HEADROOM,
            metrics.FLOOR_CAPACITY,
            metrics.FLOOR_ABOVE_HPA,
            metrics.FLOOR_BREACH,
            metrics.QUEUE_LATENCY,
            metrics.COLD_START_P50,
            metrics.COLD_START_P95,
        ):
            with contextlib.suppress(KeyError):
                gauge.remove(*key)
        for state in ("Off", "NoHistory", "Unsized", "Active", "Gated"):
            with contextlib.suppress(KeyError):
                metrics.FLOOR_PREWARM.remove(*key, state)
        _export_conditions(key, ())

    def remember_child(self, kind: str, body: Mapping[str, Any], deleted: bool) -> None:
        meta = body["metadata"]
        key = (kind, meta["namespace"], meta["name"])
        if deleted:
            self.children.pop(key, None)
            self.applied.pop(key, None)
        else:
            self.children[key] = ChildRecord(
                uid=meta["uid"],
                owner_uid=controller_uid(body),
                resource_version=meta["resourceVersion"],
                generation=meta.get("generation"),
                fingerprint=fingerprint(body),
                status=body.get("status") if kind in STATUS_KINDS else None,
            )

    def observe_pod(self, pod: Mapping[str, Any], initial: bool) -> None:
        """Count a serving pod's cold start once it is Ready; store the summary in status.

        `initial` marks the watch's first listing (an operator start): those pods are
        counted, but a summary already in status (with more history than the live pods
        hold) is only replaced once a new replica adds a sample.
        """
        meta = pod.get("metadata") or {}
        service = (meta.get("labels") or {}).get(SERVICE_LABEL)
        sample = pod_cold_start(pod)
        if not service or sample is None:
            return
        key = (meta["namespace"], service)
        window = self.cold_starts.setdefault(key, ColdStartWindow())
        if not window.add(sample):
            return
        metrics.COLD_START.observe(sample.total)
        summary = window.summary() or {}
        metrics.COLD_START_P50.labels(*key).set(summary.get("p50Seconds", 0))
        metrics.COLD_START_P95.labels(*key).set(summary.get("p95Seconds", 0))
        stored = ((self.services.get(key) or {}).get("status") or {}).get("coldStart")
        if initial and stored and stored.get("samples", 0) > len(window):
            return
        if key not in self._cold_start_writes or self._cold_start_writes[key].done():
            self._cold_start_writes[key] = asyncio.get_running_loop().create_task(
                self._write_cold_start(key)
            )

    async def _write_cold_start(self, key: ServiceKey, settle: float = 1.0) -> None:
        # Pods of one scale-up turn Ready together: one status write for the lot.
        await asyncio.sleep(settle)
        window = self.cold_starts.get(key)
        async with self.lock(key):
            body = self.services.get(key)
            if body is None or window is None:
                return
            current = dict(body.get("status") or {})
            try:
                await self._write_status(body, current, {**current, "coldStart": window.summary()})
            except RetryLater as exc:
                log.info("cold start of %s/%s not stored yet: %s", *key, exc)

    # -- scheduling -----------------------------------------------------------------------
    def lock(self, key: ServiceKey) -> asyncio.Lock:
        """Serialises everything that writes a service's status (reconcile, floor loop)."""
        return self._locks.setdefault(key, asyncio.Lock())

    def enqueue(self, key: ServiceKey, delay: float = 0.2) -> None:
        """Reconcile a service soon; repeated requests coalesce into one reconcile."""
        if key in self._queued and not self._queued[key].done():
            return

        async def run() -> None:
            # Let a burst of events for the same service settle into one reconcile.
            await asyncio.sleep(delay)
            self._queued.pop(key, None)
            body = self.services.get(key)
            if body is None:
                return
            try:
                await self.reconcile(body)
            except (RetryLater, InvalidSpec) as exc:
                log.info("deferred reconcile of %s/%s: %s", *key, exc)

        self._queued[key] = asyncio.get_running_loop().create_task(run())

    async def resync(self, stop: asyncio.Event, interval: float) -> None:
        """Drift-repair backstop: every service is reconciled once per `interval`, spread
        evenly over it so a large fleet never resyncs in one burst."""
        while not stop.is_set():
            keys: list[ServiceKey | None] = [*self.services] or [None]
            for key in keys:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=interval / len(keys))
                if stop.is_set():
                    return
                if key is not None and key in self.services:
                    self.enqueue(key, delay=0.0)

    # -- the reconcile --------------------------------------------------------------------
    async def reconcile(self, body: Mapping[str, Any]) -> dict[str, Any]:
        meta = body["metadata"]
        key = (meta["namespace"], meta["name"])
        async with self.lock(key):
            started = time.perf_counter()
            try:
                status = await self._reconcile_locked(self.services.get(key, body))
            except InvalidSpec:
                metrics.RECONCILES.labels("invalid").inc()
                raise
            except RetryLater:
                metrics.RECONCILES.labels("retry").inc()
                raise
            finally:
                metrics.RECONCILE_DURATION.observe(time.perf_counter() - started)
            metrics.RECONCILES.labels("ok").inc()
            return status

    async def _reconcile_locked(self, body: Mapping[str, Any]) -> dict[str, Any]:
        meta = body["metadata"]
        current = dict(body.get("status") or {})
        try:
            ccs = parse_service(body)
        except SpecError as exc:
            await self._report_invalid(body, current, exc)
            raise InvalidSpec(str(exc)) from exc

        sm_crd = await self._served_or_retry()
        settings = RenderSettings(
            loader_image=self.settings.loader_image, service_monitor_crd=sm_crd
        )
        desired = render_children(ccs, floor=current.get("floor"), settings=settings)

        collisions = await self._foreign_objects(ccs, desired)
        deployment: dict[str, Any] | None = None
        if collisions:
            outcome = ApplyOutcome(
                problem=Condition(
                    DEGRADED,
                    True,
                    "NameCollision",
                    "; ".join(collisions) + ". Nothing was applied: delete or rename the existing "
                    "object, or rename this ClaudeCodeService",
                )
            )
            metrics.RECONCILE_ERRORS.labels("NameCollision").inc()
        else:
            outcome, deployment = await self._apply_all(body, ccs, desired)
        if outcome.monitoring is None:
            outcome = ApplyOutcome(
                problem=outcome.problem,
                monitoring=self._monitoring_condition(ccs, sm_crd),
            )

        new_status = build_status(
            current,
            generation=meta.get("generation"),
            outcome=outcome,
            deployment=deployment,
            endpoint=endpoints(ccs),
            now=self.clock(),
        )
        await self._write_status(body, current, new_status)
        return new_status

    async def _served_or_retry(self) -> bool:
        try:
            return await self.kube.served("monitoring.coreos.com/v1", "servicemonitors")
        except Transient as exc:
            raise RetryLater(f"API discovery failed: {exc}") from exc
        except KubeError as exc:
            log.warning("cannot discover ServiceMonitor support, assuming absent: %s", exc)
            return False

    def _monitoring_condition(self, ccs: ClaudeCodeService, sm_crd: bool) -> Condition:
        if not ccs.spec.monitoring.service_monitor:
            return Condition(
                MONITORING, False, "Disabled", "spec.monitoring.serviceMonitor is false"
            )
        if not sm_crd:
            return Condition(
                MONITORING,
                False,
                "ServiceMonitorCRDMissing",
                "the monitoring.coreos.com/v1 ServiceMonitor CRD is not installed, so Triton's "
                "metrics are not scraped through the Prometheus Operator; install it (for "
                "example with kube-prometheus-stack) or set spec.monitoring.serviceMonitor: "
                "false to silence this",
            )
        return Condition(MONITORING, True, "ServiceMonitorApplied", "Triton metrics are scraped")

    async def _foreign_objects(
        self, ccs: ClaudeCodeService, desired: list[dict[str, Any]]
    ) -> list[str]:
        """Children whose names are taken by objects this service does not control."""
        foreign = []
        for manifest in desired:
            kind, name = manifest["kind"], manifest["metadata"]["name"]
            known = self.children.get((kind, ccs.namespace, name))
            if known is not None and known.owner_uid == ccs.uid:
                continue
            try:
                live = await self.kube.get(kind, ccs.namespace, name)
            except Transient as exc:
                raise RetryLater(str(exc)) from exc
            if live is not None and controller_uid(live) != ccs.uid:
                owner = controller_name(live)
                whose = f"ClaudeCodeService {owner}" if owner else "nobody we know"
                foreign.append(
                    f"{kind} {ccs.namespace}/{name} already exists and belongs to {whose}"
                )
        return foreign

    async def _apply_all(
        self, body: Mapping[str, Any], ccs: ClaudeCodeService, desired: list[dict[str, Any]]
    ) -> tuple[ApplyOutcome, dict[str, Any] | None]:
        deployment = None
        started = self.clock()
        for manifest in desired:
            kind = manifest["kind"]
            name = manifest["metadata"]["name"]
            key = (kind, ccs.namespace, name)
            previous = self.children.get(key)
            digest = manifest_digest(manifest)
            if previous is not None and await self._unchanged(key, digest, previous):
                # Same manifest as our last apply, and nobody changed the child since: the
                # apply would be a no-op, so it is not sent.
                metrics.APPLIES_SKIPPED.labels(kind).inc()
                if kind == "Deployment":
                    deployment = previous.workload()
                continue
            metrics.APPLY_REQUESTS.labels(kind).inc()
            try:
                live = await self.kube.apply(manifest)
            except NotFound as exc:
                if kind != "ServiceMonitor":
                    raise RetryLater(f"applying {kind} {name}: {exc}") from exc
                # The CRD went away since discovery was cached: monitoring is off, not broken.
                self.kube.forget_discovery()
                monitoring = self._monitoring_condition(ccs, sm_crd=False)
                return ApplyOutcome(monitoring=monitoring), deployment
            except Transient as exc:
                metrics.RECONCILE_ERRORS.labels("Transient").inc()
                raise RetryLater(f"applying {kind} {name}: {exc}") from exc
            except (Rejected, KubeError) as exc:
                metrics.RECONCILE_ERRORS.labels("ApplyRejected").inc()
                message = (
                    f"the API server refused {kind} {ccs.namespace}/{name}: {exc}; "
                    "the other children are left as they were"
                )
                self.post_event(body, "Warning", "ApplyRejected", message)
                return ApplyOutcome(problem=Condition(DEGRADED, True, "ApplyRejected", message)), (
                    deployment
                )
            self.remember_child(kind, live, deleted=False)
            self.applied[key] = (digest, self.children[key].fingerprint)
            verb = _what_changed(previous, live, since=started)
            if verb is not None:
                metrics.CHILDREN_APPLIED.labels(kind).inc()
                self.post_event(body, "Normal", verb, f"{verb} {kind} {name}")
            if kind == "Deployment":
                deployment = live
        await self._prune_service_monitor(ccs, desired)
        return ApplyOutcome(), deployment

    async def _unchanged(self, key: ChildKey, digest: str, known: ChildRecord) -> bool:
        """Whether the child still is exactly what our last apply of `digest` left."""
        applied = self.applied.get(key)
        if applied is None or applied[0] != digest:
            return False
        if key[0] in self.watched_kinds:
            return applied[1] == known.fingerprint  # the watch updates the fingerprint
        try:  # not watched: one read instead of a write
            live = await self.kube.get(*key)
        except Transient as exc:
            raise RetryLater(str(exc)) from exc
        return live is not None and fingerprint(live) == applied[1]

    async def _prune_service_monitor(
        self, ccs: ClaudeCodeService, desired: list[dict[str, Any]]
    ) -> None:
        """A ServiceMonitor switched off in the spec is deleted (only if it is ours)."""
        if any(m["kind"] == "ServiceMonitor" for m in desired):
            return
        name = ChildNames.of(ccs.name).service_monitor
        known = self.children.get(("ServiceMonitor", ccs.namespace, name))
        if known is not None and known.owner_uid == ccs.uid:
            await self.kube.delete("ServiceMonitor", ccs.namespace, name, known.uid)

    async def _report_invalid(
        self, body: Mapping[str, Any], current: dict[str, Any], exc: SpecError
    ) -> None:
        message = f"{exc}. Fix the field; nothing was changed in the cluster"
        conditions = merge_conditions(
            current.get("conditions"),
            [
                Condition(READY, False, "InvalidSpec", message),
                Condition(DEGRADED, True, "InvalidSpec", message),
            ],
            body["metadata"].get("generation"),
            self.clock(),
        )
        new_status = {
            **current,
            "conditions": conditions,
            "observedGeneration": body["metadata"].get("generation"),
            "phase": "Degraded",
        }
        if await self._write_status(body, current, new_status):
            self.post_event(body, "Warning", "InvalidSpec", message)
        metrics.RECONCILE_ERRORS.labels("InvalidSpec").inc()

    async def _write_status(
        self, body: Mapping[str, Any], current: dict[str, Any], new_status: dict[str, Any]
    ) -> bool:
        patch = status_patch(current, new_status)
        if not patch:
            return False
        meta = body["metadata"]
        try:
            written = await self.kube.patch_service_status(meta["namespace"], meta["name"], patch)
        except Transient as exc:
            raise RetryLater(f"writing status: {exc}") from exc
        except KubeError as exc:
            log.warning("status of %s/%s not written: %s", meta["namespace"], meta["name"], exc)
            return False
        metrics.STATUS_WRITES.inc()
        self.remember_service(written)
        self._announce_transitions(body, current, new_status)
        return True

    def _announce_transitions(
        self, body: Mapping[str, Any], before: Mapping[str, Any], after: Mapping[str, Any]
    ) -> None:
        old = {c["type"]: c for c in before.get("conditions") or ()}
        for condition in after.get("conditions") or ():
            previous = old.get(condition["type"])
            if previous and previous["status"] == condition["status"]:
                continue
            if condition["type"] == READY and condition["status"] == "True":
                self.post_event(body, "Normal", "Ready", condition["message"])
            elif condition["type"] == DEGRADED and condition["status"] == "True":
                self.post_event(body, "Warning", condition["reason"], condition["message"])
            elif condition["type"] == MONITORING and condition["status"] == "False":
                self.post_event(
                    body,
                    "Warning" if condition["reason"] != "Disabled" else "Normal",
                    condition["reason"],
                    condition["message"],
                )


def _export_conditions(key: ServiceKey, conditions: Any) -> None:
    """ccs_service_condition{type,status}: 1 on the current status, for alerts."""
    current = {c["type"]: c["status"] for c in conditions}
    for type_ in (READY, DEGRADED, "Progressing", MONITORING, "FloorControllerActive"):
        for value in ("True", "False", "Unknown"):
            if type_ in current:
                metrics.SERVICE_CONDITION.labels(*key, type_, value).set(
                    1 if current[type_] == value else 0
                )
            else:
                with contextlib.suppress(KeyError):
                    metrics.SERVICE_CONDITION.remove(*key, type_, value)


def _older(meta: Mapping[str, Any], than: Mapping[str, Any]) -> bool:
    """Whether `meta` is an older version of the same object than `than`."""
    if meta.get("uid") != than.get("uid"):
        return False
    mine, theirs = str(meta.get("resourceVersion", "")), str(than.get("resourceVersion", ""))
    # Resource versions are opaque, but etcd-backed servers issue increasing integers.
    return mine.isdigit() and theirs.isdigit() and int(mine) < int(theirs)


def _what_changed(
    previous: ChildRecord | None, live: Mapping[str, Any], since: datetime
) -> str | None:
    """'Created' or 'Updated' when our apply changed the child, None when it was a no-op."""
    meta = live["metadata"]
    if previous is None:
        created = datetime.strptime(meta["creationTimestamp"], "%Y-%m-%dT%H:%M:%SZ")
        # Timestamps have one-second resolution; anything older existed before this apply.
        return (
            "Created" if created.replace(tzinfo=UTC).timestamp() >= since.timestamp() - 1 else None
        )
    if meta.get("generation") is not None and previous.generation is not None:
        return "Updated" if meta["generation"] != previous.generation else None
    return "Updated" if meta["resourceVersion"] != previous.resource_version else None


CHILD_KINDS = tuple(CHILD_TYPES)
