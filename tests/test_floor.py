"""The warm-floor policy: worked examples, then invariants checked by hypothesis."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ccs_operator.floor import (
    DAY_SECONDS,
    FloorDecision,
    FloorObservation,
    FloorPolicy,
    FloorReason,
    FloorState,
    Instant,
    PrewarmPolicy,
    decide,
)

POLICY = FloorPolicy(min_replicas=2, max_replicas=10, target_ms=100.0, cooldown_seconds=300)
T0 = 1_700_000_000.0


def obs(
    latency: float | None,
    ready: int,
    now: Instant = T0,
    history: int | None = None,
    hint: int | None = None,
) -> FloorObservation:
    return FloorObservation(
        queue_latency_ms=latency,
        ready_replicas=ready,
        now=now,
        prewarm_history=history,
        demand_hint=hint,
    )


def step(
    policy: FloorPolicy, state: FloorState, observation: FloorObservation
) -> tuple[FloorDecision, FloorState]:
    d = decide(policy, state, observation)
    return d, d.state


# --- worked examples -------------------------------------------------------------------


def test_reasons_are_camel_case_strings() -> None:
    assert FloorReason.NO_DATA == "NoData"
    assert FloorReason.QUEUE_LATENCY_ABOVE_TARGET == "QueueLatencyAboveTarget"
    for reason in FloorReason:
        assert reason.value[0].isupper() and " " not in reason.value


def test_raise_is_proportional_to_the_excess() -> None:
    d = decide(POLICY, FloorState(2), obs(300.0, ready=2))
    assert (d.floor, d.reason, d.changed) == (6, FloorReason.QUEUE_LATENCY_ABOVE_TARGET, True)
    assert d.state.last_change_at == T0 and d.state.last_scale_up_at == T0


def test_small_excess_still_raises_one_step_above_ready() -> None:
    d = decide(POLICY, FloorState(2), obs(101.0, ready=4))
    # ceil(4 * 1.01) = 5 = ready + step: the HPA already runs 4, so the floor must pass 4.
    assert d.floor == 5


def test_scale_up_step_is_a_minimum() -> None:
    policy = FloorPolicy(2, 10, 100.0, scale_up_step=3)
    assert decide(policy, FloorState(2), obs(110.0, ready=2)).floor == 5


def test_raise_capped_at_max() -> None:
    d = decide(POLICY, FloorState(8), obs(5000.0, ready=8))
    assert (d.floor, d.reason) == (10, FloorReason.QUEUE_LATENCY_ABOVE_TARGET)
    d = decide(POLICY, FloorState(10), obs(5000.0, ready=10))
    assert (d.floor, d.reason, d.changed) == (10, FloorReason.AT_MAXIMUM, False)


def test_infinite_latency_goes_to_max() -> None:
    # rate(queue time) > 0 while no request succeeds: x/0 = +Inf, the worst case.
    assert decide(POLICY, FloorState(2), obs(math.inf, ready=2)).floor == 10


def test_pending_replicas_are_not_raised_again() -> None:
    # Floor 6, only 2 ready: the 2 produced 250ms; 2 * 2.5 = 5 <= 6 already on the way.
    d = decide(POLICY, FloorState(6, last_change_at=T0 - 30), obs(250.0, ready=2))
    assert (d.floor, d.reason, d.changed) == (6, FloorReason.AWAITING_READY_REPLICAS, False)
    # ...but if even the pending capacity is not enough, raise to what the ready ones imply.
    d = decide(POLICY, FloorState(6, last_change_at=T0 - 30), obs(450.0, ready=2))
    assert d.floor == 9


@pytest.mark.parametrize("latency", [None, math.nan, -1.0])
def test_no_data_holds(latency: float | None) -> None:
    state = FloorState(7, last_change_at=T0 - 10_000, below_watermark_since=T0 - 10_000)
    d = decide(POLICY, state, obs(latency, ready=7))
    assert (d.floor, d.reason, d.changed) == (7, FloorReason.NO_DATA, False)
    # Quiet before the gap does not count after it: lowering needs a fresh cooldown.
    assert d.state.below_watermark_since is None


def test_within_band_holds() -> None:
    d = decide(POLICY, FloorState(5, last_change_at=T0 - 10_000), obs(60.0, ready=5))
    assert (d.floor, d.reason, d.changed) == (5, FloorReason.WITHIN_BAND, False)


def test_lowering_needs_a_full_cooldown_below_the_watermark() -> None:
    state = FloorState(5, last_change_at=T0 - 10_000)
    d, state = step(POLICY, state, obs(10.0, ready=5, now=T0))
    assert (d.floor, d.reason) == (5, FloorReason.COOLING_DOWN)
    d, state = step(POLICY, state, obs(10.0, ready=5, now=T0 + 299))
    assert d.floor == 5
    d, state = step(POLICY, state, obs(10.0, ready=5, now=T0 + 300))
    assert (d.floor, d.reason, d.changed) == (4, FloorReason.QUEUE_LATENCY_BELOW_WATERMARK, True)
    # Next step down only after another cooldown.
    d, state = step(POLICY, state, obs(10.0, ready=4, now=T0 + 599))
    assert (d.floor, d.reason) == (4, FloorReason.COOLING_DOWN)
    d, state = step(POLICY, state, obs(10.0, ready=4, now=T0 + 600))
    assert d.floor == 3


def test_a_busy_sample_restarts_the_quiet_period() -> None:
    state = FloorState(5, last_change_at=T0 - 10_000)
    _, state = step(POLICY, state, obs(10.0, ready=5, now=T0))
    _, state = step(POLICY, state, obs(70.0, ready=5, now=T0 + 200))  # in band
    d, state = step(POLICY, state, obs(10.0, ready=5, now=T0 + 400))
    assert d.reason == FloorReason.COOLING_DOWN
    d, state = step(POLICY, state, obs(10.0, ready=5, now=T0 + 700))
    assert d.floor == 4


def test_recent_raise_blocks_lowering() -> None:
    state = FloorState(5, last_change_at=T0 - 100, below_watermark_since=T0 - 1000)
    assert decide(POLICY, state, obs(0.0, ready=5)).reason == FloorReason.COOLING_DOWN


def test_never_below_min() -> None:
    state = FloorState(2, last_change_at=T0 - 10_000, below_watermark_since=T0 - 10_000)
    d = decide(POLICY, state, obs(0.0, ready=2))
    assert (d.floor, d.reason) == (2, FloorReason.AT_MINIMUM)


def test_spec_change_clamps_first() -> None:
    d = decide(POLICY, FloorState(15), obs(60.0, ready=15))
    assert (d.floor, d.reason, d.changed) == (10, FloorReason.CLAMPED_TO_SPEC, True)
    d = decide(POLICY, FloorState(1), obs(None, ready=1))
    assert (d.floor, d.reason, d.changed) == (2, FloorReason.CLAMPED_TO_SPEC, True)


def test_disabled_floor_is_spec_min() -> None:
    policy = FloorPolicy(3, 10, 100.0, enabled=False)
    d = decide(policy, FloorState(7), obs(900.0, ready=7))
    assert (d.floor, d.reason, d.changed) == (3, FloorReason.FLOOR_DISABLED, True)


def test_prewarm_raises_before_the_peak_and_holds_through_it() -> None:
    policy = FloorPolicy(2, 10, 100.0, prewarm=PrewarmPolicy(enabled=True))
    d = decide(policy, FloorState(2), obs(5.0, ready=2, history=7))
    assert (d.floor, d.reason, d.changed) == (7, FloorReason.PREWARM_FOR_RECURRING_PEAK, True)
    # Quiet caused by pre-warmed idle replicas does not count toward lowering.
    assert d.state.below_watermark_since is None
    # History above max is clamped; history is ignored when pre-warm is off.
    assert decide(policy, FloorState(2), obs(5.0, ready=2, history=40)).floor == 10
    assert decide(POLICY, FloorState(2), obs(5.0, ready=2, history=7)).floor == 2


def test_prewarm_applies_without_latency_data() -> None:
    policy = FloorPolicy(2, 10, 100.0, prewarm=PrewarmPolicy(enabled=True))
    assert decide(policy, FloorState(2), obs(None, ready=2, history=5)).floor == 5


def test_demand_excludes_prewarm_and_uses_the_hint() -> None:
    policy = FloorPolicy(2, 10, 100.0, prewarm=PrewarmPolicy(enabled=True))
    state = FloorState(2, last_change_at=T0 - 10_000)
    # Pre-warm holds 8 idle replicas: demand is what the load needed (2), not 8, or the
    # pre-warm would creep one lead time earlier every day.
    assert decide(policy, state, obs(5.0, ready=8, history=8)).demand == 2
    assert decide(policy, state, obs(5.0, ready=8, history=8, hint=6)).demand == 6
    assert decide(policy, state, obs(80.0, ready=8)).demand == 8


def test_datetimes_are_accepted_and_must_be_aware() -> None:
    t = datetime(2025, 1, 1, tzinfo=UTC)
    state = FloorState(5, last_change_at=t - timedelta(hours=1))
    d, state = step(POLICY, state, obs(1.0, ready=5, now=t))
    d = decide(POLICY, state, FloorObservation(1.0, 5, t + timedelta(seconds=300)))
    assert d.floor == 4 and d.state.last_change_at == t + timedelta(seconds=300)
    with pytest.raises(ValueError, match="timezone-aware"):
        decide(POLICY, state, FloorObservation(1.0, 5, datetime(2025, 1, 1)))


def test_from_spec_reads_the_ccs_defaults() -> None:
    from ccs_operator.api import ServiceSpec

    spec = ServiceSpec.model_validate({"model": {"name": "m", "repository": "s3://b/m"}})
    policy = FloorPolicy.from_spec(spec)
    assert (policy.min_replicas, policy.max_replicas, policy.target_ms) == (2, 10, 100.0)
    assert policy.lower_watermark_ratio == 0.5 and policy.cooldown_seconds == 300
    assert policy.prewarm.period_seconds == DAY_SECONDS and not policy.prewarm.enabled


@pytest.mark.parametrize(
    "kwargs",
    [
        {"min_replicas": 5, "max_replicas": 4},
        {"target_ms": 0.0},
        {"target_ms": math.nan},
        {"lower_watermark_ratio": 1.0},
        {"scale_up_step": 0},
        {"cooldown_seconds": -1.0},
    ],
)
def test_policy_validation(kwargs: dict[str, float]) -> None:
    base: dict[str, object] = {"min_replicas": 2, "max_replicas": 10, "target_ms": 100.0}
    with pytest.raises(ValueError):
        FloorPolicy(**{**base, **kwargs})  # type: ignore[arg-type]


# --- invariants ------------------------------------------------------------------------

latencies = st.one_of(
    st.none(),
    st.just(math.nan),
    st.just(math.inf),
    st.floats(min_value=0, max_value=10_000, allow_nan=False),
)


@st.composite
def policies(draw: st.DrawFn) -> FloorPolicy:
    lo = draw(st.integers(0, 20))
    hi = draw(st.integers(max(lo, 1), 40))
    return FloorPolicy(
        min_replicas=lo,
        max_replicas=hi,
        target_ms=draw(st.floats(1, 1000)),
        lower_watermark_ratio=draw(st.floats(0.05, 0.95)),
        scale_up_step=draw(st.integers(1, 5)),
        cooldown_seconds=draw(st.sampled_from([0, 30, 300, 900])),
        prewarm=PrewarmPolicy(enabled=draw(st.booleans())),
        enabled=draw(st.booleans()),
    )


@st.composite
def states(draw: st.DrawFn) -> FloorState:
    last = draw(st.one_of(st.none(), st.floats(T0 - 5000, T0)))
    quiet = draw(st.one_of(st.none(), st.floats(T0 - 5000, T0)))
    return FloorState(
        current_floor=draw(st.integers(0, 50)), last_change_at=last, below_watermark_since=quiet
    )


observations = st.builds(
    FloorObservation,
    queue_latency_ms=latencies,
    ready_replicas=st.integers(0, 50),
    now=st.just(T0),
    prewarm_history=st.one_of(st.none(), st.integers(0, 60)),
    demand_hint=st.one_of(st.none(), st.integers(0, 60)),
)


@settings(max_examples=400, deadline=None)
@given(policies(), states(), observations)
def test_floor_always_within_spec(p: FloorPolicy, s: FloorState, o: FloorObservation) -> None:
    d = decide(p, s, o)
    assert p.min_replicas <= d.floor <= p.max_replicas
    assert p.min_replicas <= d.demand <= p.max_replicas
    assert d.changed == (d.floor != s.current_floor)
    assert d.state.current_floor == d.floor


@settings(max_examples=300, deadline=None)
@given(policies(), states(), observations)
def test_never_lowers_on_no_data(p: FloorPolicy, s: FloorState, o: FloorObservation) -> None:
    o = FloorObservation(None, o.ready_replicas, o.now, o.prewarm_history)
    if p.enabled:
        assert decide(p, s, o).floor >= p.clamp(s.current_floor)


@settings(max_examples=300, deadline=None)
@given(policies(), states(), observations)
def test_lowers_by_at_most_one(p: FloorPolicy, s: FloorState, o: FloorObservation) -> None:
    if p.enabled:
        assert decide(p, s, o).floor >= p.clamp(s.current_floor) - 1


@settings(max_examples=300, deadline=None)
@given(policies(), states(), observations, st.floats(1.0001, 100))
def test_raises_at_least_one_step_above_target(
    p: FloorPolicy, s: FloorState, o: FloorObservation, excess: float
) -> None:
    current = p.clamp(s.current_floor)
    o = FloorObservation(p.target_ms * excess, o.ready_replicas, o.now, o.prewarm_history)
    d = decide(p, s, o)
    if not p.enabled:
        return
    if o.ready_replicas >= current:
        # No capacity pending: at least one step above what runs now (or the maximum).
        assert d.floor >= min(o.ready_replicas + p.scale_up_step, p.max_replicas)
        assert d.floor >= min(current + p.scale_up_step, p.max_replicas)
    else:
        assert d.floor >= current  # replicas still starting: hold at least


@settings(max_examples=300, deadline=None)
@given(
    policies(),
    states(),
    observations,
    st.floats(0, 10_000, allow_nan=False),
    st.floats(0, 10_000, allow_nan=False),
)
def test_monotone_in_latency(
    p: FloorPolicy, s: FloorState, o: FloorObservation, a: float, b: float
) -> None:
    lo, hi = sorted((a, b))
    low = decide(p, s, FloorObservation(lo, o.ready_replicas, o.now, o.prewarm_history))
    high = decide(p, s, FloorObservation(hi, o.ready_replicas, o.now, o.prewarm_history))
    assert low.floor <= high.floor


trace_steps = st.lists(
    st.tuples(
        st.floats(1, 400),  # seconds since the previous evaluation
        latencies,
        st.integers(0, 30),  # ready replicas
        st.one_of(st.none(), st.integers(0, 30)),  # pre-warm history
    ),
    min_size=1,
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(policies(), st.integers(0, 50), trace_steps)
def test_trace_never_lowers_twice_within_a_cooldown(
    p: FloorPolicy, start: int, trace: list[tuple[float, float | None, int, int | None]]
) -> None:
    state = FloorState(p.clamp(start))
    now = T0
    last_lowered: float | None = None
    for dt, latency, ready, history in trace:
        now += dt
        d = decide(p, state, FloorObservation(latency, ready, now, history))
        assert p.min_replicas <= d.floor <= p.max_replicas
        if p.enabled and d.floor < state.current_floor:
            assert d.floor == state.current_floor - 1
            assert latency is not None and latency < p.target_ms * p.lower_watermark_ratio
            if last_lowered is not None:
                assert now - last_lowered >= p.cooldown_seconds
            last_lowered = now
        state = d.state
