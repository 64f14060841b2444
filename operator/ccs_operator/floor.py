"""The warm-floor policy: queue latency (and yesterday's demand) -> the HPA's minReplicas.

An HPA reacts after CPU or request rate has risen, and a new GPU replica then needs minutes
to pull and load its model. The floor keeps replicas warm instead: it rises as soon as
Triton's queue latency passes the target, falls slowly once the queue is well below it, and
(optionally) pre-warms for peaks that recur every day or week.

This module is pure: no I/O, no clock, no environment. Time arrives in the observation, the
previous decision arrives as `FloorState`, and `decide` returns the next state with the
decision, so the caller owns persistence (the ccs status) and the sim can replay a trace.

The shape follows dask-kubernetes' adaptive autoscaler: a target derived from load, clamped
to [minimum, maximum], scale-down only after the signal has stayed low for a while
(`cooldown_seconds`, dask's `wait_count * interval`), and bounded steps.

Rules, in the order `decide` applies them:
1. Floor disabled -> the floor is the spec minimum (`FloorDisabled`).
2. A floor outside [min, max] (the spec changed) is clamped first (`ClampedToSpec`).
3. No usable latency (no series, NaN from 0/0, negative) -> hold, never drop (`NoData`).
4. Latency above target -> raise in proportion to the excess over the *ready* replicas
   (the latency was produced by them, not by replicas still loading), at least
   `scale_up_step` above max(ready, floor). If replicas are still starting (ready < floor)
   and the proportional target fits in the current floor, hold (`AwaitingReadyReplicas`):
   raising again before the last raise has landed would stack cold starts into overshoot.
5. Latency below target * lower_watermark_ratio continuously for a full cooldown, and no
   change within a cooldown -> lower by exactly one replica (`QueueLatencyBelowWatermark`);
   before that, `CoolingDown`. Between the watermark and the target -> hold (`WithinBand`):
   the gap between the two thresholds is the hysteresis that prevents flapping.
6. Pre-warm: never below the demand recorded one period earlier at now + lead time, which
   covers the cold start (`PrewarmForRecurringPeak`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # api.py is only needed to build a policy from a parsed spec
    from ccs_operator.api import ServiceSpec

Instant = datetime | float
"""A point in time: an aware datetime or Unix epoch seconds."""

DAY_SECONDS = 86_400
WEEK_SECONDS = 7 * DAY_SECONDS
# Cover a model pull and load of a few minutes plus one evaluation interval and one HPA sync:
# a pre-warmed replica must be Ready when the peak arrives, not start loading then.
DEFAULT_LEAD_TIME_SECONDS = 600


class FloorReason(StrEnum):
    """Why the floor is what it is; CamelCase so it can be a Kubernetes condition reason."""

    QUEUE_LATENCY_ABOVE_TARGET = "QueueLatencyAboveTarget"
    QUEUE_LATENCY_BELOW_WATERMARK = "QueueLatencyBelowWatermark"
    WITHIN_BAND = "WithinBand"
    COOLING_DOWN = "CoolingDown"
    AWAITING_READY_REPLICAS = "AwaitingReadyReplicas"
    PREWARM_FOR_RECURRING_PEAK = "PrewarmForRecurringPeak"
    AT_MAXIMUM = "AtMaximum"
    AT_MINIMUM = "AtMinimum"
    NO_DATA = "NoData"
    CLAMPED_TO_SPEC = "ClampedToSpec"
    FLOOR_DISABLED = "FloorDisabled"


@dataclass(frozen=True, slots=True)
class PrewarmPolicy:
    enabled: bool = False
    period_seconds: int = DAY_SECONDS
    lead_time_seconds: int = DEFAULT_LEAD_TIME_SECONDS

    def __post_init__(self) -> None:
        if self.period_seconds <= 0:
            raise ValueError("prewarm period_seconds must be > 0")
        if not 0 <= self.lead_time_seconds < self.period_seconds:
            raise ValueError("prewarm lead_time_seconds must be in [0, period_seconds)")


@dataclass(frozen=True, slots=True)
class FloorPolicy:
    """The floor's knobs, from `spec.replicas` and `spec.autoscaling.floor`."""

    min_replicas: int
    max_replicas: int
    target_ms: float
    lower_watermark_ratio: float = 0.5
    scale_up_step: int = 1
    cooldown_seconds: float = 300.0
    prewarm: PrewarmPolicy = field(default_factory=PrewarmPolicy)
    enabled: bool = True

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

    @classmethod
    def from_spec(cls, spec: ServiceSpec, lead_time_seconds: int | None = None) -> FloorPolicy:
        """The policy of a service; `lead_time_seconds` (e.g. the measured cold start) is
        used when the spec sets no pre-warm lead time of its own."""
        f = spec.autoscaling.floor
        lead = f.prewarm.lead_time_seconds
        if lead is None:
            lead = lead_time_seconds
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
                lead_time_seconds=DEFAULT_LEAD_TIME_SECONDS if lead is None else lead,
            ),
            enabled=f.enabled,
        )

    def clamp(self, replicas: int) -> int:
        return min(max(replicas, self.min_replicas), self.max_replicas)


@dataclass(frozen=True, slots=True)
class FloorObservation:
    """What the floor loop saw at `now`.

    queue_latency_ms: mean (or p99) queue wait; None when Prometheus had no series; NaN
        (0/0: no requests in the window) is treated like None; +inf (queued time but no
        request finished) counts as far above target.
    ready_replicas: Ready pods of the Deployment now.
    prewarm_history: the demand recorded one period earlier over [now, now + lead]
        (see prom.py); None when there is no history yet.
    demand_hint: replicas the load needs now independently of the floor, e.g. the HPA's
        unclamped recommendation ceil(current * cpuUtilisation / cpuTarget); it only feeds
        `FloorDecision.demand` (tomorrow's pre-warm history), never today's floor.
    """

    queue_latency_ms: float | None
    ready_replicas: int
    now: Instant
    prewarm_history: int | None = None
    demand_hint: int | None = None


@dataclass(frozen=True, slots=True)
class FloorState:
    """What the loop carries between evaluations (persisted in the ccs status)."""

    current_floor: int
    last_change_at: Instant | None = None
    last_scale_up_at: Instant | None = None
    # Start of the current uninterrupted stretch below the lower watermark: lowering needs a
    # full cooldown of it, so one quiet sample after a busy hour cannot drop the floor.
    below_watermark_since: Instant | None = None

    @classmethod
    def initial(cls, policy: FloorPolicy) -> FloorState:
        return cls(current_floor=policy.min_replicas)


@dataclass(frozen=True, slots=True)
class FloorDecision:
    floor: int
    reason: FloorReason
    changed: bool
    message: str
    state: FloorState
    # Replicas needed now without pre-warm (the reactive floor, ready replicas under load, or
    # the caller's demand hint). Exported as ccs_floor_demand_replicas, it is the pre-warm
    # history one period later. Pre-warmed replicas are deliberately not counted, or every
    # day the pre-warm would start one lead time earlier and never decay.
    demand: int


# Reasons that mean "kept the floor where it was": after a clamp, the clamp is the news.
_HOLDING_REASONS = frozenset(
    {
        FloorReason.WITHIN_BAND,
        FloorReason.COOLING_DOWN,
        FloorReason.NO_DATA,
        FloorReason.AT_MINIMUM,
        FloorReason.AT_MAXIMUM,
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


def decide(policy: FloorPolicy, state: FloorState, observation: FloorObservation) -> FloorDecision:
    """The next floor for one service; pure and deterministic."""
    now = _epoch(observation.now)
    original = state.current_floor
    ready = max(observation.ready_replicas, 0)

    def done(
        floor: int,
        reason: FloorReason,
        message: str,
        *,
        below_since: Instant | None,
        demand: int,
    ) -> FloorDecision:
        changed = floor != original
        raised = floor > original
        new_state = FloorState(
            current_floor=floor,
            last_change_at=observation.now if changed else state.last_change_at,
            last_scale_up_at=observation.now if raised else state.last_scale_up_at,
            below_watermark_since=below_since,
        )
        hint = observation.demand_hint
        demand = max(demand, hint if hint is not None else 0)
        return FloorDecision(floor, reason, changed, message, new_state, policy.clamp(demand))

    if not policy.enabled:
        return done(
            policy.min_replicas,
            FloorReason.FLOOR_DISABLED,
            "floor controller disabled; minReplicas is spec.replicas.min",
            below_since=None,
            demand=policy.min_replicas,
        )

    current = policy.clamp(original)
    clamped = current != original
    latency = _usable_latency(observation.queue_latency_ms)
    target = policy.target_ms
    watermark = target * policy.lower_watermark_ratio

    below_since: Instant | None = None
    if latency is None:
        reactive = current
        reason = FloorReason.NO_DATA
        message = "no queue-latency data; holding the floor"
        demand = current
    elif latency > target:
        # Size from the ready replicas: they produced this latency. Replicas still loading
        # (ready < current) are capacity already on its way.
        base = max(ready, 1)
        ratio = latency / target
        desired = policy.max_replicas if math.isinf(ratio) else math.ceil(base * ratio)
        if ready >= current:
            reactive = max(desired, ready + policy.scale_up_step)
        else:
            reactive = max(desired, current)
        reactive = min(reactive, policy.max_replicas)
        demand = reactive
        if reactive > current:
            reason = FloorReason.QUEUE_LATENCY_ABOVE_TARGET
            message = (
                f"queue latency {latency:.1f}ms > target {target:g}ms with {ready} ready; "
                f"raising floor {current} -> {reactive}"
            )
        elif current >= policy.max_replicas:
            reason = FloorReason.AT_MAXIMUM
            message = f"queue latency {latency:.1f}ms > target {target:g}ms; floor at maximum"
        else:
            reason = FloorReason.AWAITING_READY_REPLICAS
            message = (
                f"queue latency {latency:.1f}ms > target {target:g}ms; {ready}/{current} "
                "replicas ready, waiting for the rest before raising again"
            )
    elif latency < watermark:
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
            reactive, reason = current, FloorReason.AT_MINIMUM
            message = f"queue latency {latency:.1f}ms below watermark; floor at minimum"
        elif quiet_for >= policy.cooldown_seconds and since_change >= policy.cooldown_seconds:
            reactive, reason = current - 1, FloorReason.QUEUE_LATENCY_BELOW_WATERMARK
            message = (
                f"queue latency {latency:.1f}ms < watermark {watermark:g}ms for "
                f"{quiet_for:.0f}s; lowering floor {current} -> {reactive}"
            )
            demand = reactive
            # A fresh cooldown of quiet is needed before the next step down.
            below_since = observation.now
        else:
            reactive, reason = current, FloorReason.COOLING_DOWN
            wait = policy.cooldown_seconds - min(quiet_for, since_change)
            message = (
                f"queue latency {latency:.1f}ms below watermark; holding floor "
                f"{current} for another {wait:.0f}s"
            )
    else:
        reactive, reason = current, FloorReason.WITHIN_BAND
        message = f"queue latency {latency:.1f}ms within [{watermark:g}, {target:g}]ms; holding"
        # Latency inside the band means every ready replica is doing useful work.
        demand = ready

    floor = reactive
    pw = policy.prewarm
    if pw.enabled and observation.prewarm_history is not None:
        planned = policy.clamp(observation.prewarm_history)
        if planned > floor:
            floor = planned
            reason = FloorReason.PREWARM_FOR_RECURRING_PEAK
            message = (
                f"{planned} replicas were needed one period ago within the next "
                f"{pw.lead_time_seconds}s; pre-warming"
            )
            # Pre-warmed idle replicas make the queue quiet; that quiet must not count
            # toward lowering once the peak has passed.
            below_since = None

    if clamped and floor == current and reason in _HOLDING_REASONS:
        reason = FloorReason.CLAMPED_TO_SPEC
        message = (
            f"floor {original} outside spec [{policy.min_replicas}, {policy.max_replicas}]; "
            f"clamped to {current}"
        )

    return done(policy.clamp(floor), reason, message, below_since=below_since, demand=demand)
