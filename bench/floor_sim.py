"""Trace-driven simulation of the warm floor against a plain HPA swept over CPU targets.

    python bench/floor_sim.py                       # 20 seeds x 7 synthetic days
    python bench/floor_sim.py --trace F.csv --json  # replay any request trace
    python bench/floor_sim.py --write bench/RESULTS.md
    python bench/floor_sim.py --bound --write bench/RESULTS.md  # what knowing the future buys

A trace CSV has a header, a column `timestamp` (seconds from the start, or ISO 8601) and
an optional column `weight` (relative work of that request, default 1), one row per
request; `--mean-rps R` scales it so that the mean load is R unit requests per second.

What is simulated, and what each side can see (the floor sees only what the operator reads
from Prometheus and the API server; nothing else enters `decide`):

- Pods: a pod holds a GPU from creation and serves after a cold start drawn per pod from a
  log-normal (median `--cold-start-s`, sigma `--cold-start-sigma`). The operator measures
  each pod's cold start as it does on a cluster (ccs_operator.core.coldstart) and looks ahead by
  the measured p95 plus one evaluation, rounded up to minutes.
- Serving: every Ready pod is one Triton with `--instances` model instances behind one
  queue (M/M/c per pod, service time `--service-ms` per request, scaled by the request's
  weight); the Service spreads requests evenly over Ready pods. Below saturation a pod's
  wait is Erlang C (mean and exact tail); above it a fluid backlog builds and drains, and a
  pod that turns Ready starts with an empty queue while the old ones drain theirs. A
  request violates the SLO when its queue wait exceeds `--target-ms`.
  `--serving batching` serves through Triton's dynamic batcher instead (`BatchServing`):
  an execution of b requests costs `--batch-fixed-ms` + b * `--batch-item-ms`, up to
  `--max-batch`; the instances run back to back once load exceeds what they serve one
  request at a time, and a request then waits for the next instance to turn free.
- What Prometheus holds (Triton's series, scraped every 15 s, read through rate(...[1m])
  ending at the last scrape): completed requests, busy instance-seconds (a batch's compute
  counted once), executions, pending requests, and each pod's p99 queue wait over the last minute
  (Triton's summary; the operator takes the worst pod). Pre-warm's history is the same
  arrival-rate series one period earlier, as promql.py's subquery reads it.
- HPA (what render.py emits, autoscaling/v2 semantics): 15 s sync; CPU utilisation of a GPU
  pod is low and noisy, and not exactly proportional to load (5% idle, up to 70% at
  saturation, concave, log-normal noise per pod and sample), read with a metrics lag of
  `--hpa-lag-s` (metrics-server resolution plus the HPA's own delay); not-ready pods count
  as 0% when scaling up; 10% tolerance; scale-up at most max(100%, 4 pods) per 30 s;
  scale-down after 300 s stabilisation and at most 1 pod per 60 s; a minReplicas above the
  current count is applied at once. The requests-per-second External metric is left out (it
  is served nowhere by default, so the HPA scales on CPU).
- Floor: the real `ccs_operator.core.floor.decide` every 30 s; its floor is the HPA's
  minReplicas from the next sync. Pre-warm's history is the relative rise of the same
  arrival-rate signal on each of the last two days, as promql.py's query computes it.

Compared in every run: the plain HPA at CPU targets 30..80% in steps of 5 (the cost /
violations frontier), the floor on the default HPA (60%), and the floor with pre-warm.
The floor's violations are compared with the frontier interpolated at the floor's own
GPU-hours (its Pareto points, linear between them).

`--bound` (synthetic traces only) adds an information bound, not a product configuration:
the oracle floor is told the future of the trace's demand apart from its unannounced bursts
(`Trace.known`), which the operator cannot know. Every floor evaluation it sets minReplicas
to the replicas that serve the highest known demand over the next cold-start p95 plus one
evaluation at the queue-wait target, times 1 + h of standing headroom, on the HPA; swept
over h and the HPA's CPU target, and compared with the same frontier. It writes its own
section and leaves pre-warm out.
"""

from __future__ import annotations

import argparse
import bisect
import csv
import dataclasses
import functools
import itertools
import json
import math
import multiprocessing
import random
import statistics
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

from ccs_operator.core.coldstart import ColdStart, ColdStartWindow, lead_time_seconds
from ccs_operator.core.floor import (
    DAY_SECONDS,
    DEFAULT_LEAD_TIME_SECONDS,
    PREWARM_HISTORY_PERIODS,
    PREWARM_SLACK_SECONDS,
    FloorDecision,
    FloorObservation,
    FloorPolicy,
    FloorState,
    PrewarmPolicy,
    decide,
)
from ccs_operator.core.promql import MIN_HISTORY_RATE
from ccs_operator.core.queueing import DEFAULT_TAIL_PROBABILITY, erlang_c
from results import commit, write_section

RESULTS_HEADING = "## Warm floor simulation"
BOUND_HEADING = "## Warm floor simulation: what knowing the future buys"
TRACE_HEADING = "## Warm floor on a real trace"
BATCHING_SUFFIX = ", batching serving"
# 30..80% in steps of 5, and below that, so that a floor that spends more than a 30% HPA
# (bursty traces) still has an equal-cost point to be compared against.
HPA_TARGETS = tuple(range(15, 81, 5))
DEFAULT_HPA_TARGET = 60
# The oracle floor (--bound): standing headroom over the known demand, and the HPA under it.
BOUND_HEADROOMS = (0.0, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0)
BOUND_HPA_TARGETS = (45, DEFAULT_HPA_TARGET)
HPA_SYNC_S = 15.0
HPA_TOLERANCE = 0.10
HPA_DOWN_WINDOW_S = 300.0
HPA_UP_PERIOD_S = 30.0
HPA_DOWN_PERIOD_S = 60.0
FLOOR_INTERVAL_S = 30.0
SCRAPE_S = 15.0
SCRAPE_PHASE_S = 10.0
RATE_WINDOW_S = 60.0
SUMMARY_WINDOW_S = 60.0
COOLDOWN_S = 300.0


# --- traffic -----------------------------------------------------------------------------

# Hour -> share of the working-day plateau: quiet night, morning ramp, lunch dip, evening.
_DIURNAL = [
    (0, 0.15),
    (6, 0.12),
    (7.5, 0.45),
    (9, 0.85),
    (12, 1.0),
    (13, 0.85),
    (14, 1.0),
    (17, 0.9),
    (19, 0.55),
    (22, 0.25),
    (24, 0.15),
]


def _diurnal(hour: float) -> float:
    for (h0, v0), (h1, v1) in itertools.pairwise(_DIURNAL):
        if h0 <= hour <= h1:
            return v0 + (v1 - v0) * (hour - h0) / (h1 - h0)
    return _DIURNAL[-1][1]


@dataclass(frozen=True)
class Trace:
    name: str
    dt: float
    work: list[float]  # unit requests per second in each step
    events: list[str] = field(default_factory=list)
    # (kind, start, end) seconds: where violations are attributed ("burst", "peak").
    windows: list[tuple[str, float, float]] = field(default_factory=list)
    warmup_s: float = 0.0  # not counted (the first replicas settle)
    # Synthetic traces only: `work` without its unannounced bursts (the diurnal shape, the
    # recurring peaks, each day's level and the noise), what the oracle floor is told.
    known: list[float] = field(default_factory=list)

    @property
    def days(self) -> int:
        return max(1, math.ceil(len(self.work) * self.dt / DAY_SECONDS - 1e-9))


def synthetic_trace(days: int, seed: int, plateau_rps: float, dt: float) -> Trace:
    """Days that differ: weekends, shifted and resized recurring peaks, days without a
    peak, and unannounced bursts that differ every day."""
    rng = random.Random(seed)
    steps_per_day = int(DAY_SECONDS / dt)
    work: list[float] = []
    known: list[float] = []
    events: list[str] = []
    windows: list[tuple[str, float, float]] = []
    noise = 0.0
    for day in range(days):
        weekend = day % 7 in (5, 6)
        level = plateau_rps * rng.uniform(0.9, 1.1) * (0.45 if weekend else 1.0)
        recurring = []
        for name, hour, dur, height, chance in (
            ("login storm", 9.0, 15 * 60, 0.6, 0.85),
            ("batch job", 14.0, 20 * 60, 0.75, 0.85),
        ):
            if weekend or rng.random() > chance:
                events.append(f"day {day + 1} no {name}")
                continue
            shift = rng.gauss(0, 240) if rng.random() < 0.8 else rng.uniform(-3600, 3600)
            size = height * rng.uniform(0.6, 1.4)
            length = dur * rng.uniform(0.7, 1.3)
            start = hour * 3600 + shift
            recurring.append((start, length, size))
            events.append(
                f"day {day + 1} {name} {_hhmm(start)} +{size:.0%} {length / 60:.0f}m"
            )
        bursts = []
        for _ in range(rng.randint(3, 8)):
            start = rng.uniform(7 * 3600, 22 * 3600)
            bursts.append((start, rng.uniform(180, 720), rng.uniform(0.3, 1.0)))
        for start, dur, height in sorted(bursts):
            events.append(f"day {day + 1} burst {_hhmm(start)} +{height:.0%} {dur / 60:.0f}m")
        # A violation counts toward an event from its start until a cold start after it ends.
        base = day * DAY_SECONDS
        for kind, spans in (("peak", recurring), ("burst", bursts)):
            windows += [(kind, base + a - 60, base + a + d + 240) for a, d, _ in spans]
        for i in range(steps_per_day):
            t = i * dt
            value = _diurnal(t / 3600)
            for start, dur, height in recurring:
                value += height * _pulse(t, start, dur, edge=60)
            without_bursts = value
            for start, dur, height in bursts:
                value += height * _diurnal(start / 3600) * _pulse(t, start, dur, edge=30)
            noise = 0.995 * noise + rng.gauss(0, 0.005)
            work.append(max(0.0, level * value * (1 + noise)))
            known.append(max(0.0, level * without_bursts * (1 + noise)))
    return Trace(
        f"synthetic seed {seed}",
        dt,
        work,
        events,
        sorted(windows, key=lambda w: w[1]),
        known=known,
    )


def _pulse(t: float, start: float, duration: float, edge: float) -> float:
    if t < start or t > start + duration + edge:
        return 0.0
    if t < start + edge:
        return (t - start) / edge
    if t > start + duration:
        return 1 - (t - start - duration) / edge
    return 1.0


def _hhmm(seconds: float) -> str:
    seconds %= DAY_SECONDS
    return f"{int(seconds // 3600):02d}:{int(seconds % 3600 // 60):02d}"


class TraceError(ValueError):
    """A trace file that cannot be replayed; the message names the row or column."""


def _parse_time(raw: str, row: int) -> float:
    try:
        return float(raw)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(raw.strip())
    except ValueError:
        raise TraceError(
            f"row {row}: timestamp {raw!r} is neither seconds nor ISO 8601"
        ) from None
    return parsed.timestamp() if parsed.tzinfo else parsed.replace(tzinfo=None).timestamp()


def load_trace(
    path: Path, dt: float, mean_rps: float | None, warmup_s: float | None = None
) -> Trace:
    """One row per request -> unit requests per second per step of `dt` seconds."""
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        # Column names are matched case-insensitively (public traces say TIMESTAMP).
        fields = [c.strip().lower() for c in reader.fieldnames or ()]
        if "timestamp" not in fields:
            raise TraceError(f"{path}: needs a header with a column named timestamp")
        reader.fieldnames = fields
        times: list[float] = []
        weights: list[float] = []
        for row_number, row in enumerate(reader, start=2):
            times.append(_parse_time(row["timestamp"], row_number))
            raw = (row.get("weight") or "").strip()
            try:
                weight = float(raw) if raw else 1.0
            except ValueError:
                raise TraceError(f"row {row_number}: weight {raw!r} is not a number") from None
            if not (math.isfinite(weight) and weight >= 0):
                raise TraceError(f"row {row_number}: weight must be a number >= 0")
            weights.append(weight)
    if not times:
        raise TraceError(f"{path}: no requests")
    start = min(times)
    steps = max(1, math.ceil((max(times) - start) / dt + 1e-9))
    work = [0.0] * steps
    for t, w in zip(times, weights, strict=True):
        work[min(steps - 1, int((t - start) / dt))] += w / dt
    mean = sum(work) / len(work)
    if mean <= 0:
        raise TraceError(f"{path}: every weight is 0")
    if mean_rps is not None:
        work = [w * mean_rps / mean for w in work]
    duration = steps * dt
    warm = min(600.0, duration / 6) if warmup_s is None else warmup_s
    return Trace(path.name, dt, work, warmup_s=warm)


# --- serving -----------------------------------------------------------------------------


@dataclass
class Pod:
    created: float
    ready_at: float
    number: int = 0  # unique within a run: its cold start is recorded once
    backlog: float = 0.0  # unit requests queued beyond what the instances are serving
    # (arrivals, arrivals * p99 wait) per step over the summary window, for the p99 signal
    window: deque[tuple[float, float]] = field(default_factory=deque)


@dataclass(frozen=True)
class PodLoad:
    """One pod's steady state at an arrival rate below saturation."""

    mean_wait: float  # seconds
    share_over: float  # share of requests whose queue wait exceeds the target
    p99: float  # seconds
    busy: float  # busy model-instance seconds per second, each batch counted once
    executions: float  # model executions per second


@dataclass(frozen=True)
class Serving:
    """One Triton per pod, `instances` model instances behind one queue, each request
    served alone: M/M/c with service time `service_s` (Triton's default scheduler, or
    batching whose batches stay at one request)."""

    service_s: float  # per unit request per instance
    instances: int
    target_s: float

    @property
    def capacity(self) -> float:
        """Requests per second a pod completes when saturated."""
        return self.instances / self.service_s

    def steady(self, rate: float) -> PodLoad:
        if rate <= 0:
            return PodLoad(0.0, 0.0, 0.0, 0.0, 0.0)
        mu = 1.0 / self.service_s
        c = erlang_c(self.instances, rate / mu)
        drain = self.instances * mu - rate
        tail = c * math.exp(-drain * self.target_s)
        p99 = math.log(c / 0.01) / drain if c > 0.01 else 0.0
        return PodLoad(c / drain, tail, p99, rate * self.service_s, rate)

    @property
    def saturated_wait(self) -> float:
        """Queue wait at saturation beyond the backlog's own (backlog / capacity)."""
        return 0.0

    @property
    def saturated_batch(self) -> int:
        return 1


@dataclass(frozen=True)
class BatchServing:
    """Triton's dynamic batcher: an instance that turns free takes every queued request (up
    to `max_batch`) as one execution costing `fixed_s + item_s * b`, as a GPU does.

    A fluid model of that batcher. While an instance is free whenever a request arrives
    (offered load at batch 1 below the instances), batches hold one request and a request
    waits only if it finds every instance busy (Erlang C at service time fixed + item).
    Past that, the instances run back to back and each execution carries what arrived since
    the previous one was taken: b = rate * T / c, so the cycle is T = fixed / (1 - item *
    rate / c), and a request waits for the next instance to turn free, uniformly up to
    `wait_span` of a cycle (1/c when the instances stay evenly staggered, 1 when they run in
    step; the model takes the middle). Saturated at b = max_batch.
    """

    fixed_s: float
    item_s: float
    max_batch: int
    instances: int
    target_s: float
    wait_span: float = 0.75

    @property
    def capacity(self) -> float:
        return self.instances * self.max_batch / (self.fixed_s + self.item_s * self.max_batch)

    def cycle(self, rate: float) -> tuple[float, float]:
        """(requests per execution, seconds per execution) at `rate` per pod."""
        single = self.fixed_s + self.item_s
        if rate * single <= self.instances:
            return 1.0, single
        span = self.fixed_s / (1 - self.item_s * rate / self.instances)
        return rate * span / self.instances, span

    def steady(self, rate: float) -> PodLoad:
        if rate <= 0:
            return PodLoad(0.0, 0.0, 0.0, 0.0, 0.0)
        batch, span = self.cycle(rate)
        single = self.fixed_s + self.item_s
        waits = erlang_c(self.instances, rate * single) if batch <= 1 else 1.0
        longest = self.wait_span * span
        over = waits * max(0.0, 1 - self.target_s / longest)
        p99 = longest * (1 - 0.01 / waits) if waits > 0.01 else 0.0
        busy = rate * span / batch
        return PodLoad(waits * longest / 2, over, p99, busy, rate / batch)

    @property
    def saturated_wait(self) -> float:
        return self.wait_span * (self.fixed_s + self.item_s * self.max_batch)

    @property
    def saturated_batch(self) -> int:
        return self.max_batch


def _share_above(w0: float, w1: float, target: float) -> float:
    lo, hi = min(w0, w1), max(w0, w1)
    if hi <= target:
        return 0.0
    if lo >= target:
        return 1.0
    return (hi - target) / (hi - lo)


# --- the HPA -----------------------------------------------------------------------------


def cpu_utilisation(busy_fraction: float, rng: random.Random) -> float:
    """A GPU pod's CPU use as a share of its request: low, noisy, not proportional."""
    base = 0.05 + 0.65 * min(1.0, busy_fraction) ** 0.8
    return max(0.0, base * rng.lognormvariate(0, 0.25) + rng.gauss(0, 0.02))


@dataclass
class Hpa:
    target: float
    spec_min: int
    spec_max: int
    history: deque[tuple[float, int]] = field(default_factory=deque)
    ups: deque[tuple[float, int]] = field(default_factory=deque)
    downs: deque[tuple[float, int]] = field(default_factory=deque)

    def recommend(self, current: int, ready: int, utilisation: float | None) -> int:
        """The replica count the CPU metric asks for (before min/max and rate limits)."""
        if ready == 0 or utilisation is None:
            return current
        ratio = utilisation / self.target
        if abs(ratio - 1) <= HPA_TOLERANCE:
            return current
        unready = current - ready
        if ratio > 1 and unready > 0:
            # Not-ready pods count as 0% when scaling up.
            ratio = utilisation * ready / (self.target * current)
            if ratio <= 1 + HPA_TOLERANCE:
                return current
            return math.ceil(ratio * current)
        return math.ceil(ratio * ready)

    def sync(
        self, now: float, current: int, ready: int, utilisation: float | None, floor: int
    ) -> int:
        minimum = max(floor, self.spec_min)
        if current < minimum:
            return minimum  # applied at once, no rate limit
        rec = self.recommend(current, ready, utilisation)
        self.history.append((now, rec))
        while self.history and self.history[0][0] < now - HPA_DOWN_WINDOW_S:
            self.history.popleft()
        if rec < current:
            rec = min(current, max(r for _, r in self.history))
        for events, period in ((self.ups, HPA_UP_PERIOD_S), (self.downs, HPA_DOWN_PERIOD_S)):
            while events and events[0][0] <= now - period:
                events.popleft()
        if rec > current:
            start = current - sum(n for _, n in self.ups)
            rec = min(rec, max(current, 2 * start, start + 4), self.spec_max)
        elif rec < current:
            start = current + sum(n for _, n in self.downs)
            rec = max(rec, min(current, start - 1), minimum)
        rec = min(max(rec, minimum), self.spec_max)
        if rec > current:
            self.ups.append((now, rec - current))
        elif rec < current:
            self.downs.append((now, current - rec))
        return rec


# --- one run -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Setup:
    service_ms: float = 20.0
    instances: int = 2
    target_ms: float = 100.0
    cold_start_s: float = 180.0
    cold_start_sigma: float = 0.25
    min_replicas: int = 2
    max_replicas: int = 20
    hpa_lag_s: float = 30.0
    burst_cover: float = 0.75
    # "mmc": one request per execution; "batching": Triton's dynamic batcher (BatchServing).
    serving_model: str = "mmc"
    batch_fixed_ms: float = 40.0
    batch_item_ms: float = 10.0
    max_batch: int = 8

    def serving(self) -> Serving | BatchServing:
        target = self.target_ms / 1000
        if self.serving_model == "batching":
            return BatchServing(
                self.batch_fixed_ms / 1000,
                self.batch_item_ms / 1000,
                self.max_batch,
                self.instances,
                target,
            )
        return Serving(self.service_ms / 1000, self.instances, target)


@dataclass(frozen=True)
class Config:
    name: str
    kind: str  # "hpa" | "floor" | "floor+prewarm" | "oracle"
    hpa_cpu_target: int
    headroom: float = 0.0  # the oracle's standing headroom over the known demand


@dataclass
class Result:
    name: str
    kind: str
    hpa_cpu_target: int
    requests: float = 0.0
    violating: float = 0.0
    gpu_hours: float = 0.0
    day_requests: list[float] = field(default_factory=list)
    day_violating: list[float] = field(default_factory=list)
    day_gpu_hours: list[float] = field(default_factory=list)
    floor_changes: int = 0
    prewarm_gated_share: float = 0.0
    violating_by_kind: dict[str, float] = field(default_factory=dict)


def _policy(setup: Setup, config: Config, horizon: int) -> FloorPolicy:
    return FloorPolicy(
        min_replicas=setup.min_replicas,
        max_replicas=setup.max_replicas,
        target_ms=setup.target_ms,
        cooldown_seconds=COOLDOWN_S,
        prewarm=PrewarmPolicy(
            enabled=config.kind == "floor+prewarm", lead_time_seconds=horizon
        ),
        instances_per_replica=setup.instances,
        max_batch=setup.max_batch if setup.serving_model == "batching" else 1,
        horizon_seconds=float(horizon),
        burst_cover=setup.burst_cover,
    )


def simulate(
    trace: Trace,
    config: Config,
    setup: Setup,
    seed: int,
    log: list[tuple[float, float, int, int, float, int]] | None = None,
) -> Result:
    """One configuration over one trace; `log` collects (time, load, pods, ready, late
    requests, floor) per step for plots and tests."""
    rng = random.Random(f"{seed}/{config.name}")
    cold_rng = random.Random(f"{seed}/cold")  # the same cold starts for every configuration
    dt = trace.dt
    serving = setup.serving()
    days = trace.days
    res = Result(
        config.name,
        config.kind,
        config.hpa_cpu_target,
        day_requests=[0.0] * days,
        day_violating=[0.0] * days,
        day_gpu_hours=[0.0] * days,
    )

    def cold_start() -> float:
        return min(900.0, max(30.0, cold_rng.lognormvariate(
            math.log(setup.cold_start_s), setup.cold_start_sigma)))

    # Start warm for the first minute's load, at the HPA target's utilisation.
    first = sum(trace.work[: max(1, int(60 / dt))]) / max(1, int(60 / dt))
    start_pods = min(
        setup.max_replicas,
        max(setup.min_replicas, math.ceil(first / (serving.capacity * 0.5))),
    )
    pods = [Pod(-1e9, -1e9, n) for n in range(start_pods)]
    numbers = itertools.count(start_pods)
    hpa = Hpa(config.hpa_cpu_target / 100, setup.min_replicas, setup.max_replicas)
    use_floor = config.kind in ("floor", "floor+prewarm")
    if config.kind == "oracle" and not trace.known:
        raise ValueError("the oracle floor needs a synthetic trace's demand without bursts")
    state: FloorState | None = None
    floor = setup.min_replicas
    cold = ColdStartWindow()
    measured: set[int] = set(range(start_pods))  # the warm start's pods are not cold starts
    lag_steps = max(1, round(setup.hpa_lag_s / dt))
    cpu_log: deque[float | None] = deque(maxlen=lag_steps + round(15 / dt) + 1)
    window_steps = max(1, round(RATE_WINDOW_S / dt))
    scrape_log: deque[tuple[float, float, float, float, float, float]] = deque()
    rate_history: list[float] = []  # the arrival-rate signal at every floor evaluation
    hpa_alone = setup.min_replicas
    gated = 0
    evaluations = 0
    every_hpa = max(1, round(HPA_SYNC_S / dt))
    every_floor = max(1, round(FLOOR_INTERVAL_S / dt))
    summary_steps = max(1, round(SUMMARY_WINDOW_S / dt))
    # Per step: (completions, busy instance-seconds, pending at the end, worst p99).
    steps: deque[tuple[float, float, float, float]] = deque(maxlen=window_steps + 8)
    pending_now = 0.0
    kinds = _step_kinds(trace)

    for i, work in enumerate(trace.work):
        now = i * dt
        day = min(days - 1, int(now // DAY_SECONDS))
        counted = now >= trace.warmup_s
        ready = [p for p in pods if p.ready_at <= now]
        for p in ready:
            if p.number not in measured:
                measured.add(p.number)
                cold.add(ColdStart(str(p.number), p.ready_at - p.created, None, None, None))
        arrivals = work * dt
        completions = 0.0
        late = 0.0
        pending_now = 0.0
        busy_sum = 0.0
        execs = 0.0
        if not ready:
            late = arrivals
        else:
            share = work / len(ready)
            cap = serving.capacity
            steady = serving.steady(share) if share < 0.995 * cap else None
            for p in ready:
                start = p.backlog
                if start == 0 and steady is not None:
                    done = share * dt
                    late_share = steady.share_over
                    p99 = steady.p99
                    pending = share * steady.mean_wait
                    busy = steady.busy * dt
                    executed = steady.executions * dt
                else:
                    p.backlog = max(0.0, start + (share - cap) * dt)
                    w0 = start / cap + serving.saturated_wait
                    w1 = p.backlog / cap + serving.saturated_wait
                    late_share = _share_above(w0, w1, serving.target_s)
                    p99 = max(w0, w1)
                    done = share * dt + start - p.backlog
                    pending = p.backlog
                    busy = done * serving.instances / cap  # every instance busy
                    executed = done / serving.saturated_batch
                completions += done
                busy_sum += busy
                execs += executed
                late += share * dt * late_share
                pending_now += pending
                p.window.append((share * dt, share * dt * p99))
                if len(p.window) > summary_steps:
                    p.window.popleft()
        if counted:
            kind = kinds[i]
            res.violating_by_kind[kind] = res.violating_by_kind.get(kind, 0.0) + late
            res.requests += arrivals
            res.violating += late
            res.day_requests[day] += arrivals
            res.day_violating[day] += late
            gpu = len(pods) * dt / 3600
            res.gpu_hours += gpu
            res.day_gpu_hours[day] += gpu
        steps.append((completions, busy_sum, pending_now, execs))
        if log is not None:
            log.append((now, work, len(pods), len(ready), late, floor))

        # CPU as metrics-server reports it, per ready pod.
        if ready:
            busy_fraction = (work / len(ready)) / serving.capacity
            cpu_log.append(
                sum(cpu_utilisation(busy_fraction, rng) for _ in ready) / len(ready)
            )
        else:
            cpu_log.append(None)

        if (now - SCRAPE_PHASE_S) % SCRAPE_S < dt - 1e-9 and now >= SCRAPE_PHASE_S:
            # A scrape: what Prometheus holds until the next one.
            recent = list(itertools.islice(steps, max(0, len(steps) - window_steps), None))
            span = len(recent) * dt
            worst = 0.0
            for p in ready:
                weight = sum(a for a, _ in p.window)
                if weight > 0:
                    worst = max(worst, sum(w for _, w in p.window) / weight)
            scrape_log.append(
                (
                    now,
                    sum(c for c, _, _, _ in recent) / span,
                    sum(b for _, b, _, _ in recent) / span,
                    pending_now,
                    worst * 1000 if ready else math.inf,
                    sum(e for _, _, _, e in recent) / span,
                )
            )
            while len(scrape_log) > 4:
                scrape_log.popleft()

        if config.kind == "oracle" and i % every_floor == 0:
            told = oracle_floor(trace.known, i, dt, serving, setup, config.headroom)
            res.floor_changes += told != floor
            floor = told
        if use_floor and i % every_floor == 0 and scrape_log:
            _, rate, busy, pending, p99_ms, executions = scrape_log[-1]
            horizon = lead_time_seconds(
                cold.summary(), DEFAULT_LEAD_TIME_SECONDS, int(FLOOR_INTERVAL_S)
            )
            policy = _policy(setup, config, horizon)
            if state is None:
                state = FloorState.initial(policy)
            history = _history(rate_history, policy.prewarm) if policy.prewarm.enabled else None
            d: FloorDecision = decide(
                policy,
                state,
                FloorObservation(
                    queue_latency_ms=p99_ms,
                    ready_replicas=len(ready),
                    now=now,
                    arrival_rps=rate,
                    pending_requests=pending,
                    busy_instances=busy,
                    prewarm_rise=history,
                    hpa_replicas=hpa_alone,
                    executions_per_s=executions,
                ),
            )
            rate_history.append(rate)
            state, floor = d.state, d.floor
            res.floor_changes += d.changed
            evaluations += 1
            gated += d.accounting.prewarm.value == "Gated"

        if i % every_hpa == 0:
            lagged = cpu_log[0] if len(cpu_log) > lag_steps else None
            window = [u for u in itertools.islice(cpu_log, 0, 3) if u is not None]
            utilisation = sum(window) / len(window) if window and lagged is not None else None
            current = len(pods)
            hpa_alone = min(
                setup.max_replicas,
                max(setup.min_replicas, hpa.recommend(current, len(ready), utilisation)),
            )
            desired = hpa.sync(now, current, len(ready), utilisation, floor)
            if desired > current:
                pods.extend(
                    Pod(now, now + cold_start(), next(numbers)) for _ in range(desired - current)
                )
            elif desired < current:
                # The ReplicaSet deletes not-ready pods first, then the newest.
                pods.sort(key=lambda p: (p.ready_at <= now, -p.created), reverse=True)
                del pods[desired:]
    res.prewarm_gated_share = gated / evaluations if evaluations else 0.0
    return res


def replicas_at_target(serving: Serving | BatchServing, rate: float, most: int) -> int:
    """Fewest replicas at which at most the floor's planning tail (DEFAULT_TAIL_PROBABILITY)
    of requests wait over the target at `rate`, in the simulator's own serving model; `most`
    when none up to it does."""
    if rate <= 0:
        return 0
    for n in range(1, most + 1):
        share = rate / n
        if share < 0.995 * serving.capacity and (
            serving.steady(share).share_over <= DEFAULT_TAIL_PROBABILITY
        ):
            return n
    return most


@functools.cache
def oracle_look_ahead(setup: Setup) -> float:
    """The oracle's look-ahead: the true cold start's p95 plus one evaluation (the operator
    measures the same from its pods, rounded up to minutes). Taken from the setup rather
    than measured, so that nothing the bursts cause (which pods start when) reaches it."""
    z95 = statistics.NormalDist().inv_cdf(0.95)
    p95 = setup.cold_start_s * math.exp(z95 * setup.cold_start_sigma)
    return p95 + FLOOR_INTERVAL_S


def oracle_floor(
    known: Sequence[float],
    i: int,
    dt: float,
    serving: Serving | BatchServing,
    setup: Setup,
    headroom: float,
) -> int:
    """The information bound's floor at step `i`: told the future of the demand without its
    unannounced bursts (`known`, which the operator cannot know), it holds the replicas that
    serve the highest of it over the next look-ahead at the queue-wait target, times
    (1 + headroom). It never sees the bursts: only the headroom and the HPA cover them."""
    ahead = known[i : i + max(1, math.ceil(oracle_look_ahead(setup) / dt - 1e-9)) + 1]
    need = replicas_at_target(serving, max(ahead, default=0.0), setup.max_replicas)
    wanted = math.ceil(need * (1 + headroom) - 1e-9)
    return min(setup.max_replicas, max(setup.min_replicas, wanted))


def _step_kinds(trace: Trace) -> list[str]:
    """The event each step belongs to (recurring peaks win over bursts), else "elsewhere"."""
    kinds = ["elsewhere"] * len(trace.work)
    for wanted in ("burst", "peak"):
        for kind, start, end in trace.windows:
            if kind == wanted:
                first, last = max(0, math.ceil(start / trace.dt)), int(end / trace.dt)
                kinds[first : last + 1] = [kind] * len(kinds[first : last + 1])
    return kinds


def _history(log: list[float], prewarm: PrewarmPolicy) -> float | None:
    """Like promql.py's history query: for k = 1..PREWARM_HISTORY_PERIODS, the max arrival rate
    over [now - k * period, now - k * period + lead + slack] over the rate at now - k *
    period; the smallest ratio, once every period has history."""
    per = round(prewarm.period_seconds / FLOOR_INTERVAL_S)
    lead = max(1, round(prewarm.lead_time_seconds / FLOOR_INTERVAL_S))
    slack = round(PREWARM_SLACK_SECONDS / FLOOR_INTERVAL_S)
    found = []
    for k in range(1, PREWARM_HISTORY_PERIODS + 1):
        start = len(log) - k * per
        if start >= 0:
            ahead = max(log[start : start + lead + slack + 1])
            found.append(ahead / max(log[start], MIN_HISTORY_RATE))
    return min(found) if len(found) == PREWARM_HISTORY_PERIODS else None


# --- the frontier ------------------------------------------------------------------------


def pareto(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The (gpu_hours, violating) points no other point beats on both, by GPU-hours."""
    best: list[tuple[float, float]] = []
    for gpu, bad in sorted(points):
        if not best or bad < best[-1][1]:
            best.append((gpu, bad))
    return best


def frontier_at(points: Sequence[tuple[float, float]], gpu_hours: float) -> float | None:
    """Violations of the frontier at `gpu_hours`, linear between Pareto points; None when
    outside the swept range (the frontier cannot be judged there)."""
    front = pareto(points)
    if not front or gpu_hours < front[0][0] or gpu_hours > front[-1][0]:
        return None
    xs = [g for g, _ in front]
    k = bisect.bisect_left(xs, gpu_hours)
    if xs[k] == gpu_hours or k == 0:
        return front[k][1]
    (g0, b0), (g1, b1) = front[k - 1], front[k]
    return b0 + (b1 - b0) * (gpu_hours - g0) / (g1 - g0)


def configurations(bound: bool = False) -> list[Config]:
    """Every run's configurations; `bound`: the frontier, the floor, and the oracle floor at
    each standing headroom over each HPA target (no pre-warm)."""
    configs = [Config(f"plain HPA, CPU {t}%", "hpa", t) for t in HPA_TARGETS]
    configs.append(Config("HPA + floor", "floor", DEFAULT_HPA_TARGET))
    if not bound:
        configs.append(Config("HPA + floor + pre-warm", "floor+prewarm", DEFAULT_HPA_TARGET))
        return configs
    for target in BOUND_HPA_TARGETS:
        for h in BOUND_HEADROOMS:
            configs.append(Config(f"oracle floor +{h:.0%}, CPU {target}%", "oracle", target, h))
    return configs


@dataclass(frozen=True)
class Job:
    trace: Trace | None  # None: synthesise from the seed
    seed: int
    days: int
    plateau_rps: float
    dt: float
    setup: Setup
    bound: bool = False  # the oracle floor's configurations (synthetic traces only)


def run_job(job: Job) -> tuple[int, list[Result], list[str], str]:
    trace = job.trace or synthetic_trace(job.days, job.seed, job.plateau_rps, job.dt)
    results = [simulate(trace, c, job.setup, job.seed) for c in configurations(job.bound)]
    return job.seed, results, trace.events, trace.name


def run_all(
    jobs: list[Job], workers: int, progress: Callable[[str], None]
) -> list[tuple[int, list[Result], list[str], str]]:
    out = []
    if workers <= 1 or len(jobs) == 1:
        for n, job in enumerate(jobs, 1):
            out.append(run_job(job))
            progress(f"  {n}/{len(jobs)} done (seed {job.seed})")
        return out
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        for n, item in enumerate(pool.imap(run_job, jobs), 1):
            out.append(item)
            progress(f"  {n}/{len(jobs)} done ({item[3]}, seed {item[0]})")
    return out


# --- report ------------------------------------------------------------------------------


@dataclass
class Comparison:
    name: str
    gpu_hours: float
    violating: float
    frontier: float | None
    plain: Result

    @property
    def ratio(self) -> float | None:
        if self.frontier is None:
            return None
        if self.frontier <= 0:
            return 0.0 if self.violating <= 0 else math.inf
        return self.violating / self.frontier


def compare(results: list[Result]) -> list[Comparison]:
    points = [(r.gpu_hours, r.violating) for r in results if r.kind == "hpa"]
    plain = next(r for r in results if r.kind == "hpa" and r.hpa_cpu_target == DEFAULT_HPA_TARGET)
    return [
        Comparison(r.name, r.gpu_hours, r.violating, frontier_at(points, r.gpu_hours), plain)
        for r in results
        if r.kind != "hpa"
    ]


def _q(values: list[float], q: float) -> float:
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def _fmt_ratio(value: float | None) -> str:
    if value is None:
        return "outside"
    return "inf" if math.isinf(value) else f"{value:.2f}x"


Runs = list[tuple[int, list[Result], list[str], str]]


def _preamble(
    runs: Runs, args: argparse.Namespace, cmd: str, elapsed: float, heading: str
) -> list[str]:
    """A section's heading (with the serving model's suffix), its command and commit, and
    the inputs it was measured on."""
    setup = _setup(args)
    if setup.serving_model == "batching":
        heading += BATCHING_SUFFIX
        served = (
            f", dynamic batching: {setup.batch_fixed_ms:g} ms per execution + "
            f"{setup.batch_item_ms:g} ms per request, max batch {setup.max_batch} "
            f"({setup.serving().capacity:.0f} requests/s per replica saturated)"
        )
    else:
        served = f", {setup.service_ms:g} ms per request per instance (no batching)"
    what = (
        f"trace {args.trace.name}, {len(runs)} runs (scales x seeds)"
        if args.trace
        else f"{len(runs)} seeds x {args.days} days"
    )
    lines = [
        heading,
        "",
        f"Command: `{cmd}` at commit {commit()} ({elapsed:.0f}s). Model: the docstring of "
        "`bench/floor_sim.py`.",
        f"Inputs: {what}"
        f"{served}, {setup.instances} instances per replica, cold start log-normal median "
        f"{setup.cold_start_s:g}s sigma "
        f"{setup.cold_start_sigma:g}, queue-wait target {setup.target_ms:g} ms, replicas "
        f"{setup.min_replicas}..{setup.max_replicas}, HPA metric lag {setup.hpa_lag_s:g}s. "
        "Floor: the operator's defaults (burst cover "
        f"{setup.burst_cover:.0%}, cool-down {COOLDOWN_S:.0f}s, interval "
        f"{FLOOR_INTERVAL_S:.0f}s), on the default HPA (CPU {DEFAULT_HPA_TARGET}%).",
        "",
    ]
    return lines


def _frontier_table(
    comparisons: list[list[Comparison]],
) -> tuple[list[str], dict[str, tuple[float | None, float]]]:
    """Each compared configuration against the frontier over the inputs, and for those with
    an equal-cost comparison on at least half of them, (median vs frontier, median GPU-hours
    vs HPA 60%)."""
    names = [c.name for c in comparisons[0]]
    lines = [
        "| configuration | vs frontier: median | p10..p90 | worst | inputs outside "
        "| GPU-hours vs HPA 60% (median) | violations vs HPA 60% (median) | met |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    judged: dict[str, tuple[float | None, float]] = {}
    for name in names:
        rows = [next(c for c in comps if c.name == name) for comps in comparisons]
        ratios = [r.ratio for r in rows if r.ratio is not None]
        outside = sum(r.ratio is None for r in rows)
        gpu = statistics.median(r.gpu_hours / r.plain.gpu_hours for r in rows)
        bad = statistics.median(
            r.violating / r.plain.violating if r.plain.violating else 0.0 for r in rows
        )
        finite = [x for x in ratios if math.isfinite(x)]
        if ratios:
            med = statistics.median(ratios)
            spread = f"{_q(finite, 0.1):.2f}..{_q(finite, 0.9):.2f}" if finite else "-"
            worst = _fmt_ratio(max(ratios))
        else:
            med, spread, worst = None, "-", "-"
        met = med is not None and med <= 0.5 and outside <= len(rows) / 2
        if outside <= len(rows) / 2:
            judged[name] = (med, gpu)
        lines.append(
            f"| {name} | {_fmt_ratio(med)} | {spread} | {worst} | {outside}/{len(rows)} | "
            f"{gpu:.2f}x | {bad:.2f}x | {'**met**' if met else '**missed**'} |"
        )
    lines.append("")
    return lines, judged


def _totals(runs: Runs) -> list[str]:
    """Every configuration's requests, violations and GPU-hours, summed over the inputs."""
    over = "all seeds" if len(runs) > 1 else "the trace"
    lines = [
        f"Every configuration, summed over {over}:",
        "",
        "| configuration | requests | over target | share | GPU-hours |",
        "|---|---:|---:|---:|---:|",
    ]
    totals: dict[str, list[float]] = {}
    for _, results, _, _ in runs:
        for r in results:
            t = totals.setdefault(r.name, [0.0, 0.0, 0.0])
            t[0] += r.requests
            t[1] += r.violating
            t[2] += r.gpu_hours
    for name, (req, bad, gpu) in totals.items():
        lines.append(f"| {name} | {req:,.0f} | {bad:,.0f} | {bad / req:.3%} | {gpu:,.1f} |")
    lines.append("")
    return lines


def report(runs: Runs, args: argparse.Namespace, cmd: str, elapsed: float) -> list[str]:
    heading = TRACE_HEADING if args.trace else RESULTS_HEADING
    lines = _preamble(runs, args, cmd, elapsed, heading)
    lines += [
        "Goal: the floor's SLO violations <= 0.5x the plain-HPA frontier at equal GPU-hours "
        "(median over inputs: seeds, and trace scales). The frontier is the plain HPA swept "
        "over CPU targets "
        f"{HPA_TARGETS[0]}..{HPA_TARGETS[-1]}% in the same run, interpolated between its "
        "Pareto points at the floor's own GPU-hours; `outside` means the floor spent more or "
        "less than any swept target, so no equal-cost comparison exists for that input.",
        "",
    ]
    comparisons = [compare(results) for _, results, _, _ in runs]
    names = [c.name for c in comparisons[0]]
    lines += _frontier_table(comparisons)[0]
    lines += [
        "Per input (the floor's violations over the frontier's at its GPU-hours):",
        "",
        "| input | " + " | ".join(names) + " | GPU-hours of each vs HPA 60% |",
        "|---|" + "---:|" * len(names) + "---:|",
    ]
    for (seed, _, _, name), comps in zip(runs, comparisons, strict=True):
        label = f"{name}, seed {seed}" if args.trace else f"seed {seed}"
        cells = " | ".join(_fmt_ratio(c.ratio) for c in comps)
        gpus = ", ".join(f"{c.gpu_hours / c.plain.gpu_hours:.2f}x" for c in comps)
        lines.append(f"| {label} | {cells} | {gpus} |")
    lines.append("")
    # The frontier itself, summed over seeds.
    lines += _totals(runs)
    if not args.trace:
        lines += _attribution(runs, ["HPA + floor", "HPA + floor + pre-warm"], "the floor")
        lines += [
            "What limits it: each synthetic day holds 3 to 8 unannounced bursts of 3 to 12 "
            "minutes with 30 s edges, against cold starts of about 180 s. No signal the "
            "operator reads announces them, so only standing headroom covers their first "
            "minutes, and a lower CPU target buys standing headroom as well; the table above "
            "shows the share of violations they carry. Pre-warm can act only on the recurring "
            "peaks, and only on days whose two previous days both had them (weekdays after "
            "weekdays). The floor's defaults (burst cover 75%, a 0.4% planning tail) were "
            "chosen on seeds 1 to 6 and the public trace; seeds 7 to 20 were not looked at "
            "while choosing.",
            "",
        ]
    else:
        by_scale: dict[str, list[float]] = {}
        for (_, _, _, name), comps in zip(runs, comparisons, strict=True):
            floor = next(c for c in comps if c.name == "HPA + floor")
            if floor.ratio is not None:
                by_scale.setdefault(name, []).append(floor.ratio)
        medians = ", ".join(
            f"{n.split(' at ')[-1]} {statistics.median(v):.2f}x" for n, v in by_scale.items()
        )
        lines += [
            "The floor against the frontier, median over seeds at each scale: "
            + medians
            + ". The code trace is on/off at the scale of seconds (batch clients send "
            "hundreds of requests at once, then nothing for minutes): bursts far shorter than "
            "a cold start, which no one-minute rate announces. Where the floor loses (the "
            "smallest scale, a few replicas), it lowers between bursts and meets the next one "
            "short; the plain HPA's slow scale-down (one pod a minute after five minutes) holds "
            "its replicas longer at a similar cost.",
            "",
        ]
    if not args.trace and args.days > 1:
        lines += _per_day(runs)
    if args.trace:
        lines += [
            f"Trace: {args.trace.name}, replayed in steps of {args.dt:g}s"
            + (f", scaled to a mean of {args.mean_rps} unit requests/s" if args.mean_rps else "")
            + "; the first sixth (at most 10 minutes) is not counted while the replicas "
            "settle. Pre-warm has no earlier periods to learn from in a one-hour trace, so it "
            "equals the floor alone there.",
            "",
        ]
    return lines


KINDS = ("burst", "peak", "elsewhere")


def _by_kind(runs: Runs) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """Per configuration, violations by where they fall, and GPU-hours, summed over seeds."""
    totals: dict[str, dict[str, float]] = {}
    gpu: dict[str, float] = {}
    for _, results, _, _ in runs:
        for r in results:
            t = totals.setdefault(r.name, {})
            for kind, value in r.violating_by_kind.items():
                t[kind] = t.get(kind, 0.0) + value
            gpu[r.name] = gpu.get(r.name, 0.0) + r.gpu_hours
    return totals, gpu


def _nearest_hpa(gpu: dict[str, float], name: str) -> str:
    """The plain HPA whose GPU-hours are nearest to `name`'s."""
    return min((n for n in gpu if n.startswith("plain HPA")), key=lambda n: abs(gpu[n] - gpu[name]))


def _attribution(runs: Runs, shown: Sequence[str], subject: str) -> list[str]:
    """Where the violations fall, for `shown` and for the plain HPA that spent about as much
    as the first of them: what a floor can forecast (recurring peaks) and what no signal
    announces."""
    totals, gpu = _by_kind(runs)
    near = _nearest_hpa(gpu, shown[0])
    lines = [
        "Where the violations fall, summed over seeds (from an event's start to a cold start "
        "after its end; recurring peaks can be forecast from history, unannounced bursts "
        f"cannot), for {subject} and for the plain HPA with the nearest GPU-hours:",
        "",
        "| configuration | GPU-hours | in unannounced bursts | in recurring peaks | elsewhere |",
        "|---|---:|---:|---:|---:|",
    ]
    for name in (near, *shown):
        t = totals[name]
        total = sum(t.values()) or 1.0
        cells = " | ".join(f"{t.get(k, 0.0):,.0f} ({t.get(k, 0.0) / total:.0%})" for k in KINDS)
        lines.append(f"| {name} | {gpu[name]:,.0f} | {cells} |")
    lines.append("")
    return lines


def bound_report(runs: Runs, args: argparse.Namespace, cmd: str, elapsed: float) -> list[str]:
    """The information bound's section: the oracle floor, told the future of everything in
    the synthetic trace but its unannounced bursts, against the same frontier as the floor."""
    setup = _setup(args)
    lines = _preamble(runs, args, cmd, elapsed, BOUND_HEADING)
    headrooms = ", ".join(f"{h:.0%}" for h in BOUND_HEADROOMS)
    targets = ", ".join(f"{t}%" for t in BOUND_HPA_TARGETS)
    lines += [
        "**A reference, not a configuration the operator can run: the oracle floor knows the "
        "future, which the operator cannot.** It is told the synthetic trace's demand without "
        "its unannounced bursts (the diurnal shape, the recurring peaks as they will come, "
        "each day's level and the noise), and never the bursts. Every "
        f"{FLOOR_INTERVAL_S:.0f}s it sets the HPA's minReplicas to the fewest replicas that "
        f"keep at most {DEFAULT_TAIL_PROBABILITY:.1%} of requests over the "
        f"{setup.target_ms:g} ms queue-wait target (the floor's planning tail, in the "
        "simulator's own serving model) at the highest known demand from now to now + "
        f"{oracle_look_ahead(setup):.0f}s (the true cold start's p95 plus one evaluation; the "
        "operator looks ahead by its measured p95 plus one evaluation, rounded up to "
        f"minutes), times 1 + h of standing headroom, h in {headrooms}, on the plain HPA "
        f"at CPU {targets}. Only that headroom and the HPA meet the bursts. Each point is "
        "compared with the plain-HPA frontier at its own GPU-hours, exactly as the floor is "
        "(the same seeds, the same cold starts).",
        "",
    ]
    comparisons = [compare(results) for _, results, _, _ in runs]
    table, judged = _frontier_table(comparisons)
    lines += table
    ranked = [
        (med, r.name)
        for r in runs[0][1]
        if r.kind == "oracle" and (med := judged.get(r.name, (None, 0.0))[0]) is not None
    ]
    if not ranked:
        lines += [
            "No oracle point had an equal-cost frontier point on at least half the inputs: "
            "the bound cannot be judged on this run.",
            "",
            *_totals(runs),
        ]
        return lines
    bound, best = min(ranked)
    floor = judged.get("HPA + floor", (None, 0.0))[0]
    verdict = (
        f"Best point: {best}, {_fmt_ratio(bound)} of the frontier's violations (median over "
        f"{len(runs)} seeds) at {judged[best][1]:.2f}x the GPU-hours of HPA 60%; the floor: "
        f"{_fmt_ratio(floor)}. (The best of {len(ranked)} swept points, chosen on these same "
        "seeds: a choice that flatters the bound.) "
    )
    if bound <= 0.5:
        verdict += (
            "The bound reaches the goal (<= 0.5x): knowing the demand apart from the bursts "
            "would be enough in this model."
        )
        if floor is not None and math.isfinite(floor) and bound < 1:
            verdict += (
                f" The floor is {floor - bound:.2f} of the frontier's violations above it, "
                f"and covers {(1 - floor) / (1 - bound):.0%} of the way from the frontier "
                "(1.00x) to the bound; where the difference lies is below."
            )
    else:
        verdict += (
            "**Even the bound misses the goal (> 0.5x)**: told the future of everything but "
            "the unannounced bursts, and sizing from it exactly, no swept headroom reaches "
            "0.5x. In this model the goal is out of reach for a floor that cannot foresee the "
            "bursts (as far as this bound shows: it is the best swept point of one sizing "
            "rule, not a proof over every policy)."
        )
    lines += [verdict, ""]
    lines += _totals(runs)
    lines += _attribution(runs, [best, "HPA + floor"], "the bound's best point and the floor")
    # Where each one stands against the plain HPA that spent about as much, by kind: raw
    # counts of the floor and the bound differ in GPU-hours too.
    totals, gpu = _by_kind(runs)
    lines += [
        "By where they fall, each one's violations over those of the plain HPA with the "
        "GPU-hours nearest to its own (summed over seeds; below 1.00x it does better there):",
        "",
        "| configuration | against | in unannounced bursts | in recurring peaks | elsewhere |",
        "|---|---|---:|---:|---:|",
    ]
    for name in (best, "HPA + floor"):
        near = _nearest_hpa(gpu, name)
        cells = " | ".join(
            f"{totals[name].get(k, 0.0) / base:.2f}x"
            if (base := totals[near].get(k, 0.0)) > 0
            else "-"
            for k in KINDS
        )
        lines.append(f"| {name} | {near} | {cells} |")
    lines.append("")
    return lines


def _per_day(runs: list[tuple[int, list[Result], list[str], str]]) -> list[str]:
    """Pre-warm's GPU-hours over the floor alone, day by day: flat means no ratchet."""
    days = len(runs[0][1][0].day_gpu_hours)
    lines = [
        "Pre-warm's GPU-hours over the floor alone, by day (median over seeds; a ratchet "
        "would grow day over day), and violations of each vs the plain HPA at 60%:",
        "",
        "| day | pre-warm GPU-hours vs floor | floor violations vs HPA 60% "
        "| floor + pre-warm violations vs HPA 60% |",
        "|---:|---:|---:|---:|",
    ]
    for d in range(days):
        over, fv, pv = [], [], []
        for _, results, _, _ in runs:
            by = {r.kind + str(r.hpa_cpu_target): r for r in results}
            fl, pw = by[f"floor{DEFAULT_HPA_TARGET}"], by[f"floor+prewarm{DEFAULT_HPA_TARGET}"]
            hpa = by[f"hpa{DEFAULT_HPA_TARGET}"]
            over.append(pw.day_gpu_hours[d] / fl.day_gpu_hours[d] - 1)
            if hpa.day_violating[d] > 0:
                fv.append(fl.day_violating[d] / hpa.day_violating[d])
                pv.append(pw.day_violating[d] / hpa.day_violating[d])
        med = statistics.median
        ratios = f"{med(fv):.2f}x | {med(pv):.2f}x" if fv else "- | -"
        lines.append(f"| {d + 1} | {med(over):+.1%} | {ratios} |")
    lines.append("")
    return lines


def as_json(runs: list[tuple[int, list[Result], list[str], str]]) -> dict[str, object]:
    totals: dict[str, dict[str, object]] = {}
    per_seed = []
    for seed, results, _, name in runs:
        per_seed.append(
            {
                "seed": seed,
                "trace": name,
                "configurations": [
                    {
                        k: v
                        for k, v in asdict(r).items()
                        if not k.startswith("day_") and k != "violating_by_kind"
                    }
                    for r in results
                ],
            }
        )
        for r in results:
            t = totals.setdefault(
                r.name,
                {
                    "name": r.name,
                    "kind": r.kind,
                    "hpa_cpu_target": r.hpa_cpu_target,
                    "requests": 0.0,
                    "violating": 0.0,
                    "gpu_hours": 0.0,
                },
            )
            for k in ("requests", "violating", "gpu_hours"):
                t[k] = float(t[k]) + getattr(r, k)  # type: ignore[arg-type]
    out: dict[str, object] = {"configurations": list(totals.values())}
    if len(runs) > 1:
        out["seeds"] = per_seed
    comps = []
    for seed, results, _, _ in runs:
        for c in compare(results):
            comps.append({"seed": seed, "name": c.name, "frontier_violating": c.frontier,
                          "ratio_to_frontier": c.ratio})
    out["frontier_comparison"] = comps
    return out


def _setup(args: argparse.Namespace) -> Setup:
    return Setup(
        service_ms=args.service_ms,
        instances=args.instances,
        target_ms=args.target_ms,
        cold_start_s=args.cold_start_s,
        cold_start_sigma=args.cold_start_sigma,
        min_replicas=args.min_replicas,
        max_replicas=args.max_replicas,
        hpa_lag_s=args.hpa_lag_s,
        burst_cover=args.burst_cover,
        serving_model=args.serving,
        batch_fixed_ms=args.batch_fixed_ms,
        batch_item_ms=args.batch_item_ms,
        max_batch=args.max_batch,
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--trace", type=Path, help="replay this CSV (timestamp[,weight] per request)")
    p.add_argument(
        "--mean-rps",
        help="scale the trace to this mean load; a comma-separated list replays it at each",
    )
    p.add_argument(
        "--seeds",
        type=int,
        help="seeds (default 20 synthetic; 5 per trace scale: CPU noise and cold starts)",
    )
    p.add_argument("--first-seed", type=int, default=1)
    p.add_argument("--days", type=int, default=7, help="synthetic days per seed (default 7)")
    p.add_argument("--plateau-rps", type=float, default=300.0, help="synthetic day plateau")
    p.add_argument("--dt", type=float, help="seconds per step (default 5; 1 for a trace)")
    p.add_argument(
        "--serving",
        choices=("mmc", "batching"),
        default="mmc",
        help="mmc: one request per execution (--service-ms); batching: Triton's dynamic "
        "batcher, each execution --batch-fixed-ms + --batch-item-ms per request",
    )
    p.add_argument("--service-ms", type=float, default=20.0)
    p.add_argument("--batch-fixed-ms", type=float, default=40.0)
    p.add_argument("--batch-item-ms", type=float, default=10.0)
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--instances", type=int, default=2)
    p.add_argument("--target-ms", type=float, default=100.0)
    p.add_argument("--cold-start-s", type=float, default=180.0)
    p.add_argument("--cold-start-sigma", type=float, default=0.25)
    p.add_argument("--min-replicas", type=int, default=2)
    p.add_argument("--max-replicas", type=int, default=20)
    p.add_argument("--hpa-lag-s", type=float, default=30.0)
    p.add_argument("--burst-cover", type=float, default=0.75)
    p.add_argument("--workers", type=int, default=max(1, (multiprocessing.cpu_count() or 1)))
    p.add_argument(
        "--bound",
        action="store_true",
        help="synthetic traces only: add the oracle floor, which knows the future apart from "
        "the unannounced bursts (a reference, not the operator), and write its own section",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object instead")
    p.add_argument("--write", type=Path, help="update this RESULTS.md's section")
    args = p.parse_args(argv)
    if args.dt is None:
        args.dt = 1.0 if args.trace else 5.0
    if args.seeds is None:
        args.seeds = 5 if args.trace else 20

    def progress(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    started = time.monotonic()
    setup = _setup(args)
    if args.trace and args.bound:
        progress(
            "floor_sim: --bound skipped: a trace file has no split into unannounced bursts "
            "and the rest, so there is nothing to tell the oracle floor"
        )
        args.bound = False
    if args.trace:
        try:
            scales = [float(x) for x in args.mean_rps.split(",")] if args.mean_rps else [None]
        except ValueError:
            print(f"floor_sim: --mean-rps {args.mean_rps!r} is not a number list", file=sys.stderr)
            return 2
        jobs = []
        for scale in scales:
            try:
                trace = load_trace(args.trace, args.dt, scale)
            except (OSError, TraceError) as exc:
                print(f"floor_sim: {exc}", file=sys.stderr)
                return 2
            if scale is not None:
                trace = dataclasses.replace(trace, name=f"{trace.name} at {scale:g}/s")
            progress(
                f"trace {trace.name}: {len(trace.work) * trace.dt / 3600:.1f}h, mean "
                f"{sum(trace.work) / len(trace.work):.1f}/s, peak {max(trace.work):.1f}/s"
            )
            seeds = range(args.first_seed, args.first_seed + args.seeds)
            jobs += [Job(trace, seed, 0, 0.0, args.dt, setup) for seed in seeds]
    else:
        jobs = [
            Job(None, seed, args.days, args.plateau_rps, args.dt, setup, args.bound)
            for seed in range(args.first_seed, args.first_seed + args.seeds)
        ]
    count = len(configurations(args.bound))
    progress(f"simulating {len(jobs)} input(s) x {count} configurations")
    runs = run_all(jobs, args.workers, progress)
    elapsed = time.monotonic() - started
    if args.json:
        print(json.dumps(as_json(runs), indent=1))
        return 0
    shown = argv if argv is not None else sys.argv[1:]
    cmd = "python bench/floor_sim.py" + "".join(f" {a}" for a in shown)
    lines = (bound_report if args.bound else report)(runs, args, cmd, elapsed)
    print("\n".join(lines))
    if args.write:
        write_section(args.write, lines[0], "\n".join(lines))
        progress(f"wrote {args.write}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
