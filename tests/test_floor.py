"""The warm-floor policy: worked examples, then invariants checked by hypothesis.

Two paths: the leading model (arrival rate, trend, pending requests, measured service
time) and the latency-only rules used when only queue latency is known.
"""

from __future__ import annotations

import dataclasses
import math
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ccs_operator.core.batchcost import CostFit, CostLine
from ccs_operator.core.floor import (
    DAY_SECONDS,
    DEFAULT_LEAD_TIME_SECONDS,
    FloorDecision,
    FloorObservation,
    FloorPolicy,
    FloorReason,
    FloorState,
    Instant,
    PrewarmPolicy,
    PrewarmState,
    decide,
)
from ccs_operator.core.queueing import (
    MAX_UTILISATION,
    replicas_for,
    safe_utilisation,
    wait_quantile,
)

POLICY = FloorPolicy(min_replicas=2, max_replicas=10, target_ms=100.0, cooldown_seconds=300)
# The leading model: two instances per replica, 20 ms of busy instance time per request.
LEAD = FloorPolicy(
    min_replicas=2,
    max_replicas=40,
    target_ms=100.0,
    cooldown_seconds=300,
    instances_per_replica=2,
    horizon_seconds=240,
)
S = 0.02
T0 = 1_700_000_000.0


def obs(
    latency: float | None,
    ready: int,
    now: Instant = T0,
) -> FloorObservation:
    """Latency only (no arrival data): the latency-only rules."""
    return FloorObservation(queue_latency_ms=latency, ready_replicas=ready, now=now)


def load(
    rate: float,
    ready: int,
    now: float = T0,
    *,
    latency: float | None = 5.0,
    pending: float = 0.0,
    history: float | None = None,
    hpa: int | None = None,
    service_s: float = S,
    p99: bool = True,
) -> FloorObservation:
    """What Prometheus reports for `rate` requests/s served at `service_s` each."""
    return FloorObservation(
        queue_latency_ms=latency,
        ready_replicas=ready,
        now=now,
        arrival_rps=rate,
        pending_requests=pending,
        busy_instances=rate * service_s,
        prewarm_rise=history,
        hpa_replicas=hpa,
        latency_is_p99=p99,
    )


def need(rate: float, policy: FloorPolicy = LEAD) -> int:
    return replicas_for(
        rate,
        servers=policy.instances_per_replica,
        service_s=S,
        target_s=0.1,
        tail=policy.tail_probability,
    )


def step(
    policy: FloorPolicy, state: FloorState, observation: FloorObservation
) -> tuple[FloorDecision, FloorState]:
    d = decide(policy, state, observation)
    return d, d.state


def run(
    policy: FloorPolicy,
    state: FloorState,
    rates: list[float],
    *,
    start: float = T0,
    interval: float = 30.0,
    **kwargs: object,
) -> tuple[list[FloorDecision], FloorState]:
    """Feed a rate per evaluation; ready replicas follow the floor at once."""
    out = []
    for i, rate in enumerate(rates):
        d, state = step(
            policy,
            state,
            load(rate, state.current_floor, start + i * interval, **kwargs),  # type: ignore[arg-type]
        )
        out.append(d)
    return out, state


# --- common -------------------------------------------------------------------------------


def test_reasons_are_camel_case_strings() -> None:
    assert FloorReason.NO_DATA == "NoData"
    assert FloorReason.QUEUE_LATENCY_ABOVE_TARGET == "QueueLatencyAboveTarget"
    for reason in FloorReason:
        assert reason.value[0].isupper() and " " not in reason.value


def test_spec_change_clamps_first() -> None:
    d = decide(POLICY, FloorState(15), obs(60.0, ready=15))
    assert (d.floor, d.reason, d.changed) == (10, FloorReason.CLAMPED_TO_SPEC, True)
    d = decide(POLICY, FloorState(1), obs(None, ready=1))
    assert (d.floor, d.reason, d.changed) == (2, FloorReason.CLAMPED_TO_SPEC, True)


def test_disabled_floor_is_spec_min() -> None:
    policy = FloorPolicy(3, 10, 100.0, enabled=False)
    d = decide(policy, FloorState(7), load(900.0, ready=7, latency=900.0))
    assert (d.floor, d.reason, d.changed) == (3, FloorReason.FLOOR_DISABLED, True)


@pytest.mark.parametrize("latency", [None, math.nan, -1.0])
def test_no_data_holds(latency: float | None) -> None:
    state = FloorState(7, last_change_at=T0 - 10_000, below_watermark_since=T0 - 10_000)
    d = decide(POLICY, state, obs(latency, ready=7))
    assert (d.floor, d.reason, d.changed) == (7, FloorReason.NO_DATA, False)
    # Quiet before the gap does not count after it: lowering needs a fresh cooldown.
    assert d.state.below_watermark_since is None


def test_datetimes_are_accepted_and_must_be_aware() -> None:
    t = datetime(2025, 1, 1, tzinfo=UTC)
    state = FloorState(5, last_change_at=t - timedelta(hours=1))
    d, state = step(POLICY, state, obs(1.0, ready=5, now=t))
    d = decide(POLICY, state, FloorObservation(1.0, 5, t + timedelta(seconds=300)))
    assert d.floor == 4 and d.state.last_change_at == t + timedelta(seconds=300)
    with pytest.raises(ValueError, match="timezone-aware"):
        decide(POLICY, state, FloorObservation(1.0, 5, datetime(2025, 1, 1)))


def test_from_spec_reads_the_ccs_defaults() -> None:
    from ccs_operator.core.api import ServiceSpec

    spec = ServiceSpec.model_validate({"model": {"name": "m", "repository": "s3://b/m"}})
    policy = FloorPolicy.from_spec(spec)
    assert (policy.min_replicas, policy.max_replicas, policy.target_ms) == (2, 10, 100.0)
    assert policy.lower_watermark_ratio == 0.5 and policy.cooldown_seconds == 300
    assert policy.prewarm.period_seconds == DAY_SECONDS and not policy.prewarm.enabled
    assert policy.instances_per_replica == 2 and policy.burst_cover == 0.75
    assert policy.horizon_seconds == DEFAULT_LEAD_TIME_SECONDS
    assert policy.prewarm.lead_time_seconds == DEFAULT_LEAD_TIME_SECONDS
    # The measured horizon reaches pre-warm too, unless the spec sets its own lead time.
    assert FloorPolicy.from_spec(spec, lead_time_seconds=240).prewarm.lead_time_seconds == 240
    spec = ServiceSpec.model_validate(
        {
            "model": {"name": "m", "repository": "s3://b/m"},
            "autoscaling": {"floor": {"prewarm": {"enabled": True, "leadTimeSeconds": 600}}},
        }
    )
    policy = FloorPolicy.from_spec(spec, lead_time_seconds=240)
    assert (policy.horizon_seconds, policy.prewarm.lead_time_seconds) == (240, 600)
    # What the signals average over: the operator's rate window and the scrape interval.
    assert (policy.signal_window_seconds, policy.scrape_interval_seconds) == (60.0, 15.0)
    spec = ServiceSpec.model_validate(
        {"model": {"name": "m", "repository": "s3://b/m"}, "monitoring": {"interval": "2s"}}
    )
    policy = FloorPolicy.from_spec(spec, window_seconds=5)
    assert (policy.signal_window_seconds, policy.scrape_interval_seconds) == (5, 2.0)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"min_replicas": 5, "max_replicas": 4},
        {"target_ms": 0.0},
        {"target_ms": math.nan},
        {"lower_watermark_ratio": 1.0},
        {"scale_up_step": 0},
        {"cooldown_seconds": -1.0},
        {"instances_per_replica": 0},
        {"horizon_seconds": 0.0},
        {"burst_cover": 1.0},
        {"max_raise_factor": 0.0},
    ],
)
def test_policy_validation(kwargs: dict[str, float]) -> None:
    base: dict[str, object] = {"min_replicas": 2, "max_replicas": 10, "target_ms": 100.0}
    with pytest.raises(ValueError):
        FloorPolicy(**{**base, **kwargs})  # type: ignore[arg-type]


def test_prewarm_lead_time_zero_is_refused_at_the_boundary() -> None:
    # The CRD and api.py refuse it; the policy never sees a 0 that breaks every tick.
    with pytest.raises(ValueError, match="lead_time_seconds"):
        PrewarmPolicy(enabled=True, lead_time_seconds=0)


# --- latency-only rules ----------------------------------------------------------------


def test_latency_only_raise_is_proportional_and_bounded() -> None:
    d = decide(POLICY, FloorState(2), obs(120.0, ready=4))
    # ceil(4 * 1.2) = 5 = ready + step: the HPA already runs 4, so the floor must pass 4.
    assert (d.floor, d.reason, d.changed) == (5, FloorReason.QUEUE_LATENCY_ABOVE_TARGET, True)
    assert d.state.last_change_at == T0 and d.state.last_scale_up_at == T0
    # A huge excess raises at most 1.5x the ready replicas per evaluation, not to max.
    assert decide(POLICY, FloorState(2), obs(50_000.0, ready=4)).floor == 6


def test_scale_up_step_is_a_minimum() -> None:
    policy = FloorPolicy(2, 10, 100.0, scale_up_step=3)
    assert decide(policy, FloorState(2), obs(110.0, ready=2)).floor == 5


def test_raise_capped_at_max() -> None:
    d = decide(POLICY, FloorState(8), obs(500.0, ready=8))
    assert (d.floor, d.reason) == (10, FloorReason.QUEUE_LATENCY_ABOVE_TARGET)
    d = decide(POLICY, FloorState(10), obs(500.0, ready=10))
    assert (d.floor, d.reason, d.changed) == (10, FloorReason.AT_MAXIMUM, False)


def test_hung_model_holds_instead_of_burning_every_gpu() -> None:
    # Queued time and nothing finishing (x/0 = +Inf): more replicas of a hung model would
    # not help; the floor holds and says why.
    d = decide(POLICY, FloorState(2), obs(math.inf, ready=2))
    assert (d.floor, d.reason) == (2, FloorReason.MODEL_STALLED)
    d = decide(LEAD, FloorState(3), load(0.0, ready=3, latency=math.inf, pending=40))
    assert (d.floor, d.reason) == (3, FloorReason.MODEL_STALLED)


def test_pending_replicas_are_not_raised_again() -> None:
    # Floor 6, only 2 ready: 1.5 * 2 = 3 <= 6 already on the way.
    d = decide(POLICY, FloorState(6, last_change_at=T0 - 30), obs(250.0, ready=2))
    assert (d.floor, d.reason, d.changed) == (6, FloorReason.AWAITING_READY_REPLICAS, False)


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


def test_never_below_min() -> None:
    state = FloorState(2, last_change_at=T0 - 10_000, below_watermark_since=T0 - 10_000)
    d = decide(POLICY, state, obs(0.0, ready=2))
    assert (d.floor, d.reason) == (2, FloorReason.AT_MINIMUM)


# --- the leading model -------------------------------------------------------------------


def test_sizes_from_arrivals_and_the_measured_service_time() -> None:
    # 300/s at 20 ms on 2 instances per replica: 6 busy instances; at the utilisation that
    # keeps 99.6% of waits under 100 ms that is 6 replicas, reached in bounded steps
    # (2 -> 4 -> 6).
    assert need(300.0) == 6
    decisions, _ = run(LEAD, FloorState(2), [300.0] * 4)
    assert [d.floor for d in decisions][:2] == [4, 6]
    assert decisions[0].reason == FloorReason.DEMAND_FORECAST
    assert "raise limited" in decisions[0].message
    assert decisions[-1].floor == 6 and decisions[-1].demand == 6
    acc = decisions[-1].accounting
    assert acc.service_seconds == pytest.approx(S)
    assert acc.capacity_rps is not None and 300 / 6 <= acc.capacity_rps < 300 / 5
    assert 0.5 < (acc.planned_utilisation or 0) < 0.6
    assert acc.correction == 1.0


def test_capacity_is_measured_not_configured() -> None:
    # The same rate with twice the busy time per request needs about twice the replicas.
    slow = [
        FloorObservation(5.0, 2, T0 + 30 * i, arrival_rps=300.0, busy_instances=12.0)
        for i in range(6)
    ]
    state = FloorState(2)
    for o in slow:
        d, state = step(LEAD, state, dataclasses.replace(o, ready_replicas=state.current_floor))
    assert d.floor >= 2 * need(300.0) - 1


def test_raise_is_bounded_per_evaluation_never_a_jump_to_max() -> None:
    decisions, _ = run(LEAD, FloorState(2), [100_000.0] * 5)
    assert [d.floor for d in decisions] == [4, 8, 16, 32, 40]


def test_a_rising_trend_is_met_before_it_arrives() -> None:
    # A steady ramp: the floor leads what the current rate alone needs.
    rates = [100.0 + 10.0 * i for i in range(20)]
    decisions, _ = run(LEAD, FloorState(2), rates)
    assert decisions[-1].accounting.forecast_rps is not None
    assert decisions[-1].accounting.forecast_rps > rates[-1]
    assert decisions[-1].floor > need(rates[-1])
    # ...and a flat rate is not extrapolated.
    flat, _ = run(LEAD, FloorState(2), [290.0] * 20)
    assert flat[-1].accounting.forecast_rps == pytest.approx(290.0, rel=0.01)


def test_a_sharp_edge_is_not_extrapolated_over_the_whole_horizon() -> None:
    decisions, _ = run(LEAD, FloorState(2), [100.0] * 10 + [400.0] * 2)
    forecast = decisions[-1].accounting.forecast_rps
    assert forecast is not None and forecast <= 2 * 400.0


def test_pending_requests_add_to_the_demand() -> None:
    state = FloorState(5, last_change_at=T0 - 1000)
    calm = decide(LEAD, state, load(200.0, 5))
    backlog = decide(LEAD, state, load(200.0, 5, pending=40_000.0))
    assert backlog.demand > calm.demand
    assert backlog.floor > calm.floor


def test_a_breach_the_plan_did_not_foresee_teaches_a_correction() -> None:
    _, state = run(LEAD, FloorState(2), [300.0] * 4)
    assert state.current_floor == need(300.0)
    # The replicas are what the plan asked for, yet the queue breaches: burstier arrivals
    # than the model assumes. The correction grows and the plan with it...
    decisions, state = run(LEAD, state, [300.0] * 10, start=T0 + 120, latency=150.0)
    assert state.correction > 1.3
    assert decisions[-1].accounting.correction == state.correction
    assert max(d.floor for d in decisions) > need(300.0)
    # ...and decays back while the queue stays quiet.
    later, state = run(LEAD, state, [300.0] * 480, start=T0 + 600, latency=5.0)
    assert 1.0 <= state.correction < 1.1
    assert later[-1].floor <= need(300.0) + 1


# --- the utilisation gain: what the service showed over what the model assumes -----------

# One instance per replica and a batch time near the target: M/M/1 would keep its replicas
# about 5% busy, while a dynamic batcher holds the target at far higher utilisation.
BATCHED = FloorPolicy(
    min_replicas=1,
    max_replicas=40,
    target_ms=100.0,
    cooldown_seconds=300,
    instances_per_replica=1,
    horizon_seconds=240,
)
BATCH_S = 0.06


def batched(
    rate: float,
    ready: int,
    now: float,
    *,
    latency: float,
    p99: bool = True,
) -> FloorObservation:
    return load(rate, ready, now, latency=latency, service_s=BATCH_S, p99=p99)


def feed(
    state: FloorState,
    rate: float,
    ready: int,
    latency: float,
    evaluations: int,
    *,
    start: float = T0,
    **kwargs: object,
) -> tuple[list[FloorDecision], FloorState]:
    out = []
    for i in range(evaluations):
        d, state = step(
            BATCHED,
            state,
            batched(rate, ready, start + 30 * i, latency=latency, **kwargs),  # type: ignore[arg-type]
        )
        out.append(d)
    return out, state


def test_replicas_seen_busy_within_target_teach_a_utilisation_gain() -> None:
    # 6 replicas serve 45/s, each 45% busy, with the p99 queue wait at 60 ms: the evidence
    # that the model (which plans these replicas 5% busy) is far too cautious.
    before = decide(BATCHED, FloorState(6), batched(45.0, 6, T0, latency=60.0))
    assert before.accounting.utilisation_gain == 1.0
    assert before.demand >= 30  # what M/M/1 asks for 45/s at 60 ms each
    decisions, _ = feed(FloorState(6), 45.0, 6, 60.0, 12)
    acc = decisions[-1].accounting
    assert acc.utilisation_gain > 5
    assert acc.planned_utilisation is not None and 0.35 < acc.planned_utilisation <= 0.45
    # The plan is now near what the replicas were seen to carry within target: no overshoot.
    assert decisions[-1].demand <= 8
    assert acc.capacity_rps is not None and acc.capacity_rps > 5 * before.accounting.capacity_rps


def test_the_gain_learns_only_from_replicas_that_served_a_whole_rate_window() -> None:
    # Ready replicas changing every evaluation: rate, busy time and p99 describe a mix.
    state = FloorState(6)
    for i in range(12):
        _, state = step(BATCHED, state, batched(45.0, 5 + i % 2, T0 + 30 * i, latency=60.0))
    assert state.utilisation_gain == 1.0
    # The same replicas for a rate window and a scrape: it learns (the positive control).
    _, state = feed(state, 45.0, 6, 60.0, 5, start=T0 + 400)
    assert state.utilisation_gain > 1.5


def test_the_gain_settles_for_the_signal_window_the_operator_reads() -> None:
    # A 5 s rate window scraped every 2 s: two evaluations 5 s apart are a settled sample
    # (here 25/s per replica, so a window holds enough requests for a p99)...
    quick = dataclasses.replace(BATCHED, signal_window_seconds=5, scrape_interval_seconds=2)
    state = FloorState(6)
    for i in range(3):
        _, state = step(quick, state, batched(150.0, 6, T0 + 5 * i, latency=60.0))
    assert state.utilisation_gain > 1.5
    # ...while the default minute's window has not yet covered these replicas.
    state = FloorState(6)
    for i in range(3):
        _, state = step(BATCHED, state, batched(150.0, 6, T0 + 5 * i, latency=60.0))
    assert state.utilisation_gain == 1.0
    # And 5 s of 7.5/s per replica is too few requests for a p99, however settled.
    state = FloorState(6)
    for i in range(30):
        _, state = step(quick, state, batched(45.0, 6, T0 + 5 * i, latency=60.0))
    assert state.utilisation_gain == 1.0


def test_the_gain_needs_a_p99_enough_requests_and_a_quiet_queue() -> None:
    # A mean, or a user's query, is not the p99 the evidence is about.
    _, state = feed(FloorState(6), 45.0, 6, 60.0, 12, p99=False)
    assert state.utilisation_gain == 1.0
    # Too few requests per replica in a rate window for a p99 (here 0.5/s each).
    _, state = feed(FloorState(6), 3.0, 6, 1.0, 12)
    assert state.utilisation_gain == 1.0
    # A p99 above EVIDENCE_RATIO x target says nothing about a higher safe utilisation.
    _, state = feed(FloorState(6), 45.0, 6, 95.0, 12)
    assert state.utilisation_gain == 1.0


def test_a_breach_where_the_gain_said_safe_cuts_it_back() -> None:
    _, state = feed(FloorState(6), 45.0, 6, 60.0, 12)
    learnt = state.utilisation_gain
    # The same replicas, more load (60/s, 60% busy): the queue breaches its target.
    decisions, state = feed(state, 60.0, 6, 180.0, 5, start=T0 + 400)
    assert state.utilisation_gain < learnt
    assert decisions[-1].floor > 6
    # Cut to below what breached: planned utilisation under the 60% that failed.
    assert (decisions[-1].accounting.planned_utilisation or 1) < 0.6


def test_the_gain_decays_back_to_the_model_over_hours() -> None:
    _, state = feed(FloorState(6), 45.0, 6, 60.0, 12)
    assert state.utilisation_gain > 5
    # Hours at a load too light to say anything: the gain fades (half-life six hours).
    _, state = feed(state, 3.0, 6, 1.0, 2 * 24 * 60, start=T0 + 400)
    assert 1.0 <= state.utilisation_gain < 1.5


@settings(max_examples=300, deadline=None)
@given(
    st.integers(1, 8),
    st.floats(0.005, 0.5),
    st.floats(0.05, 0.99),
    st.integers(1, 20),
    st.floats(20.0, 2000.0),
)
def test_evidence_that_matches_the_model_teaches_no_gain(
    servers: int, service_s: float, busy_share: float, ready: int, target_ms: float
) -> None:
    """Replicas that behave exactly as M/M/c says (the p99 Triton would report for their
    busy share) never raise the planned utilisation above the model's."""
    policy = FloorPolicy(
        min_replicas=1,
        max_replicas=40,
        target_ms=target_ms,
        instances_per_replica=servers,
        horizon_seconds=240,
    )
    per_replica = busy_share * servers / service_s
    p99_ms = 1000 * wait_quantile(servers, service_s, per_replica, 0.99)
    state = FloorState(ready)
    for i in range(8):
        d, state = step(
            policy,
            state,
            FloorObservation(
                queue_latency_ms=p99_ms,
                ready_replicas=ready,
                now=T0 + 30 * i,
                arrival_rps=per_replica * ready,
                busy_instances=per_replica * ready * service_s,
            ),
        )
    modelled = safe_utilisation(servers, service_s, target_ms / 1000, policy.tail_probability)
    planned = d.accounting.planned_utilisation
    if planned is None:  # too little load to measure a service time: nothing learnt either
        assert state.utilisation_gain == 1.0
        return
    # Within the rounding safe_utilisation does (3 significant digits of target / S), and
    # near MAX_UTILISATION, where the model's p99 point is capped.
    assert planned <= modelled * 1.06


def test_latency_feedback_corrects_a_short_plan() -> None:
    # The model says 4 replicas are plenty for 100/s, but the queue says otherwise.
    state = FloorState(4, last_change_at=T0 - 1000)
    d = decide(LEAD, state, load(100.0, 4, latency=150.0))
    assert (d.floor, d.reason) == (6, FloorReason.QUEUE_LATENCY_ABOVE_TARGET)
    # Replicas still starting are the answer to the same excess: hold, do not stack.
    d = decide(LEAD, dataclasses.replace(state, current_floor=6), load(100.0, 4, latency=150.0))
    assert (d.floor, d.reason) == (6, FloorReason.AWAITING_READY_REPLICAS)


def test_lowering_waits_a_cooldown_and_goes_to_the_most_needed_over_it() -> None:
    decisions, state = run(LEAD, FloorState(2), [600.0] * 6)
    high = state.current_floor
    assert high == need(600.0)
    raised_at = state.last_scale_up_at
    assert isinstance(raised_at, float)
    # Load halves: nothing happens until a cool-down after the last raise...
    start = T0 + 6 * 30
    decisions, state = run(LEAD, state, [300.0] * 12, start=start)
    lowered = [d for d in decisions if d.floor < high]
    assert lowered, [d.reason for d in decisions]
    first = decisions.index(lowered[0])
    assert start + first * 30 - raised_at >= LEAD.cooldown_seconds
    assert all(d.reason == FloorReason.COOLING_DOWN for d in decisions[:first])
    # ...then straight to what was needed over the window, not one step at a time.
    assert lowered[0].reason == FloorReason.DEMAND_BELOW_FLOOR
    assert lowered[-1].floor >= need(300.0)


def test_a_resumed_loop_holds_the_floor_it_found_for_a_cooldown() -> None:
    """Defect: a restarted operator's loop started with no needs and no last raise, so a
    floor held through a cool-down (after a burst, for a pre-warmed peak) was lowered at
    its first evaluation. Resumed, it counts the floor it found as needed now."""
    high = need(600.0)
    low = need(100.0)
    assert low < high
    # Positive control: a state that remembers nothing lowers at once.
    d = decide(LEAD, FloorState(high, last_change_at=T0 - 60), load(100.0, high))
    assert d.floor < high and d.reason == FloorReason.DEMAND_BELOW_FLOOR
    decisions, state = run(LEAD, FloorState.resumed(high, T0 - 60, T0), [100.0] * 12)
    lowered = [i for i, d in enumerate(decisions) if d.floor < high]
    assert lowered, [d.reason for d in decisions]
    assert lowered[0] * 30 > LEAD.cooldown_seconds - 30
    assert all(d.reason == FloorReason.COOLING_DOWN for d in decisions[: lowered[0]])
    assert state.current_floor >= low


def test_lowering_needs_a_quiet_queue() -> None:
    _, state = run(LEAD, FloorState(2), [600.0] * 6)
    decisions, _ = run(LEAD, state, [300.0] * 20, start=T0 + 180, latency=80.0)
    assert all(d.floor == state.current_floor for d in decisions)
    assert "not below watermark" in decisions[-1].message


def test_no_data_after_load_holds_the_floor() -> None:
    _, state = run(LEAD, FloorState(2), [600.0] * 6)
    d = decide(LEAD, state, FloorObservation(None, state.current_floor, T0 + 10_000))
    assert (d.floor, d.reason) == (state.current_floor, FloorReason.NO_DATA)


def test_headroom_follows_the_services_own_bursts() -> None:
    steady, _ = run(LEAD, FloorState(2), [300.0] * 200)
    bursty_rates = [300.0 if (i // 10) % 3 else 600.0 for i in range(200)]
    bursty, _ = run(LEAD, FloorState(2), bursty_rates)
    assert steady[-1].accounting.headroom < 0.1
    assert bursty[-1].accounting.headroom >= 0.5
    # No headroom wanted: none held.
    none, _ = run(dataclasses.replace(LEAD, burst_cover=0.0), FloorState(2), bursty_rates)
    assert none[-1].accounting.headroom == 0.0


def test_forecast_error_is_scored() -> None:
    exact, _ = run(LEAD, FloorState(2), [300.0] * 30)
    assert exact[-1].accounting.forecast_error == pytest.approx(0.0, abs=0.01)
    wobbly, _ = run(LEAD, FloorState(2), [300.0 if i % 2 else 500.0 for i in range(30)])
    assert (wobbly[-1].accounting.forecast_error or 0) > 0.1


def test_accounting_counts_replicas_above_the_hpa_and_breaches() -> None:
    decisions, _ = run(LEAD, FloorState(2), [600.0] * 121, hpa=3)
    acc = decisions[-1].accounting
    # The floor at need(600) against the HPA's 3 for about an hour.
    assert acc.replica_hours_above_hpa == pytest.approx(need(600.0) - 3, rel=0.1)
    assert acc.breach_minutes == 0.0
    hot, _ = run(LEAD, FloorState(40), [100.0] * 21, latency=500.0)
    assert hot[-1].accounting.breach_minutes == pytest.approx(10.0, rel=0.05)


# --- pre-warm ------------------------------------------------------------------------------

PREWARM = dataclasses.replace(
    LEAD, prewarm=PrewarmPolicy(enabled=True, period_seconds=DAY_SECONDS, lead_time_seconds=240)
)


def test_prewarm_raises_ahead_of_a_recurring_rise() -> None:
    # The last two days rose 6x over the next lead time: pre-warm for 6x today's 100/s.
    decisions, _ = run(PREWARM, FloorState(2), [100.0] * 4, history=6.0)
    assert decisions[0].reason == FloorReason.PREWARM_FOR_RECURRING_PEAK
    assert decisions[-1].floor == need(600.0)
    assert decisions[-1].accounting.prewarm == PrewarmState.ACTIVE
    # Off, or no history: nothing.
    off, _ = run(LEAD, FloorState(2), [100.0] * 4, history=6.0)
    assert off[-1].floor == need(100.0) or off[-1].floor == 2
    assert off[-1].accounting.prewarm == PrewarmState.OFF
    blind, _ = run(PREWARM, FloorState(2), [100.0] * 4)
    assert blind[-1].accounting.prewarm == PrewarmState.NO_HISTORY


def test_prewarm_is_relative_to_todays_level() -> None:
    # A weekend after weekdays: the same 2x rise, on half the load, pre-warms half as much.
    weekday, _ = run(PREWARM, FloorState(2), [300.0] * 6, history=2.0)
    weekend, _ = run(PREWARM, FloorState(2), [150.0] * 6, history=2.0)
    assert weekday[-1].floor == need(600.0) and weekend[-1].floor == need(300.0)


def test_prewarm_ignores_small_differences_between_periods() -> None:
    decisions, _ = run(PREWARM, FloorState(2), [300.0] * 10, history=1.1)
    assert all(d.reason != FloorReason.PREWARM_FOR_RECURRING_PEAK for d in decisions)


def test_prewarm_needs_a_measured_service_time() -> None:
    d = decide(PREWARM, FloorState(2), FloorObservation(5.0, 2, T0, prewarm_rise=6.0))
    assert d.floor == 2 and d.accounting.prewarm == PrewarmState.UNSIZED


def _rise(earlier: list[list[float]], i: int, ahead: int) -> float | None:
    """promql.py's history for evaluation i: over the last two days, the highest rate in the
    next `ahead` evaluations relative to the rate then; the smaller of the two."""
    if len(earlier) < 2:
        return None
    ratios = []
    for day in earlier[-2:]:
        window = day[i : i + ahead + 1]
        ratios.append(max(window) / max(day[i], 0.1))
    return min(ratios)


def _day(
    policy: FloorPolicy,
    state: FloorState,
    day: int,
    earlier: list[list[float]],
    peak: bool,
    *,
    interval: float = 300.0,
) -> tuple[FloorState, list[float], float]:
    """One period of a service whose load is 100/s with (or without) a 900/s peak from
    09:00 to 10:00. Completions saturate at what the ready replicas serve, as Triton's
    counters would. `earlier` holds the arrival rates the floor saw on earlier days
    (Prometheus' history). Returns the state, today's rates and the replica-hours held."""
    seen: list[float] = []
    replica_hours = 0.0
    per_day = int(DAY_SECONDS / interval)
    lead = policy.prewarm.lead_time_seconds
    for i in range(per_day):
        t = T0 + day * DAY_SECONDS + i * interval
        hour = (i * interval) / 3600
        offered = 900.0 if peak and 9 <= hour < 10 else 100.0
        ready = state.current_floor
        served = min(offered, ready * 2 / S)
        d, state = step(
            policy,
            state,
            FloorObservation(
                queue_latency_ms=5.0 if served >= offered else 1000.0,
                ready_replicas=ready,
                now=t,
                arrival_rps=served,
                pending_requests=0.0,
                busy_instances=served * S,
                prewarm_rise=_rise(earlier, i, int(lead // interval)),
            ),
        )
        seen.append(served)
        replica_hours += d.floor * interval / 3600
    return state, seen, replica_hours


@settings(max_examples=8, deadline=None)
@given(st.integers(6, 10))
def test_prewarm_cannot_ratchet_over_many_periods(periods: int) -> None:
    """A peak that recurs every day: from the first day with history on, pre-warm costs the
    same replica-hours every day. History is what arrived (capped by what was served), never
    what pre-warm itself held, so its own replicas cannot become next day's demand."""
    policy = dataclasses.replace(
        PREWARM,
        prewarm=PrewarmPolicy(enabled=True, period_seconds=DAY_SECONDS, lead_time_seconds=900),
    )
    state = FloorState(2)
    days: list[list[float]] = []
    hours: list[float] = []
    for day in range(periods):
        state, seen, used = _day(policy, state, day, days, peak=True)
        days.append(seen)
        hours.append(used)
    # Two days to learn (the first pre-warmed day still sees a capped rise), then flat:
    # never growing day over day.
    steady = hours[4:]
    assert max(steady) - min(steady) < 0.5, hours
    assert all(later <= hours[3] + 0.5 for later in hours[4:]), hours
    # ...and pre-warm did pay: from day 3 the peak found its replicas ready.
    assert min(days[2][108:120]) == 900.0


def test_prewarm_gates_itself_when_the_pattern_stops_and_resumes_when_it_returns() -> None:
    policy = dataclasses.replace(
        PREWARM,
        prewarm=PrewarmPolicy(enabled=True, period_seconds=DAY_SECONDS, lead_time_seconds=900),
    )
    state = FloorState(2)
    # History that keeps promising a peak that never comes.
    promised = [[900.0 if 9 <= i * 300 / 3600 < 10 else 100.0 for i in range(288)]] * 2
    states = []
    for day in range(6):
        state, _, _ = _day(policy, state, day, promised, peak=False)
        states.append(
            decide(
                policy, state, load(100.0, 2, T0 + (day + 1) * DAY_SECONDS, history=9.0)
            ).accounting.prewarm
        )
    assert states[-1] == PrewarmState.GATED, states
    gated_hours = _day(policy, state, 6, promised, peak=False)[2]
    baseline = _day(LEAD, FloorState(2), 0, [], peak=False)[2]
    assert gated_hours == pytest.approx(baseline, abs=1.0)
    # The peak comes back: judged episodes turn into hits and pre-warm resumes.
    for day in range(7, 16):
        state, _, _ = _day(policy, state, day, promised, peak=True)
    d = decide(policy, state, load(100.0, 2, T0 + 16 * DAY_SECONDS, history=9.0))
    assert d.accounting.prewarm == PrewarmState.ACTIVE


# --- invariants ------------------------------------------------------------------------

latencies = st.one_of(
    st.none(),
    st.just(math.nan),
    st.just(math.inf),
    st.floats(min_value=0, max_value=10_000, allow_nan=False),
)
rates = st.one_of(st.none(), st.just(math.nan), st.floats(0, 5000, allow_nan=False))


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
        instances_per_replica=draw(st.integers(1, 4)),
        horizon_seconds=draw(st.sampled_from([60.0, 240.0, 600.0])),
        burst_cover=draw(st.sampled_from([0.0, 0.5, 0.9])),
    )


@st.composite
def states(draw: st.DrawFn) -> FloorState:
    last = draw(st.one_of(st.none(), st.floats(T0 - 5000, T0)))
    quiet = draw(st.one_of(st.none(), st.floats(T0 - 5000, T0)))
    return FloorState(
        current_floor=draw(st.integers(0, 50)), last_change_at=last, below_watermark_since=quiet
    )


@st.composite
def observations(draw: st.DrawFn) -> FloorObservation:
    rate = draw(rates)
    return FloorObservation(
        queue_latency_ms=draw(latencies),
        ready_replicas=draw(st.integers(0, 50)),
        now=T0,
        arrival_rps=rate,
        pending_requests=draw(st.one_of(st.none(), st.floats(0, 10_000))),
        busy_instances=draw(st.one_of(st.none(), st.floats(0, 500))),
        prewarm_rise=draw(st.one_of(st.none(), st.floats(0, 100))),
        hpa_replicas=draw(st.one_of(st.none(), st.integers(0, 60))),
    )


@settings(max_examples=400, deadline=None)
@given(policies(), states(), observations())
def test_floor_always_within_spec(p: FloorPolicy, s: FloorState, o: FloorObservation) -> None:
    d = decide(p, s, o)
    assert p.min_replicas <= d.floor <= p.max_replicas
    assert p.min_replicas <= d.demand <= p.max_replicas
    assert d.changed == (d.floor != s.current_floor)
    assert d.state.current_floor == d.floor


@settings(max_examples=300, deadline=None)
@given(policies(), states(), observations())
def test_never_lowers_on_no_data(p: FloorPolicy, s: FloorState, o: FloorObservation) -> None:
    o = FloorObservation(None, o.ready_replicas, o.now, prewarm_rise=o.prewarm_rise)
    if p.enabled:
        assert decide(p, s, o).floor >= p.clamp(s.current_floor)


@settings(max_examples=300, deadline=None)
@given(policies(), states(), observations())
def test_raises_are_bounded(p: FloorPolicy, s: FloorState, o: FloorObservation) -> None:
    current = p.clamp(s.current_floor)
    d = decide(p, s, o)
    if p.enabled and d.floor > current:
        bound = max(
            current + max(p.scale_up_step, math.ceil(current * p.max_raise_factor)),
            # the latency-only rules size from the ready replicas, at most 1.5x
            math.ceil(max(o.ready_replicas, 1) * 1.5),
            o.ready_replicas + p.scale_up_step,
        )
        assert d.floor <= min(bound, p.max_replicas)


@settings(max_examples=300, deadline=None)
@given(policies(), states(), observations(), st.floats(1.0001, 100))
def test_latency_over_target_never_lowers(
    p: FloorPolicy, s: FloorState, o: FloorObservation, excess: float
) -> None:
    o = dataclasses.replace(o, queue_latency_ms=p.target_ms * excess)
    if p.enabled:
        assert decide(p, s, o).floor >= p.clamp(s.current_floor)


trace_steps = st.lists(
    st.tuples(
        st.floats(1, 400),  # seconds since the previous evaluation
        latencies,
        st.integers(0, 30),  # ready replicas
        rates,
    ),
    min_size=1,
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(policies(), st.integers(0, 50), trace_steps)
def test_trace_never_lowers_within_a_cooldown_of_a_raise(
    p: FloorPolicy, start: int, trace: list[tuple[float, float | None, int, float | None]]
) -> None:
    state = FloorState(p.clamp(start))
    now = T0
    last_raised: float | None = None
    for dt, latency, ready, rate in trace:
        now += dt
        busy = None if rate is None or math.isnan(rate) else rate * 0.01
        d = decide(
            p, state, FloorObservation(latency, ready, now, arrival_rps=rate, busy_instances=busy)
        )
        assert p.min_replicas <= d.floor <= p.max_replicas
        if p.enabled and d.floor < state.current_floor:
            assert latency is not None and latency < p.target_ms * p.lower_watermark_ratio
            if last_raised is not None:
                assert now - last_raised >= p.cooldown_seconds
        if d.floor > state.current_floor:
            last_raised = now
        state = d.state


# --- batching services: the cost line --------------------------------------------------

BATCHING = dataclasses.replace(LEAD, max_batch=8)
COST = CostLine(0.04, 0.01)  # 40 ms per execution + 10 ms per request in it


def executed(rate: float, ready: int, now: float, batch: float) -> FloorObservation:
    """What a batching Triton reports serving `rate` in executions of `batch` each."""
    executions = rate / batch
    return FloorObservation(
        queue_latency_ms=40.0,
        ready_replicas=ready,
        now=now,
        arrival_rps=rate,
        pending_requests=0.0,
        busy_instances=executions * COST.execution_s(batch),
        executions_per_s=executions,
    )


def test_a_batching_service_is_sized_from_its_cost_line() -> None:
    state = FloorState(2)
    # Two replicas: quiet minutes at one request per execution (15/s each, instances 38%
    # busy), busy ones at 100/s each, back to back in executions of 4 (80 ms each).
    for i, (rate, batch) in enumerate([(30.0, 1.0), (200.0, 4.0)] * 4):
        d, state = step(BATCHING, state, executed(rate, 2, T0 + 30 * i, batch))
    line = state.batch_fit.line()
    assert line is not None and line.per_item_s == pytest.approx(0.01)
    assert d.accounting.capacity_rps == pytest.approx(COST.sustained_rps(2, 8, 0.09))
    # Every instance busy all the time is not saturation: the line says a replica sustains
    # 111/s with its cycle within 90 ms, so the two replicas are enough.
    assert d.demand == 2
    assert "batches cost 40.0 ms + 10.00 ms per request" in d.message
    # The same signals without batching in the spec read as two saturated replicas.
    alone = decide(LEAD, FloorState(2), executed(200.0, 2, T0, 4.0))
    assert alone.demand > 2


def test_before_the_line_is_known_the_worst_line_through_the_point_sizes_it() -> None:
    d = decide(BATCHING, FloorState(4), executed(30.0, 4, T0, 1.0))
    assert BATCHING.max_batch > 1 and d.state.batch_fit.line() is None
    # All of the 50 ms per request as cost per request: a replica busy up to 95%.
    assert d.accounting.capacity_rps == pytest.approx(MAX_UTILISATION * 2 / 0.05)
    assert "not yet measured" in d.message
    # What M/M/c alone would plan with at 50 ms per request (far less per replica).
    mmc = decide(LEAD, FloorState(4), executed(30.0, 4, T0, 1.0))
    assert mmc.accounting.capacity_rps is not None and mmc.accounting.capacity_rps < 20


def test_a_service_that_does_not_batch_ignores_executions() -> None:
    state = FloorState(4)
    for i, (rate, batch) in enumerate([(30.0, 1.0), (160.0, 4.0)] * 4):
        _, state = step(LEAD, state, executed(rate, 4, T0 + 30 * i, batch))
    assert state.batch_fit == CostFit()


def test_from_spec_reads_the_largest_batch() -> None:
    from ccs_operator.core.api import ServiceSpec

    model = {"name": "m", "repository": "s3://b/m"}
    assert FloorPolicy.from_spec(ServiceSpec.model_validate({"model": model})).max_batch == 32
    off = ServiceSpec.model_validate({"model": model, "batching": {"enabled": False}})
    assert FloorPolicy.from_spec(off).max_batch == 1
