"""One level-based reconcile: make a service's children match its spec, then report status.

Every trigger (the service's own events, child events, pod readiness, floor changes, the
periodic resync) only adds the service's key to one rate-limited work queue; workers take keys
from it and run the reconcile, one worker per key at a time. The reconcile renders the full
desired set (pure), refuses to touch objects it does not own, server-side applies the rest,
and writes status once, only if it changed. Every error is retried with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from ccs_operator import metrics
from ccs_operator.clients.kube import (
    FIELD_MANAGER,
    KubeClient,
    KubeError,
    NotFound,
    Rejected,
    Transient,
)
from ccs_operator.controllers.bodystore import BodyStore
from ccs_operator.controllers.workqueue import Permanent, Requeue, Result, Workers, WorkQueue
from ccs_operator.core.api import API_GROUP, KIND, ClaudeCodeService, SpecError, parse_service
from ccs_operator.core.coldstart import ColdStartWindow, pod_cold_start
from ccs_operator.core.render import (
    AUTOSCALER_KINDS,
    KEDA_API_VERSION,
    SCALED_OBJECT_KIND,
    SERVICE_LABEL,
    ChildNames,
    RenderSettings,
    autoscaler_min_replicas,
    render_children,
)
from ccs_operator.core.status import (
    DEGRADED,
    MONITORING,
    READY,
    RECONCILE_STATUS,
    SCALED_TO_ZERO,
    ApplyOutcome,
    Condition,
    build_status,
    merge_conditions,
)

log = logging.getLogger(__name__)

ServiceKey = tuple[str, str]  # (namespace, name)
ChildKey = tuple[str, str, str]  # (kind, namespace, name)


class EventSink(Protocol):
    def __call__(self, body: Mapping[str, Any], type_: str, reason: str, message: str) -> None: ...


class RetryLater(Requeue):
    """The API server was unreachable or overloaded; retried with backoff, never sooner than
    the server's Retry-After (`after`)."""

    @classmethod
    def of(cls, what: str, exc: KubeError) -> RetryLater:
        return cls(f"{what}: {exc}", after=exc.retry_after)


# How long a deleted service's uid is remembered, so that a late copy of it (a status write
# in flight, a stale watch event) never brings it back into the cache.
TOMBSTONE_SECONDS = 600.0


# Children whose status the operator reads from its watch cache.
STATUS_KINDS = frozenset({"Deployment", "HorizontalPodAutoscaler"})


class NamespaceTerminating(Permanent):
    """The service's namespace is being deleted; its children are not re-created."""


class InvalidSpec(Permanent):
    """The spec cannot be rendered; nothing was applied and status says why."""


@dataclass(frozen=True)
class ChildRecord:
    uid: str
    owner_uid: str | None
    resource_version: str
    generation: int | None
    # What an apply of ours sets whole: spec, data, owners (see `fingerprint`).
    fingerprint: str = ""
    # Deployments: the status the reconcile reports readiness from; HPAs: the status the
    # floor's accounting reads what the HPA alone would run from.
    status: Mapping[str, Any] | None = None
    # The digest of the manifest our last apply sent (stamped on the child), and what other
    # writers did after it (see `foreign_writes`): after a restart, a child whose digest
    # matches and that nobody else touched since is not applied again.
    applied_digest: str | None = None
    foreign: tuple[frozenset[str] | None, ...] | None = None
    # The child's labels and annotations: an apply of ours sets only the keys it names, so
    # only those are compared (not the Deployment controller's revision annotation).
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)

    def workload(self) -> dict[str, Any]:
        """The slice of a Deployment that status.build_status reads."""
        return {"metadata": {"generation": self.generation}, "status": dict(self.status or {})}


def fingerprint(body: Mapping[str, Any]) -> str:
    """A digest of what an apply of ours sets whole: owners, spec, data. Status and
    bookkeeping (resourceVersion, managedFields) are left out, so a controller's status write
    does not count as a change; so are labels and annotations, of which an apply sets only
    the keys it names (compared one by one, see `MetadataKey`)."""
    meta = body.get("metadata") or {}
    spec = body.get("spec")
    if body.get("kind") == "Deployment" and isinstance(spec, Mapping):
        # The HPA owns the replica count; its scaling is not a change to anything we apply.
        spec = {k: v for k, v in spec.items() if k != "replicas"}
    content = {
        "ownerReferences": meta.get("ownerReferences"),
        "spec": spec,
        "data": body.get("data"),
    }
    return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()


# ("labels" | "annotations", key): one metadata entry an apply of ours sets.
MetadataKey = tuple[str, str]
_METADATA_MAPS = ("labels", "annotations")


# The sets of metadata keys in use: the same few for every service of a kind, so each
# applied child shares one instance instead of keeping its own (bounded: a set of user
# labels of its own per service is kept, not interned, beyond the bound).
_INTERNED_KEYS: dict[frozenset[MetadataKey], frozenset[MetadataKey]] = {}
_INTERNED_KEYS_MAX = 1024


def metadata_keys(manifest: Mapping[str, Any]) -> frozenset[MetadataKey]:
    """The labels and annotations a manifest sets (the only ones its apply changes)."""
    meta = manifest.get("metadata") or {}
    keys = frozenset((part, key) for part in _METADATA_MAPS for key in meta.get(part) or {})
    shared = _INTERNED_KEYS.get(keys)
    if shared is not None:
        return shared
    if len(_INTERNED_KEYS) < _INTERNED_KEYS_MAX:
        _INTERNED_KEYS[keys] = keys
    return keys


def metadata_holds(manifest: Mapping[str, Any], record: ChildRecord) -> bool:
    """Whether every label and annotation the manifest sets has that value on the child."""
    meta = manifest.get("metadata") or {}
    return all(
        getattr(record, part).get(key) == value
        for part in _METADATA_MAPS
        for key, value in (meta.get(part) or {}).items()
    )


def metadata_changes(before: ChildRecord, after: ChildRecord) -> set[MetadataKey]:
    changed: set[MetadataKey] = set()
    for part in _METADATA_MAPS:
        old, new = getattr(before, part), getattr(after, part)
        changed.update(
            (part, key) for key in old.keys() | new.keys() if old.get(key) != new.get(key)
        )
    return changed


@dataclass(frozen=True)
class Applied:
    """What this process's last apply of a child sent and got back: while the digest is the
    desired manifest's, the child's fingerprint is this one and the keys it set still hold
    their values, another apply would be a no-op."""

    digest: str
    fingerprint: str
    keys: frozenset[MetadataKey]


# Readiness the reconcile reports from a Deployment's status; other status churn is no reason
# to reconcile.
_READINESS_FIELDS = (
    "observedGeneration",
    "replicas",
    "readyReplicas",
    "updatedReplicas",
    "availableReplicas",
)


def _readiness(status: Mapping[str, Any] | None) -> tuple[Any, ...]:
    status = status or {}
    conditions = tuple(
        sorted(
            (str(c.get("type")), str(c.get("status")), str(c.get("reason")))
            for c in status.get("conditions") or ()
        )
    )
    return (*(status.get(f) for f in _READINESS_FIELDS), conditions)


def child_changed(
    kind: str,
    before: ChildRecord | None,
    after: ChildRecord | None,
    ours: frozenset[MetadataKey] | None = None,
) -> bool:
    """Whether a child's watch event asks for its owner's reconcile: it appeared, went away,
    someone changed what we apply (drift), or, for the Deployment, its readiness moved. An
    HPA's status or the replicas it sets are no reason: nothing we render depends on them;
    nor is a label or annotation outside `ours`, the keys our last apply set (any, when
    unknown), like the Deployment controller's revision annotation."""
    if before is None or after is None or before.uid != after.uid:
        return True
    if before.fingerprint != after.fingerprint:
        return True
    changed = metadata_changes(before, after)
    if changed and (ours is None or changed & ours):
        return True
    if kind == "Deployment":
        return before.generation != after.generation or _readiness(before.status) != _readiness(
            after.status
        )
    return False


def manifest_digest(manifest: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(manifest, sort_keys=True, default=str).encode()).hexdigest()


DIGEST_ANNOTATION = f"{API_GROUP}/applied-digest"
# Writes by other managers to these subresources never touch what we apply.
_SUBRESOURCES_NOT_OURS = frozenset({"status", "scale"})


def stamped(manifest: Mapping[str, Any], digest: str) -> dict[str, Any]:
    """The manifest with the digest of itself as an annotation (read back after restarts)."""
    meta = dict(manifest["metadata"])
    meta["annotations"] = {**(meta.get("annotations") or {}), DIGEST_ANNOTATION: digest}
    return {**manifest, "metadata": meta}


def foreign_writes(body: Mapping[str, Any]) -> tuple[frozenset[str] | None, ...] | None:
    """What managers other than ours wrote after our last apply, from managedFields: per
    write, the metadata label/annotation keys it touched, or None when it touched more
    (spec, data, owners). None overall when no apply of ours is recorded."""
    entries = (body.get("metadata") or {}).get("managedFields") or ()
    ours = [
        str(e.get("time") or "")
        for e in entries
        if e.get("manager") == FIELD_MANAGER
        and e.get("operation") == "Apply"
        and not e.get("subresource")
    ]
    if not ours:
        return None
    our_time = max(ours)
    writes: list[frozenset[str] | None] = []
    for entry in entries:
        if entry.get("manager") == FIELD_MANAGER or entry.get("subresource") in (
            _SUBRESOURCES_NOT_OURS
        ):
            continue
        if str(entry.get("time") or "") < our_time:
            continue  # our later (forced) apply took back every field we set
        writes.append(_metadata_keys_only(entry.get("fieldsV1") or {}))
    return tuple(writes)


def _metadata_keys_only(fields: Mapping[str, Any]) -> frozenset[str] | None:
    keys: set[str] = set()
    for top, sub in fields.items():
        if top == "f:status":
            continue
        if top != "f:metadata" or not isinstance(sub, Mapping):
            return None
        for part, inner in sub.items():
            if part == ".":
                continue
            if part not in ("f:labels", "f:annotations") or not isinstance(inner, Mapping):
                return None
            keys.update(k[2:] for k in inner if k.startswith("f:"))
    return frozenset(keys)


def untouched_since_apply(
    manifest: Mapping[str, Any], digest: str, applied_digest: Any, foreign: Any
) -> bool:
    """Whether a live child is still what our apply of `digest` left: it carries that digest
    and no other writer touched a field of it we set (writes of labels or annotations we do
    not set, like the Deployment controller's revision, do not count)."""
    if applied_digest != digest or foreign is None:
        return False
    meta = manifest.get("metadata") or {}
    ours = {*(meta.get("labels") or {}), *(meta.get("annotations") or {})}
    return all(keys is not None and not keys & ours for keys in foreign)


def child_record(kind: str, body: Mapping[str, Any]) -> ChildRecord:
    meta = body["metadata"]
    return ChildRecord(
        uid=meta["uid"],
        owner_uid=controller_uid(body),
        resource_version=meta["resourceVersion"],
        generation=meta.get("generation"),
        fingerprint=fingerprint(body),
        status=body.get("status") if kind in STATUS_KINDS else None,
        applied_digest=(meta.get("annotations") or {}).get(DIGEST_ANNOTATION),
        foreign=foreign_writes(body),
        labels=dict(meta.get("labels") or {}),
        annotations=dict(meta.get("annotations") or {}),
    )


def same_version(known: ChildRecord | None, head: Mapping[str, Any]) -> bool:
    """Whether a child's metadata (as read from the server) is of the very version a
    record was made from: same object (uid), no write since (resourceVersion)."""
    meta = head.get("metadata") or {}
    return (
        known is not None
        and meta.get("uid") == known.uid
        and meta.get("resourceVersion") == known.resource_version
    )


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
        *,
        workers: int = 8,
        queue: WorkQueue[ServiceKey] | None = None,
    ) -> None:
        self.kube = kube
        self.settings = settings
        self.post_event = post_event
        self.clock = clock
        self.services = BodyStore()
        self.children: dict[ChildKey, ChildRecord] = {}
        # Per child: what our last apply sent and got back. While it still holds, applying
        # again is a no-op: the request is skipped.
        self.applied: dict[ChildKey, Applied] = {}
        # Kinds whose watch keeps `children` current (handlers registers them). Others are
        # read back before an apply is skipped.
        self.watched_kinds: set[str] = set()
        self.cold_starts: dict[ServiceKey, ColdStartWindow] = {}
        # Services whose window holds a sample of a replica that turned Ready while we ran
        # (not only ones listed at start): their summary replaces the stored one.
        self._fresh_cold_starts: set[ServiceKey] = set()
        # Children known to be absent (deleted by us, or looked for and not found).
        self.absent: set[ChildKey] = set()
        self.tombstones: dict[str, float] = {}  # uid -> monotonic time of deletion
        # Services whose next reconcile reads every child from the server instead of
        # trusting the watch cache (the resync's pass: a watch gap, a relist after 410
        # Gone, may have hidden a deletion or an edit).
        self.verify: set[ServiceKey] = set()
        self._locks: dict[ServiceKey, asyncio.Lock] = {}
        self.queue: WorkQueue[ServiceKey] = queue or WorkQueue()
        # Long-running tasks (resync, floor loop) the health check watches.
        self.background: list[asyncio.Task[None]] = []
        self.workers = Workers(
            self.queue, self.reconcile_key, workers=workers, on_result=_count_result
        )

    # -- caches fed by watch events -------------------------------------------------------
    def remember_service(self, body: Mapping[str, Any]) -> bool:
        """Keep the newest copy of a service (watch events and our own writes race); False
        when the copy was ignored (older, or of a deleted service)."""
        meta = body["metadata"]
        key = (meta["namespace"], meta["name"])
        if self._buried(meta.get("uid")):
            return False
        known = self.services.metadata(key)
        kept = known is None or not _older(meta, known)
        if kept:
            self.services[key] = body
            _export_conditions(key, (body.get("status") or {}).get("conditions") or ())
        metrics.SERVICES.set(len(self.services))
        return kept

    def _buried(self, uid: Any) -> bool:
        """Whether `uid` is of a service deleted less than TOMBSTONE_SECONDS ago: one lookup
        (this runs on every service event); the resync prunes expired tombstones."""
        if uid is None:
            return False
        at = self.tombstones.get(str(uid))
        return at is not None and time.monotonic() - at <= TOMBSTONE_SECONDS

    def prune_tombstones(self) -> None:
        """Forget the uids deleted more than TOMBSTONE_SECONDS ago (once per resync round)."""
        now = time.monotonic()
        for old in [u for u, at in self.tombstones.items() if now - at > TOMBSTONE_SECONDS]:
            del self.tombstones[old]

    def forget_service(self, key: ServiceKey, uid: str | None = None) -> None:
        """The service was deleted: drop everything held for it, and ignore late copies."""
        known = self.services.metadata(key)
        self.services.pop(key, None)
        uid = uid or (known or {}).get("uid")
        if uid:
            self.tombstones[str(uid)] = time.monotonic()
        metrics.SERVICES.set(len(self.services))
        self.cold_starts.pop(key, None)
        self._fresh_cold_starts.discard(key)
        lock = self._locks.get(key)
        if lock is not None and not lock.locked():
            del self._locks[key]
        self.queue.discard(key)
        self.absent = {child for child in self.absent if child[1:] != key}
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
            metrics.MODEL_CACHE_SAVED,
        ):
            with contextlib.suppress(KeyError):
                gauge.remove(*key)
        for outcome in ("hit", "miss", "refetch"):
            for counter in (metrics.MODEL_CACHE_LOOKUPS, metrics.MODEL_CACHE_BYTES):
                with contextlib.suppress(KeyError):
                    counter.remove(*key, outcome)
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
            self.children[key] = child_record(kind, body)

    def child_event(self, kind: str, event_type: str | None, body: Mapping[str, Any]) -> None:
        """A watch event of a child (type None: the watch's listing, at start or after a
        gap): keep the cache current and queue the owner when the change matters."""
        owner = controller_name(body)
        if owner is None:
            return
        meta = body["metadata"]
        key = (kind, meta["namespace"], meta["name"])
        known = self.children.get(key)
        self.remember_child(kind, body, deleted=event_type == "DELETED")
        now = self.children.get(key)
        if event_type is None and known is None:
            return  # the first listing at start: the cache is just filled
        # A relist (after a watch gap or 410 Gone) that shows a change counts as one.
        applied = self.applied.get(key)
        if child_changed(kind, known, now, applied.keys if applied is not None else None):
            self.queue.add((meta["namespace"], owner))

    def observe_pod(self, pod: Mapping[str, Any], initial: bool) -> None:
        """Count a serving pod's cold start once it is Ready; the reconcile stores the
        summary in status.

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
        if sample.cache is not None:
            metrics.MODEL_CACHE_LOOKUPS.labels(*key, sample.cache).inc()
            metrics.MODEL_CACHE_BYTES.labels(*key, sample.cache).inc(sample.cache_bytes)
            saved = (summary.get("modelCache") or {}).get("savedSecondsPerHit")
            if saved is not None:
                metrics.MODEL_CACHE_SAVED.labels(*key).set(saved)
        if not initial:
            self._fresh_cold_starts.add(key)
        # Pods of one scale-up turn Ready together: one reconcile (one status write) for all.
        self.enqueue(key, delay=COLD_START_SETTLE_SECONDS)

    def _cold_start_summary(self, key: ServiceKey, stored: Any) -> Any:
        """The coldStart status: the window's summary, unless the stored one has more history
        and nothing new was seen since the operator started."""
        window = self.cold_starts.get(key)
        if window is None or not len(window):
            return stored
        if key not in self._fresh_cold_starts and stored and stored.get("samples", 0) > len(
            window
        ):
            return stored
        return window.summary()

    # -- scheduling -----------------------------------------------------------------------
    def lock(self, key: ServiceKey) -> asyncio.Lock:
        """Serialises everything that writes a service's status (reconcile, floor loop)."""
        return self._locks.setdefault(key, asyncio.Lock())

    def enqueue(self, key: ServiceKey, delay: float = 0.0) -> None:
        """Reconcile a service soon; requests for a key already queued coalesce into one."""
        self.queue.add_after(key, delay)

    async def reconcile_key(self, key: ServiceKey) -> Result | None:
        """What the work queue's workers run: reconcile the cached copy of a service."""
        body = self.services.get(key)
        if body is None:
            return None  # deleted: its children go with it (owner references)
        await self.reconcile(body)
        return None

    async def resync(self, stop: asyncio.Event, interval: float) -> None:
        """Drift-repair backstop: every service is reconciled once per `interval`, spread
        evenly over it so a large fleet never resyncs in one burst. Each round first prunes
        expired tombstones, so their map stays bounded without a scan per event."""
        while not stop.is_set():
            self.prune_tombstones()
            keys: list[ServiceKey | None] = [*self.services] or [None]
            for key in keys:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=interval / len(keys))
                if stop.is_set():
                    return
                if key is not None and key in self.services:
                    self.verify.add(key)
                    self.queue.add(key)

    # -- the reconcile --------------------------------------------------------------------
    async def reconcile(self, body: Mapping[str, Any]) -> dict[str, Any]:
        meta = body["metadata"]
        key = (meta["namespace"], meta["name"])
        async with self.lock(key):
            started = time.perf_counter()
            try:
                return await self._reconcile_locked(self.services.get(key, body))
            finally:
                metrics.RECONCILE_DURATION.observe(time.perf_counter() - started)

    async def _reconcile_locked(self, body: Mapping[str, Any]) -> dict[str, Any]:
        meta = body["metadata"]
        current = dict(body.get("status") or {})
        try:
            ccs = parse_service(body)
        except SpecError as exc:
            await self._report_invalid(body, current, exc)
            raise InvalidSpec(str(exc)) from exc

        sm_crd = await self._served_or_retry()
        settings = dataclasses.replace(self.settings, service_monitor_crd=sm_crd)
        desired = render_children(ccs, floor=current.get("floor"), settings=settings)

        # KEDA mode without KEDA's CRD: nothing is applied at all, so the children stay a
        # whole set (an existing HPA keeps scaling the service) instead of a Deployment
        # without its autoscaler, or the old autoscaler deleted and no new one.
        keda_missing = ccs.spec.autoscaling.engine == "KEDA" and not await self._served_or_retry(
            KEDA_API_VERSION, "scaledobjects"
        )
        collisions = [] if keda_missing else await self._foreign_objects(ccs, desired)
        deployment: dict[str, Any] | None = None
        if keda_missing:
            message = _keda_missing_message(ccs)
            outcome = ApplyOutcome(problem=Condition(DEGRADED, True, "KEDAMissing", message))
            metrics.RECONCILE_ERRORS.labels("KEDAMissing").inc()
        elif collisions:
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
        if deployment is None and not collisions:
            # An apply was refused before the Deployment's turn (or none was sent): report
            # what runs, not 0.
            deployment = await self._known_deployment(ccs)

        new_status = build_status(
            current,
            generation=meta.get("generation"),
            outcome=outcome,
            deployment=deployment,
            endpoint=endpoints(ccs),
            now=self.clock(),
            zero_minimum=autoscaler_min_replicas(ccs.spec, current.get("floor"))
            if ccs.spec.replicas.min == 0
            else None,
        )
        cold_start = self._cold_start_summary((ccs.namespace, ccs.name), current.get("coldStart"))
        if cold_start is not None:
            new_status["coldStart"] = cold_start
        await self._write_status(body, current, new_status)
        return new_status

    async def _known_deployment(self, ccs: ClaudeCodeService) -> dict[str, Any] | None:
        """The service's Deployment as it runs (for status when an apply was refused before
        the Deployment's turn): from the cache, else its metadata says whether it exists and
        is ours, and only then is it read whole (its status is what is reported) and kept."""
        key = ("Deployment", ccs.namespace, ChildNames.of(ccs.name).deployment)
        known = self.children.get(key)
        if known is not None:
            return known.workload() if known.owner_uid == ccs.uid else None
        try:
            head = await self.kube.get_metadata(*key)
            if head is None or controller_uid(head) != ccs.uid:
                return None
            live = await self.kube.get(*key)
        except KubeError as exc:
            log.info("Deployment of %s/%s unreadable: %s", ccs.namespace, ccs.name, exc)
            return None
        if live is None or controller_uid(live) != ccs.uid:
            return None
        record = child_record("Deployment", live)
        if key not in self.children:  # a watch event meanwhile is newer: keep that
            self.children[key] = record
        return record.workload()

    async def _served_or_retry(
        self, api_version: str = "monitoring.coreos.com/v1", plural: str = "servicemonitors"
    ) -> bool:
        try:
            return await self.kube.served(api_version, plural)
        except Transient as exc:
            raise RetryLater.of("API discovery", exc) from exc
        except KubeError as exc:
            log.warning("cannot discover %s/%s, assuming absent: %s", api_version, plural, exc)
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
            # Owner references are metadata: nothing more is read.
            live = await self._get_or_retry((kind, ccs.namespace, name), metadata_only=True)
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
        verify = (ccs.namespace, ccs.name) in self.verify
        self.verify.discard((ccs.namespace, ccs.name))
        for manifest in desired:
            kind = manifest["kind"]
            name = manifest["metadata"]["name"]
            key = (kind, ccs.namespace, name)
            if kind in AUTOSCALER_KINDS.values():
                # The other engine's autoscaler goes first: two autoscalers never scale the
                # Deployment at once (KEDA's admission webhook refuses a ScaledObject for a
                # Deployment an HPA already scales).
                await self._prune_other_autoscaler(ccs, keep=kind)
            previous = self.children.get(key)
            digest = manifest_digest(manifest)
            manifest = stamped(manifest, digest)
            if verify and kind in self.watched_kinds:
                previous = await self._read_back(key)
            if await self._unchanged(key, digest, manifest, previous):
                # Same manifest as our last apply, and nobody changed the child since: the
                # apply would be a no-op, so it is not sent.
                metrics.APPLIES_SKIPPED.labels(kind).inc()
                if kind == "Deployment" and previous is not None:
                    deployment = previous.workload()
                continue
            metrics.APPLY_REQUESTS.labels(kind).inc()
            try:
                live = await self.kube.apply(manifest)
            except NotFound as exc:
                if kind == SCALED_OBJECT_KIND:
                    # KEDA's CRD went away since discovery was cached; the next reconcile
                    # finds it absent and applies nothing.
                    self.kube.forget_discovery()
                    message = _keda_missing_message(ccs)
                    return ApplyOutcome(
                        problem=Condition(DEGRADED, True, "KEDAMissing", message)
                    ), deployment
                if kind != "ServiceMonitor":
                    raise RetryLater.of(f"applying {kind} {name}", exc) from exc
                # The CRD went away since discovery was cached: monitoring is off, not broken.
                self.kube.forget_discovery()
                monitoring = self._monitoring_condition(ccs, sm_crd=False)
                return ApplyOutcome(monitoring=monitoring), deployment
            except Transient as exc:
                metrics.RECONCILE_ERRORS.labels("Transient").inc()
                raise RetryLater.of(f"applying {kind} {name}", exc) from exc
            except (Rejected, KubeError) as exc:
                if exc.status == 403 and "being terminated" in str(exc):
                    # The namespace is being deleted: so is this service, soon. Nothing to
                    # report (events are refused there too) and nothing to retry.
                    raise NamespaceTerminating(str(exc)) from exc
                metrics.RECONCILE_ERRORS.labels("ApplyRejected").inc()
                log.warning("apply of %s %s/%s refused: %s", kind, ccs.namespace, name, exc)
                message = (
                    f"the API server refused {kind} {name}: {_first_sentence(str(exc))}; "
                    "fix the spec field it names, the other children are left as they were"
                )
                self.post_event(body, "Warning", "ApplyRejected", message)
                return ApplyOutcome(problem=Condition(DEGRADED, True, "ApplyRejected", message)), (
                    deployment
                )
            self.remember_child(kind, live, deleted=False)
            self.absent.discard(key)
            self.applied[key] = Applied(
                digest, self.children[key].fingerprint, metadata_keys(manifest)
            )
            verb = _what_changed(previous, live, since=started)
            if verb is not None:
                metrics.CHILDREN_APPLIED.labels(kind).inc()
                self.post_event(body, "Normal", verb, f"{verb} {kind} {name}")
            if kind == "Deployment":
                deployment = live
        await self._prune_switched_off(ccs, desired)
        return ApplyOutcome(), deployment

    async def _get_or_retry(
        self, key: ChildKey, *, metadata_only: bool = False
    ) -> dict[str, Any] | None:
        """One child from the server (only its metadata if asked), None when it does not
        exist; an unreachable or overloaded server is retried later (with its Retry-After)."""
        try:
            if metadata_only:
                return await self.kube.get_metadata(*key)
            return await self.kube.get(*key)
        except NotFound:
            return None  # the kind itself is not served (an optional CRD gone)
        except Transient as exc:
            raise RetryLater.of(f"reading {key[0]} {key[2]}", exc) from exc

    async def _current(self, key: ChildKey, known: ChildRecord | None) -> ChildRecord | None:
        """The child as it is on the server now, None when it does not exist, from its
        metadata alone while `known` is still that version; else read in full (not stored).

        This is what the resync's read-back costs. A child's metadata holds everything that
        says whether it may have changed: its uid and resourceVersion (any write moves it),
        the digest of our last apply and managedFields. When uid and resourceVersion are
        those of the cached record, the record is the object, so the spec, data and status a
        full GET would bring are already known: the unchanged child costs one small read,
        and only a moved one (a write the watch has not delivered yet, or one a watch gap
        hid) is read whole, then compared as before. A deleted child answers 404 either way.

        One metadata GET per child, rather than one metadata LIST per kind and namespace:
        the resync spreads its round evenly over the interval and each reconcile reads its
        own children at its own moment, so no listing taken at the start of a round is
        trusted (and held for every service of the namespace) for most of its length, and a
        reconcile stays self-contained. A LIST would be cheaper where many services share a
        namespace, and costs as much where each has a namespace of its own.
        """
        head = await self._get_or_retry(key, metadata_only=True)
        if head is None:
            return None
        if same_version(known, head):
            return known
        live = await self._get_or_retry(key)
        return child_record(key[0], live) if live is not None else None

    async def _read_back(self, key: ChildKey) -> ChildRecord | None:
        """Refresh the cache of one child from the server (reads, never a write; see
        `_current` for what they cost)."""
        record = await self._current(key, self.children.get(key))
        if record is None:
            self.children.pop(key, None)
            return None
        self.children[key] = record
        return record

    async def _unchanged(
        self,
        key: ChildKey,
        digest: str,
        manifest: Mapping[str, Any],
        known: ChildRecord | None,
    ) -> bool:
        """Whether the child still is exactly what our last apply of `digest` left: known from
        this process's own apply, or, after a restart, from the digest stamped on the child
        and its managedFields."""
        applied = self.applied.get(key)
        if applied is not None and applied.digest != digest:
            return False
        watched = key[0] in self.watched_kinds
        if watched:
            if known is None:
                return False
            live = known
            same = (
                untouched_since_apply(manifest, digest, known.applied_digest, known.foreign)
                if applied is None
                else applied.fingerprint == known.fingerprint and metadata_holds(manifest, known)
            )
        else:
            if key in self.absent:
                return False
            # Not watched: reads instead of a write (its metadata alone while unchanged).
            current = await self._current(key, known)
            if current is None:
                return False
            live = current
            same = (
                applied.fingerprint == current.fingerprint and metadata_holds(manifest, current)
                if applied is not None
                else untouched_since_apply(
                    manifest, digest, current.applied_digest, current.foreign
                )
            )
            if same:
                self.children[key] = current
        if same and applied is None:
            self.applied[key] = Applied(digest, live.fingerprint, metadata_keys(manifest))
        return same

    async def _prune_switched_off(
        self, ccs: ClaudeCodeService, desired: list[dict[str, Any]]
    ) -> None:
        """Optional children switched off in the spec are deleted, once, and only if ours.

        Only the spec decides: a discovery answer that the ServiceMonitor CRD is not served
        (true, or a transient miss right after an API server restart) deletes nothing; if the
        CRD is really gone, its objects went with it.
        """
        names = ChildNames.of(ccs.name)
        optional = (
            (
                "ServiceMonitor",
                names.service_monitor,
                ccs.spec.monitoring.service_monitor,
                "spec.monitoring.serviceMonitor is false",
            ),
            (
                "NetworkPolicy",
                names.network_policy,
                ccs.spec.network_policy.enabled,
                "spec.networkPolicy.enabled is false",
            ),
        )
        rendered = {m["kind"] for m in desired}
        for kind, name, wanted, why in optional:
            if not wanted and kind not in rendered:
                await self._prune_child(ccs, kind, name, why)

    async def _prune_child(self, ccs: ClaudeCodeService, kind: str, name: str, why: str) -> None:
        """Delete one child of `ccs` that its spec no longer asks for, if it exists and is
        ours (its controller reference names this service's uid); one of another owner's is
        left alone (the name collision check reports it when the child is wanted again)."""
        key = (kind, ccs.namespace, name)
        if key in self.absent:
            return
        known = self.children.get(key)
        uid = None
        if known is not None:
            if known.owner_uid != ccs.uid:
                return
            uid = known.uid
        elif kind not in self.watched_kinds:
            # Not applied by this process, and no complete listing of the kind: switched off
            # while the operator was down? Its metadata says whether it exists and whose it is
            # (None as well when the CRD itself is not served).
            head = await self._get_or_retry(key, metadata_only=True)
            if head is not None:
                if controller_uid(head) != ccs.uid:
                    return
                uid = head["metadata"]["uid"]
        if uid is not None:
            try:
                await self.kube.delete(kind, ccs.namespace, name, uid)
            except Transient as exc:
                raise RetryLater.of(f"deleting {kind} {name}", exc) from exc
            self.post_event(
                {"metadata": {"namespace": ccs.namespace, "name": ccs.name, "uid": ccs.uid}},
                "Normal",
                "Deleted",
                f"Deleted {kind} {name}: {why}",
            )
        self.remember_child_gone(key)

    async def _prune_other_autoscaler(self, ccs: ClaudeCodeService, keep: str) -> None:
        """Delete this service's autoscaler of the engine it no longer uses (ours only).
        KEDA's own HPA (keda-hpa-<name>) is never touched: KEDA deletes it with the
        ScaledObject."""
        names = ChildNames.of(ccs.name)
        for engine, kind in AUTOSCALER_KINDS.items():
            if kind == keep:
                continue
            name = names.autoscaler(engine)[1]
            if (kind, ccs.namespace, name) in self.absent:
                continue
            if kind == SCALED_OBJECT_KIND and not await self._served_or_retry(
                KEDA_API_VERSION, "scaledobjects"
            ):
                # No CRD, no ScaledObject (a discovery miss is not remembered as absence).
                continue
            why = f"spec.autoscaling.engine is {ccs.spec.autoscaling.engine}"
            await self._prune_child(ccs, kind, name, why)

    def remember_child_gone(self, key: ChildKey) -> None:
        self.children.pop(key, None)
        self.applied.pop(key, None)
        self.absent.add(key)

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
        ours = RECONCILE_STATUS.part(new_status)
        if RECONCILE_STATUS.part(current) == ours:
            return False
        meta = body["metadata"]
        try:
            written = await self.kube.apply_service_status(
                meta["namespace"], meta["name"], ours, RECONCILE_STATUS.manager
            )
        except NotFound:
            return False  # deleted meanwhile
        except Transient as exc:
            raise RetryLater.of("writing status", exc) from exc
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


COLD_START_SETTLE_SECONDS = 1.0


def _keda_missing_message(ccs: ClaudeCodeService) -> str:
    return (
        "spec.autoscaling.engine is KEDA but the keda.sh/v1alpha1 ScaledObject CRD is not "
        "installed: nothing was applied (the children are left as they were); install KEDA "
        "(operator and metrics server) or set spec.autoscaling.engine: HPA"
    )


def _count_result(key: ServiceKey, outcome: str, delay: float | None) -> None:
    metrics.RECONCILES.labels(outcome).inc()


def _first_sentence(message: str, limit: int = 200) -> str:
    """The API server's reason in one short sentence (details stay in the log)."""
    first = message.split("; ")[0].strip()
    return first if len(first) <= limit else first[: limit - 1] + "…"


def _export_conditions(key: ServiceKey, conditions: Any) -> None:
    """ccs_service_condition{type,status} = 1 for each condition's current status, and no
    series for the statuses it does not have (alerts match `{status="True"} == 1`): one
    series per condition instead of three, which at 1,000 services is 12,000 fewer."""
    current = {c["type"]: c["status"] for c in conditions}
    for type_ in (
        READY,
        DEGRADED,
        "Progressing",
        MONITORING,
        "FloorControllerActive",
        SCALED_TO_ZERO,
    ):
        for value in ("True", "False", "Unknown"):
            if current.get(type_) == value:
                metrics.SERVICE_CONDITION.labels(*key, type_, value).set(1)
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
