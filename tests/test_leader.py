"""Leader election: any failed renew (urllib3's own errors included, and hung calls) counts,
losing the lease fences every write at once, and the keeper's death is never silent."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
import urllib3
from kubernetes import client as k8s

from ccs_operator.clients.kube import Fenced, KubeClient
from ccs_operator.clients.leader import LeaseElector


class FakeLeases:
    """CoordinationV1Api with one Lease; `fail` makes every call raise it."""

    def __init__(self) -> None:
        self.lease: k8s.V1Lease | None = None
        self.fail: BaseException | None = None
        self.hang: threading.Event | None = None
        self.timeouts: list[Any] = []

    def _check(self, kwargs: dict[str, Any]) -> None:
        self.timeouts.append(kwargs.get("_request_timeout"))
        if self.hang is not None:
            self.hang.wait(10)
        if self.fail is not None:
            raise self.fail

    def read_namespaced_lease(self, name: str, namespace: str, **kwargs: Any) -> k8s.V1Lease:
        self._check(kwargs)
        if self.lease is None:
            raise k8s.ApiException(status=404)
        return self.lease

    def create_namespaced_lease(self, namespace: str, body: k8s.V1Lease, **kwargs: Any) -> None:
        self._check(kwargs)
        self.lease = body

    def replace_namespaced_lease(
        self, name: str, namespace: str, body: k8s.V1Lease, **kwargs: Any
    ) -> None:
        self._check(kwargs)
        self.lease = body


def elector(leases: FakeLeases) -> LeaseElector:
    e = LeaseElector(k8s.ApiClient(), "lease", "ns", identity="me", lease_seconds=3)
    e._api = leases  # type: ignore[assignment]
    e.retry_seconds = 0.05
    return e


async def leading(
    leases: FakeLeases, hang: threading.Event | None = None
) -> tuple[LeaseElector, asyncio.Event, asyncio.Event, asyncio.Task[None], list[bool]]:
    """An elector that acquired the lease and keeps it; `fenced` records on_lost calls."""
    e = elector(leases)
    stop, lost = asyncio.Event(), asyncio.Event()
    assert await e.acquire(stop)
    leases.hang = hang
    fenced: list[bool] = []
    keeper = asyncio.create_task(e.keep(lost, stop, on_lost=lambda: fenced.append(True)))
    return e, stop, lost, keeper, fenced


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "error",
    [
        urllib3.exceptions.MaxRetryError(None, "/apis/coordination.k8s.io", "refused"),  # type: ignore[arg-type]
        urllib3.exceptions.ProtocolError("connection aborted"),
        ConnectionRefusedError(111, "refused"),
        k8s.ApiException(status=500),
    ],
    ids=["MaxRetryError", "ProtocolError", "OSError", "ApiException"],
)
async def test_a_refused_renew_loses_the_lease_and_fences_writes(error: BaseException) -> None:
    """Defect: urllib3's MaxRetryError/ProtocolError are neither ApiException nor OSError;
    one refused renew killed the keeper task unobserved, /healthz still said leader."""
    leases = FakeLeases()
    e, _stop, lost, keeper, fenced = await leading(leases)
    await asyncio.sleep(1.2)  # renews every second (a third of the lease) succeed first
    assert not lost.is_set()
    leases.fail = error
    await asyncio.wait_for(lost.wait(), timeout=5.0)
    assert fenced == [True]  # the fence ran before anyone could see `lost`
    assert keeper.done() and keeper.exception() is None
    # Every lease call is bounded: none may outlive a third of the lease.
    assert all(t is not None and t <= e.lease_seconds for t in leases.timeouts)


@pytest.mark.asyncio
async def test_a_hung_renew_counts_as_failed() -> None:
    leases = FakeLeases()
    _e, _stop, lost, keeper, _ = await leading(leases, hang=threading.Event())
    try:
        await asyncio.wait_for(lost.wait(), timeout=8.0)
    finally:
        assert leases.hang is not None
        leases.hang.set()
    assert keeper.done()


@pytest.mark.asyncio
async def test_a_clean_stop_is_not_a_loss() -> None:
    leases = FakeLeases()
    _e, stop, lost, keeper, fenced = await leading(leases)
    await asyncio.sleep(0.05)
    stop.set()
    await asyncio.wait_for(keeper, timeout=2.0)
    assert not lost.is_set() and not fenced


@pytest.mark.asyncio
async def test_a_fenced_client_sends_no_write() -> None:
    """After the fence, no PATCH/POST/DELETE leaves the process (no network is touched:
    the client refuses before any request is built)."""
    kube = KubeClient(k8s.ApiClient(k8s.Configuration(host="http://127.0.0.1:9")), workers=1)
    kube.fence()
    try:
        with pytest.raises(Fenced):
            await kube.apply(
                {
                    "kind": "ConfigMap",
                    "apiVersion": "v1",
                    "metadata": {"name": "a", "namespace": "b"},
                }
            )
        with pytest.raises(Fenced):
            await kube.apply_service_status("b", "a", {"floor": 3}, "ccs-operator-floor")
        with pytest.raises(Fenced):
            await kube.delete("ConfigMap", "b", "a", "uid")
    finally:
        kube.close()
