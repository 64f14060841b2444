"""Kubernetes I/O: server-side apply of children, status patches, discovery.

The official client is synchronous, so every call runs on a bounded thread pool and never
blocks kopf's event loop. Errors are mapped to a few typed exceptions the reconcile acts on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import urllib3
from kubernetes import client as k8s

from ccs_operator.core.api import API_GROUP, API_VERSION, KIND, PLURAL

FIELD_MANAGER = "ccs-operator"
log = logging.getLogger(__name__)


class KubeError(Exception):
    """An API call failed; `status` is the HTTP status (0 for transport errors) and
    `retry_after` the server's Retry-After in seconds, when it sent one."""

    def __init__(self, message: str, status: int = 0, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


class Transient(KubeError):
    """Worth retrying: the API server is unreachable, overloaded or timed out."""


class Rejected(KubeError):
    """The API server refused the object (invalid, forbidden, quota): retrying will not help."""


class NotFound(KubeError):
    pass


class Conflict(KubeError):
    pass


class Fenced(KubeError):
    """This process lost its leadership: it must not write anything any more."""


def retry_after_seconds(value: str | None) -> float | None:
    """A Retry-After header in seconds (the API server sends delta-seconds)."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if seconds >= 0 else None


@dataclass(frozen=True)
class ResourceType:
    api_version: str
    kind: str
    plural: str

    def path(self, namespace: str, name: str | None = None) -> str:
        prefix = "/api/v1" if self.api_version == "v1" else f"/apis/{self.api_version}"
        path = f"{prefix}/namespaces/{namespace}/{self.plural}"
        return f"{path}/{name}" if name else path


CHILD_TYPES: dict[str, ResourceType] = {
    t.kind: t
    for t in (
        ResourceType("v1", "ConfigMap", "configmaps"),
        ResourceType("apps/v1", "Deployment", "deployments"),
        ResourceType("v1", "Service", "services"),
        ResourceType("autoscaling/v2", "HorizontalPodAutoscaler", "horizontalpodautoscalers"),
        ResourceType("monitoring.coreos.com/v1", "ServiceMonitor", "servicemonitors"),
        ResourceType("keda.sh/v1alpha1", "ScaledObject", "scaledobjects"),
        ResourceType("networking.k8s.io/v1", "NetworkPolicy", "networkpolicies"),
    )
}
# Ask for an object's metadata only; plain JSON (the whole object) where that form is not
# served.
METADATA_ONLY = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1,application/json"
SERVICE_TYPE = ResourceType(f"{API_GROUP}/{API_VERSION}", "ClaudeCodeService", PLURAL)


def _error(
    method: str,
    path: str,
    status: int,
    body: bytes | str | None,
    retry_after: str | None = None,
) -> KubeError:
    """Map an HTTP error to the exception the reconcile acts on."""
    try:
        message = str(json.loads(body or b"{}").get("message") or f"HTTP {status}")
    except (TypeError, ValueError, AttributeError):
        message = f"HTTP {status}"
    if status in (0, 429, 500, 502, 503, 504):
        return Transient(f"{method} {path}: {message}", status, retry_after_seconds(retry_after))
    if status == 404:
        return NotFound(f"{method} {path}: not found", status)
    if status == 409:
        return Conflict(f"{method} {path}: {message}", status)
    return Rejected(message, status)


class KubeClient:
    """Asynchronous facade over the synchronous Kubernetes client."""

    def __init__(
        self, api_client: k8s.ApiClient, workers: int = 16, timeout_seconds: float = 30.0
    ) -> None:
        self._api = api_client
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="kube")
        self._timeout = timeout_seconds
        self._served_cache: dict[str, tuple[float, bool]] = {}
        self.fenced = False

    def fence(self) -> None:
        """Refuse every write from now on (leadership lost): reads still work."""
        self.fenced = True

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def _call(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        query: list[tuple[str, str]] | None = None,
        content_type: str = "application/json",
        accept: str = "application/json",
    ) -> Any:
        if self.fenced and method != "GET":
            raise Fenced(f"{method} {path}: not sent, this operator is no longer the leader")

        def call() -> Any:
            response = self.send(
                method, path, body=body, query=query, content_type=content_type, accept=accept
            )
            try:
                data = response.read()
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                raise Transient(f"{method} {path}: {exc}") from exc
            return json.loads(data) if data else None

        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, call)

    def send(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        query: list[tuple[str, str]] | None = None,
        content_type: str = "application/json",
        accept: str = "application/json",
        timeout: float | tuple[float, float] | None = None,
    ) -> Any:
        """One request, synchronous (on the caller's thread), its body not read yet: a
        2xx response, or the KubeError its status maps to."""
        try:
            serialized = self._api.param_serialize(
                method=method,
                resource_path=path,
                query_params=query or [],
                header_params={"Content-Type": content_type, "Accept": accept},
                body=body,
                auth_settings=["BearerToken"],
            )
            response = self._api.call_api(*serialized, _request_timeout=timeout or self._timeout)
            if not 200 <= response.status < 300:
                raise _error(
                    method,
                    path,
                    response.status,
                    response.read(),
                    response.getheader("Retry-After"),
                )
            return response
        except k8s.ApiException as exc:
            headers = exc.headers or {}
            raise _error(
                method, path, exc.status or 0, exc.body, headers.get("Retry-After")
            ) from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise Transient(f"{method} {path}: {exc}") from exc

    async def apply(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        """Server-side apply with our field manager; force only moves the fields we set."""
        kind = CHILD_TYPES[manifest["kind"]]
        meta = manifest["metadata"]
        result: dict[str, Any] = await self._call(
            "PATCH",
            kind.path(meta["namespace"], meta["name"]),
            body=dict(manifest),
            query=[("fieldManager", FIELD_MANAGER), ("force", "true")],
            content_type="application/apply-patch+yaml",
        )
        return result

    async def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            result: dict[str, Any] = await self._call(
                "GET", CHILD_TYPES[kind].path(namespace, name)
            )
        except NotFound:
            return None
        return result

    async def get_metadata(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """Only a child's metadata (a PartialObjectMetadata: uid, resourceVersion, labels,
        annotations, owners, managedFields; no spec, data or status), None when it does not
        exist. A server that cannot answer in that form sends the whole object, which holds
        the same metadata."""
        try:
            result: dict[str, Any] = await self._call(
                "GET", CHILD_TYPES[kind].path(namespace, name), accept=METADATA_ONLY
            )
        except NotFound:
            return None
        return result

    async def delete(self, kind: str, namespace: str, name: str, uid: str) -> None:
        """Delete a child only if it is still the object we mean (uid precondition)."""
        # Already gone, or replaced by a newer object that is not ours to delete: both fine.
        with contextlib.suppress(NotFound, Conflict):
            await self._call(
                "DELETE",
                CHILD_TYPES[kind].path(namespace, name),
                body={"preconditions": {"uid": uid}, "propagationPolicy": "Background"},
            )

    async def apply_service_status(
        self, namespace: str, name: str, status: Mapping[str, Any], manager: str
    ) -> dict[str, Any]:
        """Server-side apply of the part of .status that `manager` owns: fields it omits
        and owned alone are removed, fields and conditions of other managers are kept."""
        result: dict[str, Any] = await self._call(
            "PATCH",
            SERVICE_TYPE.path(namespace, name) + "/status",
            body={
                "apiVersion": SERVICE_TYPE.api_version,
                "kind": SERVICE_TYPE.kind,
                "metadata": {"name": name, "namespace": namespace},
                "status": dict(status),
            },
            query=[("fieldManager", manager), ("force", "true")],
            content_type="application/apply-patch+yaml",
        )
        return result

    async def served(self, api_version: str, plural: str, ttl_seconds: float = 30.0) -> bool:
        """Whether the API server serves a resource (e.g. the ServiceMonitor CRD), cached."""
        key = f"{api_version}/{plural}"
        cached = self._served_cache.get(key)
        if cached and time.monotonic() - cached[0] < ttl_seconds:
            return cached[1]
        try:
            discovery = await self._call("GET", f"/apis/{api_version}")
            found = any(r.get("name") == plural for r in discovery.get("resources", ()))
        except NotFound:
            found = False
        self._served_cache[key] = (time.monotonic(), found)
        return found

    async def external_metric(
        self, namespace: str, metric: str, selector: Mapping[str, str]
    ) -> list[dict[str, Any]] | None:
        """Values of an External metric as the HPA reads them; None when no adapter serves
        external.metrics.k8s.io at all."""
        label_selector = ",".join(f"{k}={v}" for k, v in sorted(selector.items()))
        try:
            result = await self._call(
                "GET",
                f"/apis/external.metrics.k8s.io/v1beta1/namespaces/{namespace}/{metric}",
                query=[("labelSelector", label_selector)],
            )
        except NotFound:
            if not await self.served_group("external.metrics.k8s.io/v1beta1"):
                return None
            return []
        return list((result or {}).get("items") or [])

    async def served_group(self, api_version: str, ttl_seconds: float = 30.0) -> bool:
        """Whether any API is served under a group/version (an aggregated adapter), cached."""
        key = api_version
        cached = self._served_cache.get(key)
        if cached and time.monotonic() - cached[0] < ttl_seconds:
            return cached[1]
        try:
            await self._call("GET", f"/apis/{api_version}")
            found = True
        except NotFound:
            found = False
        self._served_cache[key] = (time.monotonic(), found)
        return found

    def forget_discovery(self) -> None:
        self._served_cache.clear()


EVENT_CORRELATION_SECONDS = 600.0
EVENT_CACHE_SIZE = 4096


class EventRecorder:
    """Posts Kubernetes Events about services, fire-and-forget, from any task of the loop.

    kopf.event only works inside kopf's per-object handler context; the floor loop and the
    reconciles it queues run outside it. One path for every event keeps them all visible in
    `kubectl describe ccs`. A failed post is logged, never raised: an event is not worth
    failing a reconcile for. Like client-go's event correlator, the same event about the same
    object within ten minutes bumps the existing Event's count instead of adding another.
    """

    def __init__(self, kube: KubeClient, clock: Any = time.monotonic) -> None:
        self.kube = kube
        self.instance = socket.gethostname()
        self.clock = clock
        self._tasks: set[asyncio.Task[None]] = set()
        # (namespace, uid, type, reason, message) -> (event name, count, last seen)
        self._seen: dict[tuple[str, ...], tuple[str, int, float]] = {}

    def __call__(self, body: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        task = asyncio.get_running_loop().create_task(self._record(body, type_, reason, message))
        self._tasks.add(task)  # keep a reference until done (asyncio holds tasks weakly)
        task.add_done_callback(self._tasks.discard)

    def _event(
        self, body: Mapping[str, Any], type_: str, reason: str, message: str
    ) -> dict[str, Any]:
        meta = body["metadata"]
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        return {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": f"{API_GROUP}/{API_VERSION}",
                "kind": KIND,
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta.get("uid"),
                "resourceVersion": meta.get("resourceVersion"),
            },
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": FIELD_MANAGER},
            "reportingComponent": FIELD_MANAGER,
            "reportingInstance": self.instance,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }

    async def _record(
        self, body: Mapping[str, Any], type_: str, reason: str, message: str
    ) -> None:
        event = self._event(body, type_, reason, message)
        namespace = event["metadata"]["namespace"]
        key = (namespace, str(event["involvedObject"]["uid"]), type_, reason, event["message"])
        now = self.clock()
        seen = self._seen.get(key)
        try:
            if seen is not None and now - seen[2] < EVENT_CORRELATION_SECONDS:
                name, count = seen[0], seen[1] + 1
                self._seen[key] = (name, count, now)
                try:
                    await self.kube._call(
                        "PATCH",
                        f"/api/v1/namespaces/{namespace}/events/{name}",
                        body={"count": count, "lastTimestamp": event["lastTimestamp"]},
                        content_type="application/merge-patch+json",
                    )
                    return
                except NotFound:
                    pass  # expired on the server: post a new one
            posted = await self.kube._call(
                "POST", f"/api/v1/namespaces/{namespace}/events", body=event
            )
        except KubeError as exc:
            log.info("event %s on %s not posted: %s", reason, namespace, exc)
            return
        self._remember(key, str((posted or {}).get("metadata", {}).get("name", "")), now)

    def _remember(self, key: tuple[str, ...], name: str, now: float) -> None:
        if not name:
            return
        self._seen[key] = (name, 1, now)
        if len(self._seen) > EVENT_CACHE_SIZE:
            expired = [k for k, v in self._seen.items() if now - v[2] >= EVENT_CORRELATION_SECONDS]
            for old in expired:
                del self._seen[old]
            while len(self._seen) > EVENT_CACHE_SIZE:
                del self._seen[next(iter(self._seen))]

    async def drain(self) -> None:
        """Wait for events still being posted (at shutdown)."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
