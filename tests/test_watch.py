"""The operator's own label-filtered watch (ServiceMonitors), against a scripted API server:
every list and watch carries the selector, a relist after 410 Gone reports what went away in
the gap, a 404 (CRD not served) marks the kind unwatched and is retried, never fatal; and,
wired to the reconciler, a ServiceMonitor deleted or edited by hand is applied back at once.
"""

from __future__ import annotations

import asyncio
import copy
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from ccs_operator.clients.kube import NotFound
from ccs_operator.clients.watch import LabelWatch, namespace_matches, watch_scopes
from ccs_operator.config import OperatorConfig
from ccs_operator.controllers.handlers import MANAGED_BY_SELECTOR, own_watches
from fakekube import FakeKube
from test_controller import NS, applies, make, service, settle


class Response:
    def __init__(self, body: Any = None, lines: list[dict[str, Any]] | None = None) -> None:
        self.body = body
        self.lines = lines or []
        self.closed = threading.Event()

    def read(self) -> bytes:
        return json.dumps(self.body).encode()

    def stream(self, amt: Any = None, decode_content: bool = True) -> Iterator[bytes]:
        for line in self.lines:
            yield json.dumps(line).encode() + b"\n"

    def shutdown(self) -> None:
        self.closed.set()


class Server:
    """Answers LabelWatch's requests from a script: one entry per request (a Response, or an
    exception to raise); when the script is done, watches block until shut down."""

    def __init__(self, script: list[Any]) -> None:
        self.script = list(script)
        self.requests: list[dict[str, str]] = []
        self.done = threading.Event()

    def send(self, method: str, path: str, *, query: Any = None, timeout: Any = None) -> Any:
        query = dict(query or ())
        self.requests.append({"path": path, **query})
        if self.script:
            step = self.script.pop(0)
            if isinstance(step, BaseException):
                raise step
            return step
        self.done.set()
        return Blocking()


class Blocking(Response):
    def stream(self, amt: Any = None, decode_content: bool = True) -> Iterator[bytes]:
        self.closed.wait(5)
        return iter(())


def sm(name: str, rv: str, namespace: str = "ns", **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": f"uid-{name}",
            "resourceVersion": rv,
            "labels": {"app.kubernetes.io/managed-by": "ccs-operator"},
            "ownerReferences": [
                {"kind": "ClaudeCodeService", "name": name, "uid": "o", "controller": True}
            ],
        },
        "spec": spec,
    }


def listing(rv: str, *items: dict[str, Any]) -> Response:
    return Response({"metadata": {"resourceVersion": rv}, "items": list(items)})


async def run_watch(
    server: Server, namespace: str | None = None, patterns: tuple[str, ...] = ()
) -> tuple[list[tuple[str | None, str]], list[bool], LabelWatch]:
    kube = type("K", (), {"send": server.send})()
    events: list[tuple[str | None, str]] = []
    syncs: list[bool] = []
    watch = LabelWatch(
        kube,  # type: ignore[arg-type]
        "ServiceMonitor",
        MANAGED_BY_SELECTOR,
        namespace,
        lambda t, o: events.append((t, o["metadata"]["name"])),
        syncs.append,
        patterns=patterns,
        retry=(0.01, 0.02),
    )
    stop = asyncio.Event()
    task = asyncio.create_task(watch.run(stop))
    await asyncio.to_thread(server.done.wait, 5)
    await asyncio.sleep(0.05)  # the last events reach the loop
    stop.set()
    await asyncio.wait_for(task, 5)
    return events, syncs, watch


@pytest.mark.asyncio
async def test_every_request_carries_the_selector_and_a_relist_reports_the_gap() -> None:
    server = Server(
        [
            listing("10", sm("a", "5"), sm("b", "6")),
            Response(
                lines=[
                    {"type": "MODIFIED", "object": sm("a", "11", endpoints=[])},
                    {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "12"}}},
                    {"type": "ERROR", "object": {"code": 410, "message": "too old"}},
                ]
            ),
            listing("20", sm("a", "11")),  # b went away during the gap
            Response(lines=[{"type": "DELETED", "object": sm("a", "21")}]),
        ]
    )
    events, syncs, _ = await run_watch(server)
    assert events == [
        (None, "a"),
        (None, "b"),
        ("MODIFIED", "a"),
        ("DELETED", "b"),  # synthesised: the relist no longer holds it
        (None, "a"),
        ("DELETED", "a"),
    ]
    assert all(r["labelSelector"] == MANAGED_BY_SELECTOR for r in server.requests)
    assert server.requests[0]["path"] == "/apis/monitoring.coreos.com/v1/servicemonitors"
    watches = [r for r in server.requests if r.get("watch") == "true"]
    assert [w["resourceVersion"] for w in watches[:3]] == ["10", "20", "21"]
    assert watches[0]["allowWatchBookmarks"] == "true"
    assert syncs == [True, False, True, False]  # listed, 410, relisted, stopped


@pytest.mark.asyncio
async def test_a_crd_not_served_marks_the_kind_unwatched_and_is_retried() -> None:
    server = Server(
        [
            NotFound("GET servicemonitors: not found", 404),
            NotFound("GET servicemonitors: not found", 404),
            listing("30", sm("a", "29")),  # the CRD is back
        ]
    )
    events, syncs, _ = await run_watch(server, namespace="team-a")
    assert events == [(None, "a")]
    assert syncs[:3] == [False, False, True]
    path = "/apis/monitoring.coreos.com/v1/namespaces/team-a/servicemonitors"
    assert server.requests[0]["path"] == path


@pytest.mark.asyncio
async def test_a_cluster_wide_watch_keeps_only_the_served_namespaces() -> None:
    server = Server(
        [
            listing("10", sm("a", "5", "op-1"), sm("b", "6", "elsewhere")),
            Response(lines=[{"type": "ADDED", "object": sm("c", "11", "elsewhere")}]),
        ]
    )
    events, _, _ = await run_watch(server, patterns=("op-*",))
    assert events == [(None, "a")]


def test_scopes_and_patterns() -> None:
    assert watch_scopes(()) == [None]
    assert watch_scopes(("team-a", "team-b")) == ["team-a", "team-b"]
    assert watch_scopes(("op-*",)) == [None]
    assert namespace_matches("op-1", ("op-*",)) and not namespace_matches("x", ("op-*",))
    assert namespace_matches("x", ("!kube-*",)) and not namespace_matches("kube-a", ("!kube-*",))
    assert namespace_matches("anything", ())


class ScriptedKube(FakeKube):
    """The fake API server, with a ServiceMonitor watch fed from its own objects."""

    def __init__(self) -> None:
        super().__init__()
        self.watch_events: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()
        self.loop = asyncio.get_running_loop()

    def send(self, method: str, path: str, *, query: Any = None, timeout: Any = None) -> Any:
        query = dict(query or ())
        assert query["labelSelector"] == MANAGED_BY_SELECTOR
        if query.get("watch") != "true":
            items = [
                copy.deepcopy(o) for (k, _, _), o in self.objects.items() if k == "ServiceMonitor"
            ]
            return listing("1", *items)
        outer = self

        class Stream(Response):
            def stream(self, amt: Any = None, decode_content: bool = True) -> Iterator[bytes]:
                while not self.closed.is_set():
                    future = asyncio.run_coroutine_threadsafe(
                        asyncio.wait_for(outer.watch_events.get(), 0.2), outer.loop
                    )
                    try:
                        type_, obj = future.result()
                    except TimeoutError:
                        continue
                    yield json.dumps({"type": type_, "object": obj}).encode() + b"\n"

        return Stream()


@pytest.mark.asyncio
async def test_a_service_monitor_deleted_or_edited_by_hand_is_restored_at_once() -> None:
    """Issue 14: ServiceMonitors were never watched; one deleted or edited by hand stayed so
    until the next resync (300 s by default). Now its watch event queues the owner."""
    reconciler, _, _ = make(service())
    kube = ScriptedKube()
    kube.objects.update(reconciler.kube.objects)  # type: ignore[attr-defined]
    reconciler.kube = kube  # type: ignore[assignment]
    stop = asyncio.Event()
    watches = [
        asyncio.create_task(watch.run(stop))
        for watch in own_watches(reconciler, "ServiceMonitor", OperatorConfig())
    ]
    reconciler.workers.start()
    try:
        reconciler.queue.add((NS, "svc"))
        await settle(reconciler)
        for _ in range(100):
            if "ServiceMonitor" in reconciler.watched_kinds:
                break
            await asyncio.sleep(0.02)
        assert "ServiceMonitor" in reconciler.watched_kinds
        assert applies(kube, "ServiceMonitor") == 1
        # Deleted by hand: the watch's DELETED queues the owner, which applies it back.
        gone = kube.objects.pop(("ServiceMonitor", NS, "svc"))
        await kube.watch_events.put(("DELETED", gone))
        for _ in range(100):
            if applies(kube, "ServiceMonitor") == 2:
                break
            await asyncio.sleep(0.02)
        await settle(reconciler)
        assert ("ServiceMonitor", NS, "svc") in kube.objects
        # Edited by hand: the same.
        edited = kube.edit("ServiceMonitor", NS, "svc", {"spec": {"endpoints": []}})
        await kube.watch_events.put(("MODIFIED", edited))
        for _ in range(100):
            if applies(kube, "ServiceMonitor") == 3:
                break
            await asyncio.sleep(0.02)
        await settle(reconciler)
        assert kube.objects[("ServiceMonitor", NS, "svc")]["spec"]["endpoints"]
        # Our own apply's event, a no-op for the cache: nothing more is applied.
        await kube.watch_events.put(
            ("MODIFIED", copy.deepcopy(kube.objects[("ServiceMonitor", NS, "svc")]))
        )
        await asyncio.sleep(0.2)
        await settle(reconciler)
        assert applies(kube, "ServiceMonitor") == 3
        # Reconciles of a watched kind read nothing back for it.
        kube.log.clear()
        reconciler.queue.add((NS, "svc"))
        await settle(reconciler)
        assert not [e for e in kube.log if e[1] == "ServiceMonitor"]
    finally:
        stop.set()
        await asyncio.gather(*watches)
        await reconciler.workers.stop()
    assert "ServiceMonitor" not in reconciler.watched_kinds
