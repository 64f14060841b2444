"""An in-memory stand-in for KubeClient: enough API server for the controller's unit tier.

Objects live in a dict keyed by (kind, namespace, name) with uids, increasing resource
versions and generations that move only when spec changes, like the real server. Failures
are injected per method as a list of exceptions raised by the next calls.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import time
from collections import Counter, defaultdict
from collections.abc import Mapping
from typing import Any

from ccs_operator.clients.kube import NotFound
from ccs_operator.core.status import FLOOR_STATUS, RECONCILE_STATUS, StatusOwner

SERVICE = "ClaudeCodeService"


class FakeKube:
    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.calls: Counter[str] = Counter()
        self.log: list[tuple[str, str, str, str]] = []  # (verb, kind, namespace, name)
        self.fail: dict[str, list[BaseException]] = defaultdict(list)
        self.servicemonitors_served = True
        self.scaledobjects_served = False  # KEDA's CRD: absent unless a test installs it
        self.fenced = False
        # Set to make apply_service_status wait (a write in flight) until released.
        self.hold_status: asyncio.Event | None = None
        self.status_started = asyncio.Event()
        self._rv = itertools.count(100)
        self._uid = itertools.count(1)

    # -- helpers for tests ----------------------------------------------------------------
    def add_service(self, body: Mapping[str, Any]) -> dict[str, Any]:
        obj = copy.deepcopy(dict(body))
        meta = obj.setdefault("metadata", {})
        meta.setdefault("uid", f"uid-{next(self._uid)}")
        meta.setdefault("generation", 1)
        meta["resourceVersion"] = str(next(self._rv))
        meta.setdefault("creationTimestamp", _now())
        self.objects[(SERVICE, meta["namespace"], meta["name"])] = obj
        return copy.deepcopy(obj)

    def service(self, namespace: str, name: str) -> dict[str, Any]:
        return copy.deepcopy(self.objects[(SERVICE, namespace, name)])

    def edit(
        self,
        kind: str,
        namespace: str,
        name: str,
        change: Mapping[str, Any],
        manager: str = "kubectl-edit",
        fields: Mapping[str, Any] | None = None,
        subresource: str | None = None,
    ) -> dict[str, Any]:
        """Another writer's Update: merges `change` at the top level, records its entry."""
        live = self.objects[(kind, namespace, name)]
        for top, value in change.items():
            if top == "metadata":
                for part, inner in value.items():
                    live["metadata"][part] = {**(live["metadata"].get(part) or {}), **inner}
            elif isinstance(value, Mapping):
                live[top] = {**(live.get(top) or {}), **value}
            else:
                live[top] = value
        live["metadata"]["resourceVersion"] = str(next(self._rv))
        entry = _entry(manager, "Update", dict(fields or {"f:spec": {}}))
        if subresource:
            entry["subresource"] = subresource
        live["metadata"].setdefault("managedFields", []).append(entry)
        return copy.deepcopy(live)

    def kinds(self, namespace: str) -> set[str]:
        return {k for k, ns, _ in self.objects if ns == namespace and k != SERVICE}

    def _maybe_fail(self, method: str) -> None:
        self.calls[method] += 1
        if self.fail[method]:
            raise self.fail[method].pop(0)

    # -- the KubeClient surface the controller uses ---------------------------------------
    async def served(self, api_version: str, plural: str, ttl_seconds: float = 30.0) -> bool:
        self._maybe_fail("served")
        if plural == "scaledobjects":
            return self.scaledobjects_served
        return self.servicemonitors_served

    def _crd_missing(self, kind: str) -> bool:
        return (kind == "ServiceMonitor" and not self.servicemonitors_served) or (
            kind == "ScaledObject" and not self.scaledobjects_served
        )

    def forget_discovery(self) -> None:
        pass

    async def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        self._maybe_fail("get")
        self.log.append(("GET", kind, namespace, name))
        if self._crd_missing(kind):
            raise NotFound(f"GET {kind}: not found", 404)
        found = self.objects.get((kind, namespace, name))
        return copy.deepcopy(found) if found is not None else None

    async def get_metadata(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """What the server answers to Accept: ...;as=PartialObjectMetadata: the object's
        metadata (managedFields included), nothing of its spec, data or status."""
        self._maybe_fail("get_metadata")
        self.log.append(("GET_METADATA", kind, namespace, name))
        if self._crd_missing(kind):
            raise NotFound(f"GET {kind}: not found", 404)
        found = self.objects.get((kind, namespace, name))
        if found is None:
            return None
        return {
            "apiVersion": "meta.k8s.io/v1",
            "kind": "PartialObjectMetadata",
            "metadata": copy.deepcopy(found["metadata"]),
        }

    async def apply(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        self._maybe_fail("apply")
        kind, meta = manifest["kind"], manifest["metadata"]
        self.log.append(("APPLY", kind, meta["namespace"], meta["name"]))
        if self._crd_missing(kind):
            raise NotFound(f"PATCH {kind}: not found", 404)
        key = (kind, meta["namespace"], meta["name"])
        live = self.objects.get(key)
        desired = copy.deepcopy(dict(manifest))
        if live is None:
            desired["metadata"].update(
                uid=f"uid-{next(self._uid)}",
                generation=1,
                resourceVersion=str(next(self._rv)),
                creationTimestamp=_now(),
                managedFields=[_entry("ccs-operator", "Apply", {"f:spec": {}})],
            )
            self.objects[key] = desired
            return copy.deepcopy(desired)
        changed = {k: v for k, v in desired.items() if k not in ("metadata", "status")}
        before = copy.deepcopy(live)
        live.update(changed)
        # Server-side apply sets the labels and annotations it names and keeps other
        # writers' (the Deployment controller's revision annotation).
        for field in ("labels", "annotations"):
            if field in desired["metadata"]:
                live["metadata"][field] = {
                    **(live["metadata"].get(field) or {}),
                    **desired["metadata"][field],
                }
        if "ownerReferences" in desired["metadata"]:
            live["metadata"]["ownerReferences"] = desired["metadata"]["ownerReferences"]
        if live != before:
            live["metadata"]["resourceVersion"] = str(next(self._rv))
            others = [
                e
                for e in live["metadata"].get("managedFields") or ()
                if e["manager"] != "ccs-operator"
            ]
            live["metadata"]["managedFields"] = [
                *others,
                _entry("ccs-operator", "Apply", {"f:spec": {}}),
            ]
            if live.get("spec") != before.get("spec"):
                live["metadata"]["generation"] = before["metadata"].get("generation", 1) + 1
        return copy.deepcopy(live)

    async def delete(self, kind: str, namespace: str, name: str, uid: str) -> None:
        self._maybe_fail("delete")
        self.log.append(("DELETE", kind, namespace, name))
        live = self.objects.get((kind, namespace, name))
        if live is not None and live["metadata"]["uid"] == uid:
            del self.objects[(kind, namespace, name)]

    async def apply_service_status(
        self, namespace: str, name: str, status: Mapping[str, Any], manager: str
    ) -> dict[str, Any]:
        self._maybe_fail("apply_service_status")
        self.log.append(("STATUS", SERVICE, namespace, name))
        owner = {o.manager: o for o in (RECONCILE_STATUS, FLOOR_STATUS)}[manager]
        live = self.objects.get((SERVICE, namespace, name))
        if live is None:
            raise NotFound("PATCH status: not found", 404)
        written = copy.deepcopy(live)
        written["status"] = apply_status(written.get("status") or {}, copy.deepcopy(status), owner)
        written["metadata"]["resourceVersion"] = str(next(self._rv))
        if self.hold_status is not None:
            self.status_started.set()
            await self.hold_status.wait()
        if (SERVICE, namespace, name) in self.objects:
            self.objects[(SERVICE, namespace, name)] = copy.deepcopy(written)
        return written

    async def external_metric(self, *args: Any) -> list[Any]:
        return [{"value": "1"}]


def apply_status(
    current: Mapping[str, Any], applied: Mapping[str, Any], owner: StatusOwner
) -> dict[str, Any]:
    """Server-side apply's effect on status for one manager: its fields replaced by what it
    sent (omitted ones removed), conditions merged by type, other managers' kept."""
    merged = {k: v for k, v in current.items() if k not in owner.fields and k != "conditions"}
    merged.update({k: v for k, v in applied.items() if k != "conditions"})
    others = [c for c in current.get("conditions") or () if c["type"] not in owner.conditions]
    conditions = [*others, *(applied.get("conditions") or ())]
    if conditions:
        merged["conditions"] = conditions
    return merged


def _entry(manager: str, operation: str, fields: dict[str, Any]) -> dict[str, Any]:
    return {
        "manager": manager,
        "operation": operation,
        "apiVersion": "v1",
        "time": _now(),
        "fieldsType": "FieldsV1",
        "fieldsV1": fields,
    }


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
