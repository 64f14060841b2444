"""Events are aggregated as client-go's correlator does: a repeat bumps the count."""

from __future__ import annotations

from typing import Any

import pytest

from ccs_operator.clients.kube import EVENT_CORRELATION_SECONDS, EventRecorder, NotFound, Transient


class FakeCalls:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, Any]] = []
        self.fail_next: Exception | None = None
        self._n = 0

    async def _call(self, method: str, path: str, *, body: Any = None, **_: Any) -> Any:
        self.calls.append((method, path, body))
        if self.fail_next is not None:
            error, self.fail_next = self.fail_next, None
            raise error
        if method == "POST":
            self._n += 1
            return {"metadata": {"name": f"svc.{self._n}"}}
        return {}


BODY = {"metadata": {"name": "svc", "namespace": "ns", "uid": "u1"}}


@pytest.mark.asyncio
async def test_a_repeated_event_bumps_the_count_instead_of_adding_another() -> None:
    kube = FakeCalls()
    now = [0.0]
    events = EventRecorder(kube, clock=lambda: now[0])  # type: ignore[arg-type]
    for _ in range(3):
        events(BODY, "Warning", "PrometheusUnavailable", "Prometheus unreachable")
        await events.drain()
    assert [c[0] for c in kube.calls] == ["POST", "PATCH", "PATCH"]
    assert kube.calls[-1][1].endswith("/events/svc.1")
    assert kube.calls[-1][2]["count"] == 3
    # Another reason is another event; and after the window a new one starts.
    events(BODY, "Normal", "FloorRaised", "replica floor 1 -> 2")
    await events.drain()
    now[0] = EVENT_CORRELATION_SECONDS + 1
    events(BODY, "Warning", "PrometheusUnavailable", "Prometheus unreachable")
    await events.drain()
    assert [c[0] for c in kube.calls] == ["POST", "PATCH", "PATCH", "POST", "POST"]


@pytest.mark.asyncio
async def test_an_expired_event_is_posted_again_and_failures_are_not_raised() -> None:
    kube = FakeCalls()
    events = EventRecorder(kube, clock=lambda: 0.0)  # type: ignore[arg-type]
    events(BODY, "Warning", "R", "m")
    await events.drain()
    kube.fail_next = NotFound("gone", 404)  # the server's event TTL removed it
    events(BODY, "Warning", "R", "m")
    await events.drain()
    assert [c[0] for c in kube.calls] == ["POST", "PATCH", "POST"]
    kube.fail_next = Transient("unreachable")
    events(BODY, "Warning", "Other", "m")
    await events.drain()  # logged, not raised
