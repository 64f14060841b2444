"""The warm-floor policy: Triton's signals -> the HPA's minReplicas, ahead of the load.

A new GPU replica needs minutes to pull and load its model, so a floor that waits for the
queue to build arrives after the damage. This policy sizes the floor from signals that move
*before* the queue does, and looks ahead by the measured cold start:

- arrival rate (Triton's completions + failures per second) and its trend, smoothed by a
  Holt filter and extrapolated over the horizon (the measured p95 cold start plus one
  evaluation), never extrapolating a fall;
- requests pending in Triton's queues now, which must be served on top of new arrivals;
- per-replica capacity *measured* from Triton's counters: busy instance-seconds per request
  (S); and for a service that batches, the cost of an execution by its size, fitted from
  the counters' (requests per execution, seconds per execution) points (batchcost.py):
  instances running back to back are busy all the time at any load below saturation, so
  busy time alone would read them as saturated, while the line says what the batches
  absorb. Until the points fix the line, one point bounds it safely;
- headroom that covers a chosen share (`burst_cover`) of the service's own observed rises
  of the arrival rate over one horizon (a decayed histogram, `forecast.Rises`);
- replicas sized with the M/M/c tail of `queueing.py`: the fewest replicas at which at most
  0.4% of requests would wait longer than the target (a margin under the p99 target for
  the forecast's errors), at a utilisation raised by what the service itself showed: a
  dynamic batcher keeps waits far below M/M/c's, so the replicas' measured busy share while
  the p99 wait stayed within target, over the model's utilisation for that p99, is a
  *utilisation gain* the plan uses (>= 1, learnt only from steady replicas, cut back by a
  breach at a utilisation it called safe, decaying back to 1 over hours).

Queue latency stays as feedback, twice: above the target the floor rises in proportion to
the excess (at most 1.5x the ready replicas), whatever the forecast said; and a breach the
plan did not foresee (the replicas were as many as it asked for) teaches the model a
correction factor on the plan (arrivals burstier than Poisson within a scrape), which
decays back while the queue stays quiet. Pre-warm adds, for
recurring peaks, the rise of the arrival rate seen over the next lead time on each of the
last two periods (a ratio, applied to today's rate), taken from Triton's own series in
Prometheus (never from replica counts, which would include what pre-warm itself held). It
acts only on a sizeable predicted rise, and each such episode is judged afterwards: while
too few came true, pre-warm pauses itself, and it resumes when the pattern returns.

Bounds and hysteresis: a raise adds at most `max(scale_up_step, current * max_raise_factor)`
replicas per evaluation (no jump to max); lowering happens only to the highest need seen
over the last cool-down, no sooner than a cool-down after the last raise, and only while the
queue is below the lower watermark. Missing data holds the floor; a model with queued work
and no completions (hung) holds it too, so a broken model never burns every GPU.

Without an arrival rate or service time (a user's query override gives latency only), the
latency-only rules apply: raise in proportion to the excess over the ready replicas, lower
by one after a full cool-down below the watermark.

This module is pure: no I/O, no clock, no environment. Time arrives in the observation, the
previous state in `FloorState`, and `decide` returns the next state with the decision.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING

from ccs_operator.core.batchcost import CostFit, CostLine, point_bound_rps
from ccs_operator.core.forecast import Holt, Rises, decay_for
from ccs_operator.core.queueing import (
    DEFAULT_TAIL_PROBABILITY,
    planned_utilisation,
    replicas_for,
    safe_utilisation,
)

if TYPE_CHECKING:  # api.py is only needed to build a policy from a parsed spec
    from ccs_operator.core.api import ServiceSpec

Instant = datetime | float
"""A point in time: an aware datetime or Unix epoch seconds."""

DAY_SECONDS = 86_400
WEEK_SECONDS = 7 * DAY_SECONDS
# The horizon before any cold start has been measured: a model pull and load of a few
# minutes plus one evaluation and one HPA sync. The one place this default lives.
DEFAULT_LEAD_TIME_SECONDS = 300
# Holt smoothing per evaluation: the rate is already a 1m average, so follow it closely.
HOLT_ALPHA = 0.5
HOLT_BETA = 0.3
# The trend is damped over this many seconds and the forecast capped at this multiple of the
# level: a 30 s edge must not be extrapolated over a whole cold start.
TREND_DAMPING_SECONDS = 120.0
FORECAST_CAP = 2.0
# How fast the measured service time follows a new measurement.
SERVICE_TIME_ALPHA = 0.3
# Below this many requests per second the service time is not re-measured (too few samples).
MIN_RATE_FOR_SERVICE_TIME = 0.5
# Requests per second that count as "no completions" for the stall check.
IDLE_RATE = 1e-6
# Burst memory and accountability figures decay with these half-lives.
RISES_HALF_LIFE_SECONDS = 6 * 3600
ACCOUNTING_HALF_LIFE_SECONDS = DAY_SECONDS
# A breach the plan did not foresee multiplies the plan's correction by this, up to the
# maximum; quiet evaluations let it decay back to 1 with this half-life.
CORRECTION_STEP = 1.05
MAX_CORRECTION = 4.0
CORRECTION_HALF_LIFE_SECONDS = 3600.0
# The queueing model is a prior, not the truth: Triton's dynamic batcher and a GPU's nearly
# constant batch times keep queue waits far below M/M/c's at the same utilisation. So the
# floor learns, from the service's own evidence, how much busier its replicas were seen to
# run while the p99 queue wait stayed at most EVIDENCE_RATIO x target: the ratio of that
# measured utilisation to the model's utilisation at the same p99 is the *utilisation gain*,
# and the plan's utilisation is the model's times the gain (never above MAX_UTILISATION).
# Evidence counts only once the same replicas have served for the operator's rate window
# plus one scrape (rate, busy time and p99 then describe these replicas), with enough
# requests per replica in a rate window for a p99 (GAIN_MIN_SAMPLES). The gain rises a share
# GAIN_STEP of the way to new evidence per evaluation; a breach at a utilisation the gain
# called safe cuts it back below that utilisation; it decays back to 1 with a half-life of
# GAIN_HALF_LIFE_SECONDS, so a model that changed is not planned with yesterday's evidence.
EVIDENCE_RATIO = 0.9
EVIDENCE_QUANTILE_TAIL = 0.01
GAIN_MIN_SAMPLES = 100.0
GAIN_STEP = 0.5
GAIN_BREACH_MARGIN = 0.9
MAX_UTILISATION_GAIN = 20.0
GAIN_HALF_LIFE_SECONDS = 6 * 3600.0
# Latency feedback raises to at most this multiple of the ready replicas per evaluation.
MAX_FEEDBACK_RATIO = 1.5
# Pre-warm history is the smaller of what arrived one and two periods earlier, so only a
# pattern seen on both (a recurring peak, not yesterday's one-off burst) is pre-warmed.
PREWARM_HISTORY_PERIODS = 2
# Recurring peaks drift by minutes from one period to the next: the history window looks
# this much further ahead than [now, now + lead] one period earlier (which covers a peak
# that comes earlier as well as later, and holds nothing after yesterday's peak ended).
PREWARM_SLACK_SECONDS = 300
# A predicted rise is applied at most this many times over (history can be odd: a service
# that was idle at this time yesterday and busy the day before).
PREWARM_MAX_RISE = 10.0
# Pre-warm is judged per episode (a stretch where it wants more than the rest of the policy):
# a hit when the rest of the policy then rose by at least this share of the extra replicas
# pre-warm predicted...
PREWARM_HIT_SHARE = 0.5
# Pre-warm acts only on a predicted rise of at least this many replicas and this share above
# what the rest of the policy wants (smaller differences are the headroom's job).
PREWARM_MIN_RISE = 2
PREWARM_MIN_RISE_SHARE = 0.25
# ...and it is switched off while fewer than this share of recent episodes were hits, once
# at least PREWARM_MIN_EPISODES (decayed with a half-life of three periods) were judged.
PREWARM_MIN_HIT_RATE = 1 / 3
PREWARM_MIN_EPISODES = 2.0
# Scale to zero (spec.replicas.min 0): at zero replicas no pod counts requests, so today's
# arrival rate is unknown, not zero. Pre-warm's history is a rise relative to the rate one
# period earlier, clamped from below at this rate (promql.MIN_HISTORY_RATE, the same number);
# a service at zero applies the rise to this rate too, which gives back the absolute rate
# the history saw ahead. Pre-warm wakes a service from zero when that expected rate is at
# least this much, and the first replica is always a sizeable rise for a service at zero.
ZERO_BASE_RATE = 0.1


class FloorReason(StrEnum):
    """Why the floor is what it is; CamelCase so it can be a Kubernetes condition reason."""

    DEMAND_FORECAST = "DemandForecast"
    QUEUE_LATENCY_ABOVE_TARGET = "QueueLatencyAboveTarget"
    DEMAND_BELOW_FLOOR = "DemandBelowFloor"
    QUEUE_LATENCY_BELOW_WATERMARK = "QueueLatencyBelowWatermark"
    WITHIN_BAND = "WithinBand"
    COOLING_DOWN = "CoolingDown"
    AWAITING_READY_REPLICAS = "AwaitingReadyReplicas"
    PREWARM_FOR_RECURRING_PEAK = "PrewarmForRecurringPeak"
    MODEL_STALLED = "ModelStalled"
    AT_MAXIMUM = "AtMaximum"
    AT_MINIMUM = "AtMinimum"
    NO_DATA = "NoData"
    CLAMPED_TO_SPEC = "ClampedToSpec"
    FLOOR_DISABLED = "FloorDisabled"


class PrewarmState(StrEnum):
    OFF = "Off"  # not enabled in the spec
    NO_HISTORY = "NoHistory"  # enabled, but no arrival history one period ago
    UNSIZED = "Unsized"  # history present, but no measured service time to size it
    ACTIVE = "Active"  # enabled, history present, paying (or not yet judged)
    GATED = "Gated"  # enabled, but the last periods show it would not have paid


@dataclass(frozen=True, slots=True)
class PrewarmPolicy:
    enabled: bool = False
    period_seconds: int = DAY_SECONDS
    lead_time_seconds: int = DEFAULT_LEAD_TIME_SECONDS

    def __post_init__(self) -> None:
        if self.period_seconds <= 0:
            raise ValueError("prewarm period_seconds must be > 0")
        if not 0 < self.lead_time_seconds < self.period_seconds:
            raise ValueError("prewarm lead_time_seconds must be in (0, period_seconds)")


@dataclass(frozen=True, slots=True)
class FloorPolicy:
    """The floor's knobs, from `spec.replicas`, `spec.autoscaling.floor` and what the
    operator measured (the cold start, as `horizon_seconds`)."""

    min_replicas: int
    max_replicas: int
    target_ms: float
    lower_watermark_ratio: float = 0.5
    scale_up_step: int = 1
    cooldown_seconds: float = 300.0
    prewarm: PrewarmPolicy = field(default_factory=PrewarmPolicy)
    enabled: bool = True
    # Model instances per replica (the M/M/c servers of one replica).
    instances_per_replica: int = 1
    # How far ahead to look: the measured p95 cold start plus one evaluation.
    horizon_seconds: float = float(DEFAULT_LEAD_TIME_SECONDS)
    # Share of the service's own observed rises over one horizon the headroom covers.
    burst_cover: float = 0.75
    tail_probability: float = DEFAULT_TAIL_PROBABILITY
    # A raise adds at most max(scale_up_step, ceil(current * max_raise_factor)) replicas.
    max_raise_factor: float = 1.0
    # What the signals average over: the operator's rate window, and how often Prometheus
    # scrapes the pods (the ServiceMonitor's interval).
    signal_window_seconds: float = 60.0
    scrape_interval_seconds: float = 15.0
    # Most requests Triton's dynamic batcher puts in one execution (1: no batching).
    max_batch: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.min_replicas <= self.max_replicas:
            raise ValueError(
                f"need 0 <= min_replicas <= max_replicas, got {self.min_replicas}, "
                f"{self.max_replicas}"
            )
        if not (math.isfinite(self.target_ms) and self.target_ms > 0):
            raise ValueError("target_ms must be a positive number")
        if not 0 < self.lower_watermark_ratio < 1:
            raise ValueError("lower_watermark_ratio must be in (0, 1)")
        if self.scale_up_step < 1:
            raise ValueError("scale_up_step must be >= 1")
        if not (math.isfinite(self.cooldown_seconds) and self.cooldown_seconds >= 0):
            raise ValueError("cooldown_seconds must be >= 0")
        if self.instances_per_replica < 1:
            raise ValueError("instances_per_replica must be >= 1")
        if self.max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        if not (math.isfinite(self.horizon_seconds) and self.horizon_seconds > 0):
            raise ValueError("horizon_seconds must be > 0")
        if not 0 <= self.burst_cover < 1:
            raise ValueError("burst_cover must be in [0, 1)")
        if not 0 < self.tail_probability < 1:
            raise ValueError("tail_probability must be in (0, 1)")
        if not (math.isfinite(self.max_raise_factor) and self.max_raise_factor > 0):
            raise ValueError("max_raise_factor must be > 0")
        for name in ("signal_window_seconds", "scrape_interval_seconds"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be > 0")

    @classmethod
    def from_spec(
        cls,
        spec: ServiceSpec,
        lead_time_seconds: int | None = None,
        window_seconds: float = 60.0,
    ) -> FloorPolicy:
        """The policy of a service; `lead_time_seconds` is the horizon the operator derived
        from the measured cold start (the spec's pre-warm lead time wins for pre-warm), and
        `window_seconds` the rate window of its queries."""
        f = spec.autoscaling.floor
        horizon = lead_time_seconds if lead_time_seconds else DEFAULT_LEAD_TIME_SECONDS
        lead = f.prewarm.lead_time_seconds or horizon
        return cls(
            min_replicas=spec.replicas.min,
            max_replicas=spec.replicas.max,
            target_ms=float(f.queue_latency_target_ms),
            lower_watermark_ratio=f.lower_watermark_percent / 100,
            scale_up_step=f.scale_up_step,
            cooldown_seconds=float(f.cooldown_seconds),
            prewarm=PrewarmPolicy(
                enabled=f.prewarm.enabled,
                period_seconds=f.prewarm.period_seconds,
                lead_time_seconds=lead,
            ),
            enabled=f.enabled,
            instances_per_replica=sum(g.count for g in spec.instance_groups),
            horizon_seconds=float(horizon),
            burst_cover=f.burst_cover_percent / 100,
            signal_window_seconds=window_seconds,
            scrape_interval_seconds=spec.monitoring.interval_seconds,
            max_batch=spec.batching.max_batch_size if spec.batching.enabled else 1,
        )

    def clamp(self, replicas: int) -> int:
        return min(max(replicas, self.min_replicas), self.max_replicas)


@dataclass(frozen=True, slots=True)
class FloorObservation:
    """What the floor loop saw at `now` (all rates are per second, summed over the pods).

    queue_latency_ms: worst pod's p99 (or the mean) queue wait; None when Prometheus had no
        series; NaN (0/0) is treated like None; +inf means queued time, nothing finished.
    ready_replicas: Ready pods of the Deployment now.
    arrival_rps: completed + failed requests per second (Triton's counters over the rate
        window); None when unknown.
    pending_requests: requests waiting in Triton's schedulers now.
    busy_instances: busy model-instance seconds per second (a batch's compute time counted
        once per batch); busy_instances / arrival_rps is the measured service time S.
    prewarm_rise: how much the arrival rate rose over the next lead time on each of the
        last periods, as a ratio to the rate at this time then (the smallest of the
        periods); None when there is no such history.
    hpa_replicas: what the HPA alone would run (its CPU recommendation clamped to the spec);
        used for accountability only, never for the floor.
    latency_is_p99: queue_latency_ms is a p99 (Triton's summary); False for a mean or a
        user's query, which the utilisation gain does not learn from.
    executions_per_s: model executions per second (Triton's nv_inference_exec_count);
        arrival_rps / executions_per_s is the mean batch, busy_instances / executions_per_s
        the mean seconds per execution: the points of the batching cost line.
    """

    queue_latency_ms: float | None
    ready_replicas: int
    now: Instant
    arrival_rps: float | None = None
    pending_requests: float | None = None
    busy_instances: float | None = None
    prewarm_rise: float | None = None
    hpa_replicas: int | None = None
    latency_is_p99: bool = True
    executions_per_s: float | None = None


@dataclass(frozen=True, slots=True)
class FloorState:
    """What the loop carries between evaluations. `current_floor` and `last_change_at` live
    in the ccs status; the rest is the loop's memory (lost on restart: the forecast and the
    ledgers start afresh, which only makes the floor more conservative for a while)."""

    current_floor: int
    last_change_at: Instant | None = None
    last_scale_up_at: Instant | None = None
    # Latency-only rules: start of the current stretch below the lower watermark.
    below_watermark_since: Instant | None = None
    # Measured service time S (busy instance-seconds per request), smoothed.
    service_seconds: float | None = None
    holt: Holt | None = None
    # What the queue taught the model: the plan is multiplied by this (>= 1). It grows when
    # the queue breaches although the plan said the replicas were enough (arrivals burstier
    # than the queueing model assumes) and decays back while the queue stays quiet.
    correction: float = 1.0
    # How much busier than the queueing model's planned utilisation the replicas were seen
    # to run within the target (>= 1; see EVIDENCE_RATIO), and since when the ready
    # replicas have been this many (evidence needs the same replicas for a rate window).
    utilisation_gain: float = 1.0
    ready_seen: tuple[int, float] | None = None
    # The batching cost line's points (batchcost.py), for services that batch.
    batch_fit: CostFit = field(default_factory=CostFit)
    # (time, arrival rate) over the last horizon, to measure rises over one horizon.
    arrivals: tuple[tuple[float, float], ...] = ()
    rises: Rises = field(default_factory=Rises)
    # (time, replicas needed) over the last cool-down: lowering goes to their maximum.
    needs: tuple[tuple[float, int], ...] = ()
    # (due time, forecast rate) made one horizon ago, to score the forecast.
    predictions: tuple[tuple[float, float], ...] = ()
    forecast_error: float | None = None
    # The pre-warm episode being judged: (when it opened, what the rest of the policy
    # wanted then, the most pre-warm wanted, the most the rest of the policy wanted since),
    # or None.
    prewarm_episode: tuple[float, int, int, int] | None = None
    prewarm_hits: float = 0.0  # judged episodes that were hits (decayed)
    prewarm_misses: float = 0.0  # judged episodes that were misses (decayed)
    prewarm_judged_at: float | None = None
    # Accountability, decayed with ACCOUNTING_HALF_LIFE_SECONDS.
    held_above_hpa: float = 0.0  # replica-seconds of floor above what the HPA alone ran
    breach_seconds: float = 0.0  # seconds with queue latency above the target
    last_seen_at: float | None = None

    @classmethod
    def initial(cls, policy: FloorPolicy) -> FloorState:
        return cls(current_floor=policy.min_replicas)

    @classmethod
    def resumed(cls, current_floor: int, last_change_at: Instant | None, now: float) -> FloorState:
        """A loop that starts with a floor already in status (a restart, a new leader): the
        needs it would lower to are lost, so it counts the floor it found as needed now.
        Without that, a floor held through a cool-down (after a burst, for a pre-warmed
        peak) was lowered at the first evaluation after every restart."""
        return cls(
            current_floor=current_floor,
            last_change_at=last_change_at,
            needs=((now, current_floor),),
        )


@dataclass(frozen=True, slots=True)
class FloorAccounting:
    """Whether the floor pays for its GPUs: what status.floorAccounting reports."""

    service_seconds: float | None
    capacity_rps: float | None  # per replica at the planned utilisation
    planned_utilisation: float | None
    forecast_rps: float | None
    forecast_error: float | None  # mean absolute error / actual, over recent forecasts
    headroom: float  # relative headroom in use
    correction: float  # what the queue taught the sizing model (1 = the model was right)
    utilisation_gain: float  # measured utilisation within target / the model's (>= 1)
    replica_hours_above_hpa: float  # decayed over about a day
    breach_minutes: float  # decayed over about a day
    prewarm: PrewarmState
    prewarm_hit_rate: float | None  # share of recent pre-warm episodes that were hits


@dataclass(frozen=True, slots=True)
class FloorDecision:
    floor: int
    reason: FloorReason
    changed: bool
    message: str
    state: FloorState
    # Replicas the load needs now (from the arrival rate, never counting replicas held by
    # the floor or by pre-warm). Exported as ccs_floor_demand_replicas.
    demand: int
    accounting: FloorAccounting


# Reasons that mean "kept the floor where it was": after a clamp, the clamp is the news.
_HOLDING_REASONS = frozenset(
    {
        FloorReason.WITHIN_BAND,
        FloorReason.COOLING_DOWN,
        FloorReason.NO_DATA,
        FloorReason.AT_MINIMUM,
        FloorReason.AT_MAXIMUM,
        FloorReason.MODEL_STALLED,
    }
)


def _epoch(t: Instant) -> float:
    if isinstance(t, datetime):
        if t.tzinfo is None:
            # A naive datetime would be read in the host's zone: refuse rather than guess.
            raise ValueError("datetimes given to the floor policy must be timezone-aware")
        return t.timestamp()
    return float(t)


def _usable_latency(latency: float | None) -> float | None:
    if latency is None or math.isnan(latency) or latency < 0:
        return None
    return latency


def _usable(value: float | None) -> float | None:
    if value is None or not math.isfinite(value) or value < 0:
        return None
    return value


@dataclass(frozen=True, slots=True)
class _Step:
    """One evaluation's outcome before the clamp and the bookkeeping."""

    floor: int
    reason: FloorReason
    message: str
    demand: int
    below_since: Instant | None = None


def decide(policy: FloorPolicy, state: FloorState, observation: FloorObservation) -> FloorDecision:
    """The next floor for one service; pure and deterministic."""
    now = _epoch(observation.now)
    original = state.current_floor
    if not policy.enabled:
        step = _Step(
            policy.min_replicas,
            FloorReason.FLOOR_DISABLED,
            "floor controller disabled; minReplicas is spec.replicas.min",
            policy.min_replicas,
        )
        return _finish(policy, state, observation, step, state, None)

    current = policy.clamp(original)
    latency = _usable_latency(observation.queue_latency_ms)
    rate = _usable(observation.arrival_rps)
    pending = _usable(observation.pending_requests) or 0.0
    busy = _usable(observation.busy_instances)

    service = state.service_seconds
    if rate is not None and busy is not None and rate >= MIN_RATE_FOR_SERVICE_TIME and busy > 0:
        # A measured service time outside [1 us, 1 h] per request is a broken counter.
        measured = min(max(busy / rate, 1e-6), 3600.0)
        service = (
            measured
            if service is None
            else SERVICE_TIME_ALPHA * measured + (1 - SERVICE_TIME_ALPHA) * service
        )
    learned = dataclasses.replace(state, service_seconds=service)
    execs = _usable(observation.executions_per_s)
    if (
        policy.max_batch > 1
        and rate is not None
        and busy is not None
        and execs is not None
        and execs > 0
        and busy > 0
        and rate * policy.signal_window_seconds >= GAIN_MIN_SAMPLES
    ):
        batch = min(max(rate / execs, 1.0), float(policy.max_batch))
        learned = dataclasses.replace(
            learned, batch_fit=learned.batch_fit.add(now, batch, busy / execs)
        )
    if service is not None:
        learned = _learn_gain(policy, learned, observation, now, latency, rate, busy, service)

    stalled = (rate is not None and rate <= IDLE_RATE and pending > 0) or (
        latency is not None and math.isinf(latency) and (rate is None or rate <= IDLE_RATE)
    )
    model: _Model | None = None
    if stalled:
        step = _Step(
            current,
            FloorReason.MODEL_STALLED,
            f"{pending:.0f} requests queued and none completing; holding the floor at "
            f"{current} (more replicas of a hung model would not help)",
            current,
        )
    elif rate is not None and service is not None:
        model = _Model(policy, learned, now, rate, pending, service)
        step = _leading(policy, learned, observation, model, current, latency)
        learned = model.state
    elif rate is not None and current == 0 and policy.min_replicas == 0:
        # Asleep, and no service time measured (never served, or the operator restarted
        # while the service was at zero): nothing to size with, but pre-warm may still wake
        # it to one replica, whose counters then size the rest.
        step = _asleep_unsized(policy, observation, pending)
    elif latency is not None:
        step = _latency_only(policy, learned, observation, current, latency)
    else:
        step = _Step(current, FloorReason.NO_DATA, "no queue or arrival data; holding", current)

    if step.floor == current and current != original and step.reason in _HOLDING_REASONS:
        step = dataclasses.replace(
            step,
            reason=FloorReason.CLAMPED_TO_SPEC,
            message=(
                f"floor {original} outside spec [{policy.min_replicas}, "
                f"{policy.max_replicas}]; clamped to {current}"
            ),
        )
    return _finish(policy, state, observation, step, learned, model)


class _Model:
    """The leading model's view of one evaluation: forecast, headroom, sizing, pre-warm."""

    def __init__(
        self,
        policy: FloorPolicy,
        state: FloorState,
        now: float,
        rate: float,
        pending: float,
        service: float,
    ) -> None:
        self.policy = policy
        self.now = now
        self.rate = rate
        self.service = service
        horizon = policy.horizon_seconds
        target_s = policy.target_ms / 1000
        self.gain = state.utilisation_gain
        self.utilisation = planned_utilisation(
            policy.instances_per_replica,
            service,
            target_s,
            policy.tail_probability,
            self.gain,
        )
        # What one replica serves at the planned utilisation.
        self.capacity = policy.instances_per_replica * self.utilisation / service
        # A batching service: what the cost line says a replica sustains, where that is more.
        # Until the line is known, the worst line through the measured point (all of the
        # cost per request, none per execution) bounds it: see batchcost.py.
        self.fitted: CostLine | None = None
        self.batch_capacity: float | None = None
        if policy.max_batch > 1:
            servers, largest = policy.instances_per_replica, policy.max_batch
            wait = EVIDENCE_RATIO * target_s
            self.fitted = state.batch_fit.line()
            sustained: float | None = None
            if self.fitted is not None:
                sustained = self.fitted.sustained_rps(servers, largest, wait)
            else:
                # No executions reported: the smoothed service time is one request's.
                batch, seconds = state.batch_fit.last or (1.0, service)
                sustained = point_bound_rps(servers, largest, wait, batch, seconds)
            if sustained is not None and sustained > self.capacity:
                self.batch_capacity = self.capacity = sustained
        self.demand_rate = rate + pending / horizon

        holt = (
            Holt.start(rate, now)
            if state.holt is None
            else state.holt.update(rate, now, HOLT_ALPHA, HOLT_BETA)
        )
        self.forecast = holt.forecast(horizon, TREND_DAMPING_SECONDS, FORECAST_CAP)

        # The rise over one horizon, relative to at least one replica's worth of load.
        past = [r for t, r in state.arrivals if t <= now - horizon + 1e-6]
        interval = max(1.0, now - state.arrivals[-1][0] if state.arrivals else horizon)
        rises = state.rises
        if past:
            base = max(past[-1], self.capacity)
            decay = decay_for(interval, RISES_HALF_LIFE_SECONDS)
            rises = rises.add(max(0.0, rate - past[-1]) / base, decay)
        self.headroom = rises.quantile(policy.burst_cover)
        # Keep one horizon of samples, and a little more so one is always a horizon old.
        arrivals = tuple(
            (t, r) for t, r in (*state.arrivals, (now, rate)) if t >= now - horizon - 2 * interval
        )

        # Score the forecast made one horizon ago against what arrived.
        error = state.forecast_error
        due = [p for t, p in state.predictions if t <= now]
        if due:
            actual = max(rate, self.capacity)
            miss = abs(due[-1] - rate) / actual
            error = miss if error is None else 0.1 * miss + 0.9 * error
        predictions = (
            *((t, p) for t, p in state.predictions if t > now),
            (now + horizon, self.forecast),
        )
        self.state = dataclasses.replace(
            state,
            holt=holt,
            arrivals=arrivals,
            rises=rises,
            predictions=predictions,
            forecast_error=error,
        )

    def basis(self) -> str:
        """What the per-replica capacity rests on, for a batching service's message."""
        if self.batch_capacity is None:
            return ""
        if self.fitted is None:
            return " (batching; cost per batch size not yet measured)"
        return (
            f" (batches cost {1000 * self.fitted.fixed_s:.1f} ms + "
            f"{1000 * self.fitted.per_item_s:.2f} ms per request)"
        )

    def replicas(self, rate: float) -> int:
        p = self.policy
        if rate <= IDLE_RATE:
            # No arrivals need no replica (a Holt level decaying towards 0 never reaches it).
            return 0
        if self.batch_capacity is not None:
            if rate <= 0 or not math.isfinite(rate):
                return 0
            return math.ceil(rate / self.batch_capacity - 1e-9)
        return replicas_for(
            rate,
            servers=p.instances_per_replica,
            service_s=self.service,
            target_s=p.target_ms / 1000,
            tail=p.tail_probability,
            gain=self.gain,
        )


def _learn_gain(
    policy: FloorPolicy,
    state: FloorState,
    observation: FloorObservation,
    now: float,
    latency: float | None,
    rate: float | None,
    busy: float | None,
    service: float,
) -> FloorState:
    """The utilisation gain after this evaluation's evidence (see EVIDENCE_RATIO)."""
    ready = max(observation.ready_replicas, 0)
    seen = state.ready_seen
    if seen is None or seen[0] != ready:
        seen = (ready, now)
    gain = state.utilisation_gain
    if state.last_seen_at is not None and gain > 1:
        keep = decay_for(max(now - state.last_seen_at, 0.0), GAIN_HALF_LIFE_SECONDS)
        gain = 1 + (gain - 1) * keep
    steady = now - seen[1] >= policy.signal_window_seconds + policy.scrape_interval_seconds
    if (
        steady
        and ready > 0
        and observation.latency_is_p99
        and latency is not None
        and math.isfinite(latency)
        and rate is not None
        and busy is not None
        and rate / ready * policy.signal_window_seconds >= GAIN_MIN_SAMPLES
    ):
        servers = policy.instances_per_replica
        measured = busy / (ready * servers)  # the replicas' busy share, as Triton counted it
        # The model's utilisation at which the p99 wait is what the evidence allows.
        modelled = safe_utilisation(
            servers, service, EVIDENCE_RATIO * policy.target_ms / 1000, EVIDENCE_QUANTILE_TAIL
        )
        seen_gain = measured / modelled
        if latency <= EVIDENCE_RATIO * policy.target_ms and seen_gain > gain:
            gain += GAIN_STEP * (seen_gain - gain)
        elif latency > policy.target_ms and seen_gain <= gain:
            # The gain called this utilisation safe and the queue said otherwise.
            gain = max(1.0, min(gain, GAIN_BREACH_MARGIN * seen_gain))
    return dataclasses.replace(
        state, utilisation_gain=min(gain, MAX_UTILISATION_GAIN), ready_seen=seen
    )


def _leading(
    policy: FloorPolicy,
    state: FloorState,
    observation: FloorObservation,
    m: _Model,
    current: int,
    latency: float | None,
) -> _Step:
    now = m.now
    ready = max(observation.ready_replicas, 0)
    target = policy.target_ms
    watermark = target * policy.lower_watermark_ratio
    uncorrected = max(m.demand_rate, m.forecast) * (1 + m.headroom)
    correction = state.correction
    if latency is not None and latency > target:
        if ready >= m.replicas(uncorrected * correction):
            correction = min(correction * CORRECTION_STEP, MAX_CORRECTION)
    elif latency is not None and latency < watermark and state.last_seen_at is not None:
        keep = decay_for(max(now - state.last_seen_at, 0.0), CORRECTION_HALF_LIFE_SECONDS)
        correction = 1 + (correction - 1) * keep
    m.state = dataclasses.replace(m.state, correction=correction)
    need = m.replicas(m.demand_rate * correction)
    plan = m.replicas(uncorrected * correction)
    reason = FloorReason.DEMAND_FORECAST
    message = (
        f"arrivals {m.rate:.1f}/s, forecast {m.forecast:.1f}/s in "
        f"{policy.horizon_seconds:.0f}s, +{m.headroom:.0%} headroom, "
        f"{m.capacity:.1f}/s per replica{m.basis()}: {plan} replicas"
    )

    # Feedback: the queue says the plan is short, whatever it predicted.
    feedback = 0
    if latency is not None and latency > target:
        ratio = min(latency / target, MAX_FEEDBACK_RATIO)
        feedback = math.ceil(max(ready, 1) * ratio)
        if ready >= current:
            feedback = max(feedback, ready + policy.scale_up_step)
        elif feedback <= current:
            feedback = 0  # the replicas still starting are the answer; do not stack more
        if feedback > plan:
            plan = feedback
            reason = FloorReason.QUEUE_LATENCY_ABOVE_TARGET
            message = (
                f"queue latency {latency:.1f}ms > target {target:g}ms with {ready} ready; "
                f"{plan} replicas"
            )

    prewarm, prewarm_message, stored = _prewarm(policy, state, observation, m, plan)
    wanted = policy.clamp(max(plan, prewarm))
    if wanted > policy.clamp(plan):
        reason, message = FloorReason.PREWARM_FOR_RECURRING_PEAK, prewarm_message
    m.state = dataclasses.replace(
        stored,
        needs=(
            *((t, n) for t, n in state.needs if t > now - policy.cooldown_seconds),
            (now, wanted),
        ),
    )

    if wanted > current:
        limit = current + max(policy.scale_up_step, math.ceil(current * policy.max_raise_factor))
        floor = min(wanted, limit)
        if floor < wanted:
            message += f"; raise limited to {floor} this evaluation"
        return _Step(floor, reason, f"{message}; raising floor {current} -> {floor}", need)
    if latency is not None and latency > target and feedback == 0 and ready < current:
        return _Step(
            current,
            FloorReason.AWAITING_READY_REPLICAS,
            f"queue latency {latency:.1f}ms > target {target:g}ms; {ready}/{current} "
            "replicas ready, waiting for the rest before raising again",
            need,
        )
    if current >= policy.max_replicas and wanted >= current:
        return _Step(current, FloorReason.AT_MAXIMUM, f"{message}; floor at maximum", need)
    if wanted >= current:
        return _Step(current, FloorReason.WITHIN_BAND, f"{message}; holding {current}", need)

    stable = policy.clamp(max(n for _, n in m.state.needs))
    # Lowering needs the queue to say so too: no latency data, no lowering.
    quiet = latency is not None and latency < watermark
    since_raise = (
        math.inf if state.last_scale_up_at is None else now - _epoch(state.last_scale_up_at)
    )
    if current <= policy.min_replicas:
        return _Step(current, FloorReason.AT_MINIMUM, f"{message}; floor at minimum", need)
    if stable < current and quiet and since_raise >= policy.cooldown_seconds:
        return _Step(
            stable,
            FloorReason.DEMAND_BELOW_FLOOR,
            f"{message}; at most {stable} needed over the last {policy.cooldown_seconds:.0f}s; "
            f"lowering floor {current} -> {stable}",
            need,
        )
    wait = max(0.0, policy.cooldown_seconds - since_raise)
    why = (
        f"queue latency {latency:.1f}ms not below watermark {watermark:g}ms"
        if not quiet and latency is not None
        else "no queue latency data"
        if latency is None
        else f"{stable} needed within the last cool-down"
        if stable >= current
        else f"cool-down after the last raise, {wait:.0f}s left"
    )
    return _Step(current, FloorReason.COOLING_DOWN, f"{message}; holding {current}: {why}", need)


def _prewarm(
    policy: FloorPolicy,
    state: FloorState,
    observation: FloorObservation,
    m: _Model,
    plan: int,
) -> tuple[int, str, FloorState]:
    """Pre-warm's floor (0 for none) and why, with its episode record updated in the state.

    Episodes are judged whether or not pre-warm is gated (what it *would* have done), so a
    pattern that comes back switches it on again."""
    pw = policy.prewarm
    rise = _usable(observation.prewarm_rise)
    stored = m.state
    if not pw.enabled or rise is None:
        return 0, "", stored
    rise = min(rise, PREWARM_MAX_RISE)
    at_zero = policy.min_replicas == 0 and m.rate < ZERO_BASE_RATE
    expected = max(m.rate, ZERO_BASE_RATE) * rise if at_zero else m.rate * rise
    planned = m.replicas(expected) if not at_zero or expected >= ZERO_BASE_RATE else 0
    episode = state.prewarm_episode
    hits, misses = state.prewarm_hits, state.prewarm_misses
    if state.prewarm_judged_at is not None:
        decay = decay_for(max(m.now - state.prewarm_judged_at, 0.0), 3 * pw.period_seconds)
        hits, misses = hits * decay, misses * decay
    # Small differences from one period to the next are noise the headroom covers: only a
    # sizeable predicted rise is pre-warmed, and judged.
    sizeable = planned >= plan + max(PREWARM_MIN_RISE, PREWARM_MIN_RISE_SHARE * plan) or (
        at_zero and plan == 0 and planned >= 1
    )
    # An episode is judged once the rise it predicted should have come and been seen: a
    # lead time (plus the history's slack) and one horizon after it opened.
    window = pw.lead_time_seconds + PREWARM_SLACK_SECONDS + policy.horizon_seconds
    if episode is not None:
        opened, base, wanted, reached = episode
        if m.now - opened <= pw.lead_time_seconds + PREWARM_SLACK_SECONDS and sizeable:
            wanted = max(wanted, planned)
        episode = (opened, base, wanted, max(reached, plan))
        if m.now - opened >= window:
            # Judged by how far the rest of the policy's own plan rose meanwhile.
            if episode[3] - base >= PREWARM_HIT_SHARE * (wanted - base):
                hits += 1
            else:
                misses += 1
            episode = None
    elif sizeable:
        episode = (m.now, plan, planned, plan)
    stored = dataclasses.replace(
        stored,
        prewarm_episode=episode,
        prewarm_hits=hits,
        prewarm_misses=misses,
        prewarm_judged_at=m.now,
    )
    if not sizeable or _prewarm_gated(hits, misses):
        return 0, "", stored
    message = (
        f"arrivals rose {rise:.1f}x within the next {pw.lead_time_seconds}s on each of the "
        f"last {PREWARM_HISTORY_PERIODS} periods: pre-warming {policy.clamp(planned)} replicas"
    )
    return planned, message, stored


def _asleep_unsized(policy: FloorPolicy, observation: FloorObservation, pending: float) -> _Step:
    """A service at zero with no measured service time: pre-warm wakes it to one replica
    when the last periods' arrivals rose to at least ZERO_BASE_RATE within the lead time
    (not judged as an episode: nothing sizes it); otherwise the floor stays at zero."""
    pw = policy.prewarm
    rise = _usable(observation.prewarm_rise)
    if pw.enabled and rise is not None:
        expected = ZERO_BASE_RATE * min(rise, PREWARM_MAX_RISE)
        if expected >= ZERO_BASE_RATE:
            return _Step(
                1,
                FloorReason.PREWARM_FOR_RECURRING_PEAK,
                f"scaled to zero; arrivals reached {expected:.2f}/s within the next "
                f"{pw.lead_time_seconds}s on each of the last {PREWARM_HISTORY_PERIODS} "
                "periods: waking one replica ahead of them; raising floor 0 -> 1",
                0,
            )
    if pending > 0:
        return _Step(
            1,
            FloorReason.DEMAND_FORECAST,
            f"scaled to zero with {pending:.0f} requests pending: waking one replica; "
            "raising floor 0 -> 1",
            1,
        )
    return _Step(
        0,
        FloorReason.AT_MINIMUM,
        "scaled to zero; no arrivals counted and no recurring peak ahead; floor at minimum 0",
        0,
    )


def _prewarm_hit_rate(hits: float, misses: float) -> float | None:
    total = hits + misses
    return hits / total if total > 0 else None


def _prewarm_gated(hits: float, misses: float) -> bool:
    rate = _prewarm_hit_rate(hits, misses)
    return (
        rate is not None and hits + misses >= PREWARM_MIN_EPISODES and rate < PREWARM_MIN_HIT_RATE
    )


def _latency_only(
    policy: FloorPolicy,
    state: FloorState,
    observation: FloorObservation,
    current: int,
    latency: float,
) -> _Step:
    """The rules when only queue latency is known (e.g. a query override)."""
    now = _epoch(observation.now)
    ready = max(observation.ready_replicas, 0)
    target = policy.target_ms
    watermark = target * policy.lower_watermark_ratio
    if latency > target:
        # Size from the ready replicas: they produced this latency. Replicas still loading
        # (ready < current) are capacity already on its way.
        base = max(ready, 1)
        desired = math.ceil(base * min(latency / target, MAX_FEEDBACK_RATIO))
        reactive = (
            max(desired, ready + policy.scale_up_step)
            if ready >= current
            else max(desired, current)
        )
        reactive = min(reactive, policy.max_replicas)
        if reactive > current:
            return _Step(
                reactive,
                FloorReason.QUEUE_LATENCY_ABOVE_TARGET,
                f"queue latency {latency:.1f}ms > target {target:g}ms with {ready} ready; "
                f"raising floor {current} -> {reactive}",
                reactive,
            )
        if current >= policy.max_replicas:
            return _Step(
                current,
                FloorReason.AT_MAXIMUM,
                f"queue latency {latency:.1f}ms > target {target:g}ms; floor at maximum",
                current,
            )
        return _Step(
            current,
            FloorReason.AWAITING_READY_REPLICAS,
            f"queue latency {latency:.1f}ms > target {target:g}ms; {ready}/{current} "
            "replicas ready, waiting for the rest before raising again",
            current,
        )
    if latency < watermark:
        below_since = (
            state.below_watermark_since
            if state.below_watermark_since is not None
            else observation.now
        )
        quiet_for = now - _epoch(below_since)
        since_change = (
            math.inf if state.last_change_at is None else now - _epoch(state.last_change_at)
        )
        demand = min(ready, current)
        if current <= policy.min_replicas:
            return _Step(
                current,
                FloorReason.AT_MINIMUM,
                f"queue latency {latency:.1f}ms below watermark; floor at minimum",
                demand,
                below_since,
            )
        if quiet_for >= policy.cooldown_seconds and since_change >= policy.cooldown_seconds:
            # A fresh cooldown of quiet is needed before the next step down.
            return _Step(
                current - 1,
                FloorReason.QUEUE_LATENCY_BELOW_WATERMARK,
                f"queue latency {latency:.1f}ms < watermark {watermark:g}ms for "
                f"{quiet_for:.0f}s; lowering floor {current} -> {current - 1}",
                current - 1,
                observation.now,
            )
        wait = policy.cooldown_seconds - min(quiet_for, since_change)
        return _Step(
            current,
            FloorReason.COOLING_DOWN,
            f"queue latency {latency:.1f}ms below watermark; holding floor {current} for "
            f"another {wait:.0f}s",
            demand,
            below_since,
        )
    return _Step(
        current,
        FloorReason.WITHIN_BAND,
        f"queue latency {latency:.1f}ms within [{watermark:g}, {target:g}]ms; holding",
        ready,
    )


def _finish(
    policy: FloorPolicy,
    before: FloorState,
    observation: FloorObservation,
    step: _Step,
    learned: FloorState,
    model: _Model | None,
) -> FloorDecision:
    now = _epoch(observation.now)
    floor = policy.clamp(step.floor)
    changed = floor != before.current_floor
    raised = floor > before.current_floor
    elapsed = 0.0 if before.last_seen_at is None else max(0.0, now - before.last_seen_at)
    decay = decay_for(max(elapsed, 1e-9), ACCOUNTING_HALF_LIFE_SECONDS) if elapsed else 1.0
    hpa = observation.hpa_replicas
    held = learned.held_above_hpa * decay
    if hpa is not None:
        held += max(0, floor - policy.clamp(hpa)) * elapsed
    latency = _usable_latency(observation.queue_latency_ms)
    breach = learned.breach_seconds * decay
    if latency is not None and latency > policy.target_ms:
        breach += elapsed
    state = dataclasses.replace(
        learned,
        current_floor=floor,
        last_change_at=observation.now if changed else before.last_change_at,
        last_scale_up_at=observation.now if raised else before.last_scale_up_at,
        below_watermark_since=step.below_since,
        held_above_hpa=held,
        breach_seconds=breach,
        last_seen_at=now,
    )
    pw = policy.prewarm
    if not pw.enabled:
        prewarm = PrewarmState.OFF
    elif _usable(observation.prewarm_rise) is None:
        prewarm = PrewarmState.NO_HISTORY
    elif model is None:
        prewarm = PrewarmState.UNSIZED
    elif _prewarm_gated(state.prewarm_hits, state.prewarm_misses):
        prewarm = PrewarmState.GATED
    else:
        prewarm = PrewarmState.ACTIVE
    accounting = FloorAccounting(
        service_seconds=state.service_seconds,
        capacity_rps=model.capacity if model else None,
        planned_utilisation=model.utilisation if model else None,
        forecast_rps=model.forecast if model else None,
        forecast_error=state.forecast_error,
        headroom=model.headroom if model else 0.0,
        correction=state.correction,
        utilisation_gain=state.utilisation_gain,
        replica_hours_above_hpa=held / 3600,
        breach_minutes=breach / 60,
        prewarm=prewarm,
        prewarm_hit_rate=_prewarm_hit_rate(state.prewarm_hits, state.prewarm_misses),
    )
    return FloorDecision(
        floor,
        step.reason,
        changed,
        step.message,
        state,
        policy.clamp(step.demand),
        accounting,
    )
