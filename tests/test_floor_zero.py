"""The floor with spec.replicas.min 0: it may be 0, the M/M/c sizing of no replicas divides by
nothing, an idle service's floor reaches 0, and pre-warm wakes a service from zero ahead of a
recurring peak (with or without a measured service time).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ccs_operator.core.api import parse_service
from ccs_operator.core.floor import (
    ZERO_BASE_RATE,
    FloorObservation,
    FloorPolicy,
    FloorReason,
    FloorState,
    PrewarmPolicy,
    decide,
)
from ccs_operator.core.promql import MIN_HISTORY_RATE
from ccs_operator.core.queueing import erlang_c, replicas_for, wait_quantile, wait_tail

T0 = 1_700_000_000.0
S = 0.02
ZERO = FloorPolicy(
    min_replicas=0,
    max_replicas=8,
    target_ms=100.0,
    cooldown_seconds=300,
    instances_per_replica=2,
    horizon_seconds=240,
    prewarm=PrewarmPolicy(enabled=True, lead_time_seconds=240),
)


def asleep(now: float = T0, rise: float | None = None) -> FloorObservation:
    """What the floor loop reports for a service at zero: no pod, so no latency and no
    arrivals counted (rate 0, not unknown), maybe pre-warm history."""
    return FloorObservation(
        queue_latency_ms=None,
        ready_replicas=0,
        now=now,
        arrival_rps=0.0,
        pending_requests=0.0,
        prewarm_rise=rise,
    )


def serving(rate: float, ready: int, now: float, latency: float = 0.0) -> FloorObservation:
    return FloorObservation(
        queue_latency_ms=latency,
        ready_replicas=ready,
        now=now,
        arrival_rps=rate,
        pending_requests=0.0,
        busy_instances=rate * S,
    )


def test_the_history_clamp_is_the_one_prom_uses() -> None:
    assert ZERO_BASE_RATE == MIN_HISTORY_RATE


def test_queueing_with_no_load_needs_no_replica_and_never_divides_by_zero() -> None:
    assert replicas_for(0.0, servers=2, service_s=S, target_s=0.1) == 0
    assert replicas_for(math.nan, servers=2, service_s=S, target_s=0.1) == 0
    assert erlang_c(2, 0.0) == 0.0
    assert wait_tail(2, S, 0.0, 0.1) == 0.0
    assert wait_quantile(2, S, 0.0, 0.99) == 0.0


def test_a_service_at_zero_stays_at_zero_without_arrivals_or_history() -> None:
    d = decide(ZERO, FloorState(0), asleep())
    assert (d.floor, d.reason, d.changed) == (0, FloorReason.AT_MINIMUM, False)
    measured = dataclasses.replace(FloorState(0), service_seconds=S)
    d = decide(ZERO, measured, asleep())
    assert d.floor == 0 and d.demand == 0


def test_prewarm_wakes_a_service_from_zero_without_a_measured_service_time() -> None:
    """After a restart at zero nothing sizes a replica, but the recurring peak still comes:
    one replica wakes, and its counters size the rest."""
    d = decide(ZERO, FloorState(0), asleep(rise=20.0))
    assert (d.floor, d.reason) == (1, FloorReason.PREWARM_FOR_RECURRING_PEAK)
    assert "waking one replica" in d.message
    # No history, or a history that never rose to the base rate: no wake.
    assert decide(ZERO, FloorState(0), asleep(rise=None)).floor == 0
    assert decide(ZERO, FloorState(0), asleep(rise=0.5)).floor == 0
    off = dataclasses.replace(ZERO, prewarm=PrewarmPolicy(enabled=False))
    assert decide(off, FloorState(0), asleep(rise=20.0)).floor == 0


def test_prewarm_wakes_a_measured_service_from_zero_for_the_peak_it_saw() -> None:
    """With a service time known, the wake is a pre-warm episode like any other: the rise
    is applied to the history's base rate (today's is not counted at zero)."""
    state = dataclasses.replace(FloorState(0), service_seconds=S)
    d = decide(ZERO, state, asleep(rise=10.0))  # 0.1/s * 10 = 1 request/s ahead
    assert (d.floor, d.reason) == (1, FloorReason.PREWARM_FOR_RECURRING_PEAK)
    assert d.accounting.prewarm.value == "Active"
    assert d.state.prewarm_episode is not None  # judged afterwards, as every episode


def test_a_floor_above_zero_falls_to_zero_once_idle_for_a_cooldown() -> None:
    state = FloorState(0)
    now = T0
    for _ in range(10):  # traffic: 40 requests/s
        d = decide(ZERO, state, serving(40.0, max(state.current_floor, 1), now, latency=5.0))
        state, now = d.state, now + 30
    assert state.current_floor >= 1
    floors = []
    for _ in range(80):  # then nothing, the idle queue reads 0 ms (promql.py's clamp)
        d = decide(ZERO, state, serving(0.0, state.current_floor, now, latency=0.0))
        floors.append(d.floor)
        state, now = d.state, now + 30
    assert floors[-1] == 0
    assert all(b <= a for a, b in itertools.pairwise(floors))  # only down


rates = st.one_of(st.none(), st.just(0.0), st.just(math.nan), st.floats(0, 500))
latencies = st.one_of(st.none(), st.just(math.nan), st.just(math.inf), st.floats(0, 5000))


@settings(max_examples=400, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.floats(1, 600),
            rates,
            latencies,
            st.integers(0, 8),
            st.one_of(st.none(), st.floats(0, 200)),
            st.one_of(st.none(), st.floats(0, 50)),
        ),
        min_size=1,
        max_size=40,
    ),
    st.integers(1, 8),
    st.booleans(),
)
def test_min_zero_traces_stay_in_bounds_and_never_fail(
    trace: list[tuple[float, float | None, float | None, int, float | None, float | None]],
    max_replicas: int,
    prewarm: bool,
) -> None:
    """Whatever the signals (none, NaN, 0 replicas ready, a stuck queue), a min-0 policy
    decides without an exception, inside [0, max], and lowers only on a quiet queue."""
    policy = dataclasses.replace(
        ZERO, max_replicas=max_replicas, prewarm=PrewarmPolicy(enabled=prewarm)
    )
    state = FloorState(0)
    now = T0
    for dt, rate, latency, ready, rise, busy in trace:
        now += dt
        d = decide(
            policy,
            state,
            FloorObservation(
                latency, ready, now, arrival_rps=rate, busy_instances=busy, prewarm_rise=rise
            ),
        )
        assert 0 <= d.floor <= max_replicas
        assert 0 <= d.demand <= max_replicas
        if d.floor < state.current_floor:
            assert latency is not None and latency < policy.target_ms / 2
        state = d.state


# --- the floor loop: a service at zero is asleep, not missing its data -------------------


def _asleep_body(name: str, **floor_spec: Any) -> dict[str, Any]:
    from test_floorloop import body

    b = body(name, floor_spec or None, floor=0, readyReplicas=0, replicas=0)
    b["spec"]["replicas"] = {"min": 0, "max": 4}
    b["spec"]["autoscaling"]["requestsPerSecond"] = 10
    return b


@pytest.mark.asyncio
async def test_the_floor_loop_reads_no_series_at_zero_as_no_arrivals() -> None:
    from test_floorloop import condition, make, status

    loop, reconciler, _, _ = make(_asleep_body("idle"))
    await loop.tick()  # Prometheus has no series for it: no pod runs
    assert status(reconciler, "idle")["floor"] == 0
    active = condition(reconciler, "idle", "FloorControllerActive")
    assert (active["status"], active["reason"]) == ("True", "Evaluating")
    available = condition(reconciler, "idle", "MetricsAvailable")
    assert (available["status"], available["reason"]) == ("Unknown", "ScaledToZero")
    assert not reconciler.enqueued


@pytest.mark.asyncio
async def test_the_floor_loop_wakes_a_service_from_zero_ahead_of_a_recurring_peak() -> None:
    from test_floorloop import make, status

    loop, reconciler, prometheus, _ = make(_asleep_body("peaky", prewarm={"enabled": True}))
    prometheus.history[("ns", "peaky")] = 30.0  # arrivals rose to 3/s on both last days
    await loop.tick()
    assert status(reconciler, "peaky")["floor"] == 1
    assert status(reconciler, "peaky")["floorReason"] == "PrewarmForRecurringPeak"
    assert reconciler.enqueued == [("ns", "peaky")]  # the reconcile renders minReplicas 1
    assert any(reason == "FloorRaised" for _, reason, _ in reconciler.events)


@pytest.mark.asyncio
async def test_keda_mode_reads_kedas_hpa_for_the_accounting_at_most_once_a_minute() -> None:
    from test_floorloop import body, make, serving

    b = body("k")
    b["spec"]["autoscaling"].update(engine="KEDA", requestsPerSecond=100)
    loop, reconciler, prometheus, clock = make(b)
    prometheus.signals[("ns", "k")] = serving(300.0)
    reads: list[tuple[str, str, str]] = []

    async def get(kind: str, namespace: str, name: str) -> dict[str, Any]:
        reads.append((kind, namespace, name))
        return {
            "status": {
                "currentReplicas": 2,
                "currentMetrics": [
                    {"type": "External",
                     "external": {"metric": {"name": "s0-prometheus"},
                                  "current": {"averageValue": "150"}}},
                ],
            }
        }

    reconciler.kube.get = get  # type: ignore[attr-defined]
    for _ in range(4):
        await loop.tick()
        clock[0] += 30
    assert reads == [("HorizontalPodAutoscaler", "ns", "keda-hpa-k")] * 2
    ccs = parse_service(b)
    assert loop._hpa_alone(ccs) == 3  # ceil(2 * 150 / 100)
