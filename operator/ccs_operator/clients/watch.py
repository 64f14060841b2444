"""The operator's own watch of one child kind: listed and watched with a label selector the API
server applies, so only the operator's children ever reach this process.

kopf watches the other child kinds (its `settings.watching.label_selectors` puts the same
selector on the server's list and watch). ServiceMonitors are watched here instead: their CRD
may be removed while the operator runs, and kopf ends the whole operator when a watch of a
vanished resource answers 404. Here a 404 only means "not served now": the kind is marked
unwatched (reconciles read those children back, as before the watch existed) and the list is
retried until the CRD is back.

The Kubernetes client is synchronous and a watch request blocks for minutes, so each watch
runs on a daemon thread of its own and hands every event to the event loop; `stop()` shuts
the open response down, so the thread never outlives the operator's shutdown by more than
one read.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import json
import logging
import random
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from ccs_operator.clients.kube import (
    CHILD_TYPES,
    KubeClient,
    KubeError,
    NotFound,
    Transient,
    _error,
)

log = logging.getLogger(__name__)

# (event type, object): type None for the objects of a listing (at start, and after a gap).
EventSink = Callable[[str | None, dict[str, Any]], None]
# Called with True once a listing is complete (the cache is whole), False when the watch
# broke off (events may be missed until the next listing).
SyncSink = Callable[[bool], None]

SERVER_TIMEOUT_SECONDS = 300
PAGE_SIZE = 500
RETRY_MIN_SECONDS = 1.0
RETRY_MAX_SECONDS = 60.0


def namespace_matches(namespace: str, patterns: Sequence[str]) -> bool:
    """Whether a namespace is one the operator serves, with kopf's pattern rules: each pattern
    a glob, `!glob` excludes (a leading exclusion implies `*` before it)."""
    if not patterns:
        return True
    for pattern in patterns:
        globs = [g.strip() for g in pattern.split(",") if g.strip()]
        if not globs or globs[0].startswith("!"):
            globs.insert(0, "*")
        first = matches = fnmatch.fnmatchcase(namespace, globs[0])
        for glob in globs[1:]:
            if glob.startswith("!"):
                matches = matches and not fnmatch.fnmatchcase(namespace, glob[1:])
            else:
                matches = matches or (first and fnmatch.fnmatchcase(namespace, glob))
        if matches:
            return True
    return False


def watch_scopes(patterns: Sequence[str]) -> list[str | None]:
    """Where to list and watch: each namespace by name when the operator serves only named
    ones (what namespaced RBAC allows), else the cluster (None), filtered by `patterns`."""
    exact = [p for p in patterns if p and not any(c in p for c in "*?[]!,")]
    if patterns and len(exact) == len(patterns):
        return list(dict.fromkeys(exact))
    return [None]


class LabelWatch:
    """List then watch one kind in one scope (a namespace, or None: the cluster) with a label
    selector; relist after 410 Gone or any failure, with backoff and jitter."""

    def __init__(
        self,
        kube: KubeClient,
        kind: str,
        label_selector: str,
        namespace: str | None,
        on_event: EventSink,
        on_sync: SyncSink,
        *,
        patterns: Sequence[str] = (),
        server_timeout: int = SERVER_TIMEOUT_SECONDS,
        page_size: int = PAGE_SIZE,
        retry: tuple[float, float] = (RETRY_MIN_SECONDS, RETRY_MAX_SECONDS),
    ) -> None:
        self.kube = kube
        self.kind = kind
        self.resource = CHILD_TYPES[kind]
        self.label_selector = label_selector
        self.namespace = namespace
        self.on_event = on_event
        self.on_sync = on_sync
        self.patterns = tuple(patterns)
        self.server_timeout = server_timeout
        self.page_size = page_size
        self.retry = retry
        self._stopped = threading.Event()
        self._response: Any = None
        self._lock = threading.Lock()
        # Names the last listing and the events since showed: a relist that misses one
        # reports it DELETED (it went away during the gap).
        self._known: dict[tuple[str, str], dict[str, Any]] = {}
        # Requests sent, for tests: (verb, path, query).
        self.requests: list[tuple[str, str, dict[str, str]]] = []

    # -- the asyncio side -------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        """Watch until `stop` is set; events and sync changes are delivered on this loop.
        Returns early only if the watch thread died (a bug): the caller's health check
        sees the task done."""
        loop = asyncio.get_running_loop()
        died: asyncio.Future[None] = loop.create_future()

        def deliver(callback: Callable[..., None], *args: Any) -> None:
            def call() -> None:
                if not stop.is_set():
                    callback(*args)

            with contextlib.suppress(RuntimeError):  # the loop closed at shutdown
                loop.call_soon_threadsafe(call)

        def main() -> None:
            try:
                self._loop(
                    lambda t, o: deliver(self.on_event, t, o), lambda s: deliver(self.on_sync, s)
                )
            except BaseException as exc:  # reported, never silent
                log.exception("%s watch %s stopped", self.kind, self._where())
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(_set_exception, died, exc)
                return
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_set_result, died)

        thread = threading.Thread(
            target=main, name=f"watch-{self.resource.plural}-{self.namespace or 'all'}", daemon=True
        )
        thread.start()
        stopping: asyncio.Future[Any] = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait([stopping, died], return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            self.stop()
            self.on_sync(False)
        if died.done() and not stop.is_set():
            died.result()  # re-raises what killed the thread

    def stop(self) -> None:
        self._stopped.set()
        with self._lock:
            response = self._response
        if response is not None:
            _shutdown(response)

    # -- the thread's side -------------------------------------------------------------------
    def _where(self) -> str:
        return f"in {self.namespace}" if self.namespace else "cluster-wide"

    def _path(self) -> str:
        if self.namespace is not None:
            return self.resource.path(self.namespace)
        prefix = (
            "/api/v1" if self.resource.api_version == "v1" else f"/apis/{self.resource.api_version}"
        )
        return f"{prefix}/{self.resource.plural}"

    def _loop(self, on_event: EventSink, on_sync: SyncSink) -> None:
        version: str | None = None
        failures = 0
        while not self._stopped.is_set():
            try:
                if version is None:
                    version = self._relist(on_event)
                    on_sync(True)
                version = self._watch(version, on_event)
                failures = 0
                if version is None:
                    on_sync(False)  # 410 Gone: relisted at once
            except KubeError as exc:
                on_sync(False)
                version = None
                failures += 1
                delay = min(self.retry[1], self.retry[0] * 2 ** (failures - 1))
                delay *= random.uniform(0.5, 1.0)
                if isinstance(exc, NotFound):
                    # The CRD is not served (not installed, or removed): look again later.
                    delay = max(delay, min(self.retry[1], 10 * self.retry[0]))
                    log.info("%s not served; watching again in %.0fs", self.kind, delay)
                else:
                    log.warning(
                        "%s watch %s broke off (%s); relisting in %.1fs",
                        self.kind,
                        self._where(),
                        exc,
                        delay,
                    )
                self._stopped.wait(delay)

    def _served_here(self, obj: Mapping[str, Any]) -> bool:
        namespace = (obj.get("metadata") or {}).get("namespace") or ""
        return namespace_matches(namespace, self.patterns)

    def _relist(self, on_event: EventSink) -> str:
        """List every labelled object (in pages); report objects gone since the last listing
        as DELETED and the listed ones with type None. Returns the list's resourceVersion."""
        listed: dict[tuple[str, str], dict[str, Any]] = {}
        token = ""
        while True:
            query = {"labelSelector": self.label_selector, "limit": str(self.page_size)}
            if token:
                query["continue"] = token
            page = self._get_json(query)
            for item in page.get("items") or ():
                item.setdefault("apiVersion", self.resource.api_version)
                item.setdefault("kind", self.kind)
                if self._served_here(item):
                    meta = item["metadata"]
                    listed[(meta["namespace"], meta["name"])] = item
            meta = page.get("metadata") or {}
            token = meta.get("continue") or ""
            if not token:
                version = str(meta.get("resourceVersion") or "")
                break
        for key in self._known.keys() - listed.keys():
            on_event("DELETED", self._known[key])
        self._known = {key: _stub(item) for key, item in listed.items()}
        for item in listed.values():
            on_event(None, item)
        return version

    def _watch(self, version: str, on_event: EventSink) -> str | None:
        """One watch request from `version`; returns the version to continue from, or None
        when the server says it is too old (410 Gone: relist)."""
        query = {
            "labelSelector": self.label_selector,
            "watch": "true",
            "allowWatchBookmarks": "true",
            "resourceVersion": version,
            "timeoutSeconds": str(self.server_timeout),
        }
        response = self._send(query, timeout=(10.0, self.server_timeout + 30.0))
        with self._lock:
            self._response = response
        try:
            if self._stopped.is_set():
                return version
            for line in _lines(response):
                event = json.loads(line)
                type_, obj = event.get("type"), event.get("object") or {}
                if type_ == "ERROR":
                    if obj.get("code") == 410:
                        return None
                    raise _error("WATCH", self._path(), int(obj.get("code") or 0), json.dumps(obj))
                version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
                if type_ == "BOOKMARK" or not self._served_here(obj):
                    continue
                obj.setdefault("apiVersion", self.resource.api_version)
                obj.setdefault("kind", self.kind)
                meta = obj["metadata"]
                key = (meta["namespace"], meta["name"])
                if type_ == "DELETED":
                    self._known.pop(key, None)
                else:
                    self._known[key] = _stub(obj)
                on_event(type_, obj)
        except KubeError:
            raise
        except Exception as exc:
            if self._stopped.is_set():
                return version  # our own shutdown of the response
            # A connection lost mid-stream (urllib3's ProtocolError is no OSError), or a
            # line cut short.
            if isinstance(exc, ValueError) or _is_transport_error(exc):
                raise Transient(f"watch {self._path()}: {exc}") from exc
            raise
        finally:
            with self._lock:
                self._response = None
            _shutdown(response)
        return version

    def _send(self, query: Mapping[str, str], timeout: Any = None) -> Any:
        self.requests.append(("GET", self._path(), dict(query)))
        return self.kube.send("GET", self._path(), query=list(query.items()), timeout=timeout)

    def _get_json(self, query: Mapping[str, str]) -> dict[str, Any]:
        response = self._send(query)
        try:
            data = response.read()
        except Exception as exc:
            if not _is_transport_error(exc):
                raise
            raise Transient(f"list {self._path()}: {exc}") from exc
        result: dict[str, Any] = json.loads(data or b"{}")
        return result


def _stub(obj: Mapping[str, Any]) -> dict[str, Any]:
    """What a synthesised DELETED event carries: the object's identity and owners."""
    meta = obj.get("metadata") or {}
    return {
        "apiVersion": obj.get("apiVersion"),
        "kind": obj.get("kind"),
        "metadata": {
            k: meta[k]
            for k in ("name", "namespace", "uid", "resourceVersion", "ownerReferences", "labels")
            if k in meta
        },
    }


def _lines(response: Any) -> Iterator[bytes]:
    """The newline-delimited JSON events of a watch response, as they arrive."""
    raw = getattr(response, "response", response)  # the client's RESTResponse wraps urllib3's
    buffer = b""
    for chunk in raw.stream(amt=None, decode_content=True):
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            if line.strip():
                yield line
    if buffer.strip():
        yield buffer


def _shutdown(response: Any) -> None:
    raw = getattr(response, "response", response)
    for method in ("shutdown", "release_conn"):
        with contextlib.suppress(Exception):
            getattr(raw, method)()


def _is_transport_error(exc: BaseException) -> bool:
    import urllib3

    return isinstance(exc, (urllib3.exceptions.HTTPError, OSError))


def _set_result(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _set_exception(future: asyncio.Future[None], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
