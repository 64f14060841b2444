"""kopf wiring only: every handler puts a service's key on the reconciler's work queue.

kopf is used for what it does well (watching, with relists and reconnects); the decision of
what to do lives in one level-based reconcile behind one rate-limited queue. No kopf state
handlers (create/update/resume) are registered, so kopf writes nothing to the services: no
finalizers, no last-handled annotations.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any

import kopf

from ccs_operator.clients.kube import CHILD_TYPES
from ccs_operator.clients.watch import LabelWatch, watch_scopes
from ccs_operator.config import OperatorConfig
from ccs_operator.controllers.floorloop import FloorLoop
from ccs_operator.controllers.kopfnamespaces import see_namespaces_in_every_listing
from ccs_operator.controllers.reconcile import Reconciler
from ccs_operator.core.api import API_GROUP, API_VERSION, PLURAL
from ccs_operator.core.render import MANAGED_BY_LABEL, MANAGED_BY_VALUE

# Children whose CRD may be removed while the operator runs. kopf stops the whole operator
# when a watch of a vanished resource answers 404, so kopf does not watch these: the
# operator's own label-filtered watch does (watch.py); a removed ServiceMonitor CRD only
# switches monitoring off, a removed KEDA CRD is reported (KEDAMissing) and nothing is applied.
OPTIONAL_CRD_KINDS = frozenset({"ServiceMonitor", "ScaledObject"})
MANAGED_BY = {MANAGED_BY_LABEL: MANAGED_BY_VALUE}
MANAGED_BY_SELECTOR = ",".join(f"{k}={v}" for k, v in MANAGED_BY.items())
FINALIZER = f"{API_GROUP}/finalizer"
ANNOTATION_PREFIX = f"operator.{API_GROUP}"


def watched_children() -> list[tuple[str, str, str, str]]:
    """(kind, group, version, plural) of every child kind kopf watches."""
    watched = []
    for child in CHILD_TYPES.values():
        if child.kind in OPTIONAL_CRD_KINDS:
            continue
        group, _, version = child.api_version.rpartition("/")
        watched.append((child.kind, group, version, child.plural))
    return watched


class NoDiffBase(kopf.DiffBaseStorage):
    """kopf's last-handled state, kept nowhere: kopf builds it (a deep copy of the body) on
    every event of every watched object, for change handlers only, and this operator
    registers none (every handler is an event handler that queues a key; a test checks).
    That copy was an eighth of the operator's CPU with 300 services coming up."""

    def build(
        self, *, body: kopf.Body, extra_fields: Any = None
    ) -> kopf.BodyEssence:
        return kopf.BodyEssence()

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        return None


def configure(settings: kopf.OperatorSettings, config: OperatorConfig) -> None:
    """Explicit kopf settings: project-prefixed storage, timeouts, quiet handler chatter."""
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
        prefix=ANNOTATION_PREFIX
    )
    settings.persistence.diffbase_storage = NoDiffBase()
    # Our own events say what happened; kopf's per-handler success events are noise.
    settings.posting.level = logging.WARNING
    settings.networking.request_timeout = config.request_timeout_seconds
    settings.networking.connect_timeout = 10
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.execution.max_workers = config.api_workers
    settings.queueing.error_delays = (1, 2, 5, 10, 30, 60)
    # Filter on the server: the operator lists and watches only the children and pods it
    # manages, never every Pod and ConfigMap of the cluster (handler `labels=` filters only
    # on the client, after the whole stream was received and kept).
    for _, group, _, plural in watched_children():
        settings.watching.label_selectors[group, plural] = MANAGED_BY_SELECTOR
    settings.watching.label_selectors["", "pods"] = MANAGED_BY_SELECTOR


def build_registry(
    reconciler: Reconciler, config: OperatorConfig, floor_loop: FloorLoop | None = None
) -> kopf.OperatorRegistry:
    see_namespaces_in_every_listing()
    registry = kopf.OperatorRegistry()
    resource = (API_GROUP, API_VERSION, PLURAL)
    stop = asyncio.Event()
    background: list[asyncio.Task[None]] = []

    # A registry of our own carries none of kopf's default login handlers: authenticate
    # through the kubernetes client (in-cluster ServiceAccount, else $KUBECONFIG), as the
    # Reconciler's own client does.
    @kopf.on.login(registry=registry)
    def _login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        return kopf.login_via_client(**kwargs)

    @kopf.on.startup(registry=registry)
    async def _settings(settings: kopf.OperatorSettings, **_: Any) -> None:
        configure(settings, config)
        loop = asyncio.get_running_loop()
        reconciler.workers.start()
        # The periodic resync is ours, not a kopf timer: kopf puts a finalizer on every
        # object it runs timers for, which blocks `kubectl delete` (and namespace deletion)
        # whenever the operator is not running. Nothing outside the cluster needs cleaning,
        # so the services carry no finalizer.
        background.append(loop.create_task(reconciler.resync(stop, config.resync_seconds)))
        for kind in sorted(OPTIONAL_CRD_KINDS):
            background.extend(
                loop.create_task(watch.run(stop)) for watch in own_watches(reconciler, kind, config)
            )
        if floor_loop is not None:
            background.append(loop.create_task(floor_loop.run(stop)))
        reconciler.background = background

    @kopf.on.cleanup(registry=registry)
    async def _stop_background(**_: Any) -> None:
        stop.set()
        await reconciler.workers.stop()
        await asyncio.gather(*background, return_exceptions=True)

    # Event handlers are async: kopf runs sync handlers in worker threads, where the
    # reconciler's asyncio scheduling (the work queue) has no loop.
    @kopf.on.event(*resource, registry=registry)
    async def _service_event(event: Mapping[str, Any], body: kopf.Body, **_: Any) -> None:
        meta = body["metadata"]
        key = (meta["namespace"], meta["name"])
        if event.get("type") == "DELETED":
            reconciler.forget_service(key, meta.get("uid"))
            return
        known = reconciler.services.metadata(key)
        if reconciler.remember_service(body) and needs_reconcile(known, body):
            reconciler.queue.add(key)

    for kind, group, version, plural in watched_children():
        _watch_child(registry, reconciler, kind, group, version, plural)

    @kopf.on.event("", "v1", "pods", labels=MANAGED_BY, registry=registry, id="cold-start")
    async def _pod_event(event: Mapping[str, Any], body: kopf.Body, **_: Any) -> None:
        if event.get("type") != "DELETED":
            reconciler.observe_pod(body, initial=event.get("type") is None)

    return registry


def own_watch_streams(config: OperatorConfig) -> int:
    """How many watch requests `own_watches` keeps open at once, for every optional kind:
    each holds an API connection of its own for minutes."""
    return len(OPTIONAL_CRD_KINDS) * len(watch_scopes(config.namespaces))


def own_watches(reconciler: Reconciler, kind: str, config: OperatorConfig) -> list[LabelWatch]:
    """The operator's own label-filtered watch of `kind` (one per namespace when it serves
    named namespaces, else one for the cluster). The kind counts as watched (the reconcile
    trusts its cache) only while every scope's listing is complete and its watch runs."""
    scopes = watch_scopes(config.namespaces)
    synced: set[str | None] = set()

    def on_sync(scope: str | None) -> Callable[[bool], None]:
        def mark(ok: bool) -> None:
            if ok:
                synced.add(scope)
            else:
                synced.discard(scope)
            if synced >= set(scopes):
                reconciler.watched_kinds.add(kind)
            else:
                reconciler.watched_kinds.discard(kind)

        return mark

    def on_event(event_type: str | None, body: dict[str, Any]) -> None:
        reconciler.child_event(kind, event_type, body)

    return [
        LabelWatch(
            reconciler.kube,
            kind,
            MANAGED_BY_SELECTOR,
            scope,
            on_event,
            on_sync(scope),
            patterns=config.namespaces,
        )
        for scope in scopes
    ]


def needs_reconcile(known: Mapping[str, Any] | None, body: Mapping[str, Any]) -> bool:
    """Whether a service's event asks for a reconcile: it is new to us (`known`, the metadata
    of our copy, is None), or something other than status changed (a status write of ours,
    or of the floor loop, is not a reason)."""
    if known is None:
        return True
    old, new = known, body.get("metadata") or {}
    if old.get("uid") != new.get("uid"):
        return True
    return any(
        old.get(field) != new.get(field)
        for field in ("generation", "labels", "annotations", "deletionTimestamp")
    )


def _watch_child(
    registry: kopf.OperatorRegistry,
    reconciler: Reconciler,
    kind: str,
    group: str,
    version: str,
    plural: str,
) -> None:
    """Drift repair: a child deleted or edited by hand brings its owner back to the spec."""
    # The watch keeps the reconciler's child cache current, so it may skip no-op applies.
    reconciler.watched_kinds.add(kind)

    # An index handler that indexes nothing: with one registered, kopf holds every handler
    # (the services' too) until this kind's initial listing is in (its "indexed" readiness),
    # so no reconcile after a start trusts a half-filled cache and re-applies children it
    # has not seen yet (controller-runtime's WaitForCacheSync).
    @kopf.index(group, version, plural, labels=MANAGED_BY, registry=registry, id=f"listed-{plural}")
    async def _listed(**_: Any) -> None:
        return None

    @kopf.on.event(
        group, version, plural, labels=MANAGED_BY, registry=registry, id=f"watch-{plural}"
    )
    async def _child_event(event: Mapping[str, Any], body: kopf.Body, **_: Any) -> None:
        reconciler.child_event(kind, event.get("type"), body)
