"""Trace-driven simulation of the warm floor against a plain HPA.

    python bench/floor_sim.py            # prints the table; --write updates bench/RESULTS.md

Two days of synthetic traffic (5 s steps): a diurnal curve, two peaks that recur every day
(a 09:00 login storm and a 14:00 batch job, each a sharp step), and random bursts that
differ per day, with slow multiplicative noise. Seeded, so every run prints the same table.

Model:
- Replicas: a pod holds a GPU from creation and serves after `cold_start_s` (image pull +
  model load). GPU-hours count every pod, ready or not.
- Queue: each replica has two Triton model instances (instance_group count 2), each a
  server of rate capacity/2. Below saturation the wait is M/M/c (Erlang C: mean wait and the
  exact tail P(wait > target)); above it a fluid backlog builds and drains, and arrivals are
  late when the backlog ahead of them exceeds the target.
- Prometheus: the floor sees the request-weighted mean queue wait over the last minute
  (rate over [1m]) as `prom.py`'s default query computes it.
- HPA (autoscaling/v2 semantics): 15 s sync; CPU utilisation proportional to load per
  ready pod (capped at 100%); target 60% with the 10% tolerance; not-ready pods count as 0%
  when scaling up; scale-up limited to max(100%, 4 pods) per sync; scale-down takes the
  highest recommendation of the last 300 s; clamped to [minReplicas, max]. The
  requests-per-second metric (1000 per pod) never binds at these rates and is left out.
- Floor: the real `ccs_operator.floor.decide` every 30 s; its floor is the HPA's
  minReplicas from the next sync. Pre-warm history is the floor's own `demand` output one
  day earlier (what the operator exports as ccs_floor_demand_replicas), with the HPA's
  unclamped recommendation as the demand hint.

Compared: (a) plain HPA min 2 max 10, (b) HPA + reactive floor, (c) HPA + floor + pre-warm.
"""

from __future__ import annotations

import argparse
import itertools
import math
import random
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ccs_operator.coldstart import MIN_SAMPLES_FOR_LEAD_TIME, lead_time_seconds
from ccs_operator.floor import (
    DAY_SECONDS,
    DEFAULT_LEAD_TIME_SECONDS,
    FloorObservation,
    FloorPolicy,
    FloorState,
    PrewarmPolicy,
    decide,
)
from results import write_section

DT = 5.0  # seconds per step
HPA_SYNC_S = 15.0
FLOOR_INTERVAL_S = 30.0
PROM_WINDOW_S = 60.0
HPA_CPU_TARGET = 0.60
HPA_TOLERANCE = 0.10
HPA_DOWN_WINDOW_S = 300.0
INSTANCES_PER_REPLICA = 2
MIN_REPLICAS, MAX_REPLICAS = 2, 10
RESULTS_HEADING = "## Warm floor simulation"


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
    rps: list[float]
    events: list[str]


def make_trace(days: int, seed: int, plateau_rps: float) -> Trace:
    """Requests per second at each step. Shapes are in units of the day plateau."""
    rng = random.Random(seed)
    steps_per_day = int(DAY_SECONDS / DT)
    rps: list[float] = []
    events: list[str] = []
    noise = 0.0
    for day in range(days):
        level = plateau_rps * rng.uniform(0.95, 1.05)
        # Recurring peaks: same time each day, a couple of minutes of jitter.
        recurring = [
            (9 * 3600 + rng.uniform(-120, 120), 15 * 60, 0.6),  # login storm
            (14 * 3600 + rng.uniform(-120, 120), 20 * 60, 0.75),  # batch job
        ]
        bursts = []
        for _ in range(rng.randint(4, 8)):  # unannounced bursts, different each day
            start = rng.uniform(7 * 3600, 22 * 3600)
            bursts.append((start, rng.uniform(180, 720), rng.uniform(0.3, 1.0)))
        for start, dur, height in recurring:
            events.append(
                f"day {day + 1} recurring peak {_hhmm(start)} +{height:.0%} {dur / 60:.0f}m"
            )
        for start, dur, height in sorted(bursts):
            events.append(f"day {day + 1} burst {_hhmm(start)} +{height:.0%} {dur / 60:.0f}m")
        for i in range(steps_per_day):
            t = i * DT
            value = _diurnal(t / 3600)
            for start, dur, height in recurring:
                # A 60 s edge: a step as far as a 180 s cold start is concerned.
                value += height * _pulse(t, start, dur, edge=60)
            for start, dur, height in bursts:
                value += height * _diurnal(start / 3600) * _pulse(t, start, dur, edge=30)
            noise = 0.98 * noise + rng.gauss(0, 0.01)  # slow AR(1) noise, ~±5%
            rps.append(max(0.0, level * value * (1 + noise)))
    return Trace(rps, events)


def _pulse(t: float, start: float, duration: float, edge: float) -> float:
    if t < start or t > start + duration + edge:
        return 0.0
    if t < start + edge:
        return (t - start) / edge
    if t > start + duration:
        return 1 - (t - start - duration) / edge
    return 1.0


def _hhmm(seconds: float) -> str:
    return f"{int(seconds // 3600):02d}:{int(seconds % 3600 // 60):02d}"


# --- queue -------------------------------------------------------------------------------


def erlang_c(servers: int, offered: float) -> float:
    """Probability an arrival waits in M/M/c with `offered` = lambda/mu_server < servers."""
    b = 1.0
    for k in range(1, servers + 1):
        b = offered * b / (k + offered * b)
    return servers * b / (servers - offered * (1 - b))


@dataclass
class Queue:
    capacity_rps: float  # per replica
    target_s: float
    backlog: float = 0.0

    def step(self, rps: float, ready: int) -> tuple[float, float]:
        """Advance DT; returns (mean wait s, fraction of this step's arrivals over target)."""
        arrivals = rps * DT
        cap = ready * self.capacity_rps
        if cap <= 0:
            self.backlog += arrivals
            return math.inf, 1.0 if arrivals else 0.0
        servers = ready * INSTANCES_PER_REPLICA
        mu = self.capacity_rps / INSTANCES_PER_REPLICA
        start = self.backlog
        self.backlog = max(0.0, start + arrivals - cap * DT)
        if start == 0 and self.backlog == 0 and rps < 0.995 * cap:
            if rps == 0:
                return 0.0, 0.0
            c = erlang_c(servers, rps / mu)
            drain = servers * mu - rps
            return c / drain, c * math.exp(-drain * self.target_s)
        # Saturated: the wait ahead of an arrival grows/shrinks linearly with the backlog.
        w0, w1 = start / cap, self.backlog / cap
        return (w0 + w1) / 2, _share_above(w0, w1, self.target_s)


def _share_above(w0: float, w1: float, target: float) -> float:
    lo, hi = min(w0, w1), max(w0, w1)
    if hi <= target:
        return 0.0
    if lo >= target:
        return 1.0
    return (hi - target) / (hi - lo)


# --- cluster -----------------------------------------------------------------------------


@dataclass
class Cluster:
    cold_start_s: float
    pods: list[float] = field(default_factory=lambda: [-1e9, -1e9])  # creation times

    def ready(self, now: float) -> int:
        return sum(1 for created in self.pods if now - created >= self.cold_start_s)

    def scale_to(self, replicas: int, now: float) -> None:
        if replicas > len(self.pods):
            self.pods.extend([now] * (replicas - len(self.pods)))
        elif replicas < len(self.pods):
            # The ReplicaSet deletes not-ready (newest) pods first.
            self.pods.sort()
            del self.pods[replicas:]


@dataclass
class Hpa:
    min_replicas: int = MIN_REPLICAS
    max_replicas: int = MAX_REPLICAS
    history: deque[tuple[float, int]] = field(default_factory=deque)

    def recommend(self, current: int, ready: int, utilisation: float) -> int:
        """The unclamped CPU recommendation (what the floor gets as demand hint)."""
        if ready == 0:
            return current
        if abs(utilisation / HPA_CPU_TARGET - 1) <= HPA_TOLERANCE:
            return current
        # Not-ready pods count as 0% when scaling up, so only ready pods' usage counts.
        return math.ceil(ready * utilisation / HPA_CPU_TARGET - 1e-9)

    def sync(self, now: float, current: int, ready: int, utilisation: float) -> int:
        rec = self.recommend(current, ready, utilisation)
        self.history.append((now, rec))
        while self.history and self.history[0][0] < now - HPA_DOWN_WINDOW_S:
            self.history.popleft()
        if rec > current:
            desired = min(rec, max(2 * current, current + 4))
        else:
            desired = min(current, max(r for _, r in self.history))
        return min(max(desired, self.min_replicas), self.max_replicas)


# --- one run -----------------------------------------------------------------------------


@dataclass
class Result:
    name: str
    requests: float = 0.0
    violating: float = 0.0
    gpu_hours: float = 0.0
    day_requests: list[float] = field(default_factory=list)
    day_violating: list[float] = field(default_factory=list)
    day_gpu_hours: list[float] = field(default_factory=list)
    floor_changes: int = 0


def simulate(
    name: str,
    trace: Trace,
    *,
    capacity_rps: float,
    cold_start_s: float,
    target_ms: float,
    policy: FloorPolicy | None,
    progress: Callable[[str], None],
) -> Result:
    steps_per_day = int(DAY_SECONDS / DT)
    days = len(trace.rps) // steps_per_day
    cluster = Cluster(cold_start_s)
    hpa = Hpa()
    queue = Queue(capacity_rps, target_ms / 1000)
    window: deque[tuple[float, float]] = deque()  # (arrivals, wait*arrivals) per step
    state = FloorState.initial(policy) if policy else None
    floor = MIN_REPLICAS
    demand_log: list[int] = []  # demand per floor evaluation, for pre-warm history
    evals_per_day = int(DAY_SECONDS / FLOOR_INTERVAL_S)
    res = Result(name, day_requests=[0.0] * days, day_violating=[0.0] * days)
    res.day_gpu_hours = [0.0] * days
    hint = MIN_REPLICAS
    every_hpa = round(HPA_SYNC_S / DT)
    every_floor = round(FLOOR_INTERVAL_S / DT)
    window_steps = round(PROM_WINDOW_S / DT)
    for i, rps in enumerate(trace.rps):
        now = i * DT
        day = i // steps_per_day
        ready = cluster.ready(now)
        wait, late = queue.step(rps, ready)
        arrivals = rps * DT
        res.requests += arrivals
        res.violating += arrivals * late
        res.day_requests[day] += arrivals
        res.day_violating[day] += arrivals * late
        gpu_h = len(cluster.pods) * DT / 3600
        res.gpu_hours += gpu_h
        res.day_gpu_hours[day] += gpu_h
        window.append((arrivals, arrivals * min(wait, 3600.0)))
        if len(window) > window_steps:
            window.popleft()
        utilisation = min(rps / (ready * capacity_rps), 1.0) if ready else 1.0
        if policy is not None and state is not None and i % every_floor == 0:
            total = sum(a for a, _ in window)
            latency_ms = 1000 * sum(w for _, w in window) / total if total > 0 else 0.0
            history = _history(demand_log, evals_per_day, policy.prewarm)
            d = decide(
                policy,
                state,
                FloorObservation(latency_ms, ready, now, history, demand_hint=hint),
            )
            state, floor = d.state, d.floor
            res.floor_changes += d.changed
            demand_log.append(d.demand)
        if i % every_hpa == 0:
            hpa.min_replicas = floor
            hint = hpa.recommend(len(cluster.pods), ready, utilisation)
            cluster.scale_to(hpa.sync(now, len(cluster.pods), ready, utilisation), now)
        if i % (steps_per_day // 4) == 0 and i:
            progress(f"  {name}: {now / 3600:4.0f}h simulated")
    return res


def _history(log: list[int], evals_per_day: int, prewarm: PrewarmPolicy) -> int | None:
    """Max demand over [now - period, now - period + lead], like prom.py's query."""
    if not prewarm.enabled:
        return None
    per = round(prewarm.period_seconds / FLOOR_INTERVAL_S)
    lead = round(prewarm.lead_time_seconds / FLOOR_INTERVAL_S)
    start = len(log) - per
    if start < 0:
        return None
    return max(log[start : start + lead + 1])


# --- report ------------------------------------------------------------------------------


def default_policy(target_ms: float, prewarm: bool, cold_start_s: float) -> FloorPolicy:
    """The operator's defaults (FloorPolicy's and the CRD's), nothing tuned for this trace.

    The pre-warm lead time is what the operator derives when the spec sets none: the
    measured p95 cold start (status.coldStart; every simulated replica takes the same time)
    plus one evaluation interval, rounded up to whole minutes.
    """
    measured = {"p95Seconds": cold_start_s, "samples": MIN_SAMPLES_FOR_LEAD_TIME}
    lead = lead_time_seconds(measured, DEFAULT_LEAD_TIME_SECONDS, int(FLOOR_INTERVAL_S))
    return FloorPolicy(
        min_replicas=MIN_REPLICAS,
        max_replicas=MAX_REPLICAS,
        target_ms=target_ms,
        prewarm=PrewarmPolicy(enabled=prewarm, lead_time_seconds=lead),
    )


def table(results: list[Result], last_day_only: bool) -> list[str]:
    base = results[0]
    rows = [
        "| configuration | requests over target | share | vs plain HPA "
        "| GPU-hours | vs plain HPA |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        if last_day_only:
            req, bad, gpu = r.day_requests[-1], r.day_violating[-1], r.day_gpu_hours[-1]
            b_bad, b_gpu = base.day_violating[-1], base.day_gpu_hours[-1]
        else:
            req, bad, gpu = r.requests, r.violating, r.gpu_hours
            b_bad, b_gpu = base.violating, base.gpu_hours
        rows.append(
            f"| {r.name} | {bad:,.0f} | {bad / req:.3%} | {bad / b_bad:.2f}x | "
            f"{gpu:.1f} | {gpu / b_gpu:.2f}x |"
        )
    return rows




def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--days", type=int, default=2)
    p.add_argument("--seed", type=int, default=6)
    p.add_argument(
        "--capacity-rps",
        type=float,
        default=100.0,
        help="requests/s one replica serves at saturation (replace with the serving benchmark)",
    )
    p.add_argument("--cold-start-s", type=float, default=180.0)
    p.add_argument("--target-ms", type=float, default=100.0, help="queue-wait SLO and floor target")
    p.add_argument("--plateau-rps", type=float, default=400.0, help="working-day plateau load")
    p.add_argument("--write", type=Path, help="update this RESULTS.md's section")
    args = p.parse_args(argv)

    def progress(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    started = time.monotonic()
    trace = make_trace(args.days, args.seed, args.plateau_rps)
    progress(f"trace: {len(trace.rps)} steps of {DT:g}s, peak {max(trace.rps):.0f} rps")
    common = {
        "capacity_rps": args.capacity_rps,
        "cold_start_s": args.cold_start_s,
        "target_ms": args.target_ms,
        "progress": progress,
    }
    results = []
    for name, policy in (
        ("(a) plain HPA", None),
        ("(b) HPA + reactive floor", default_policy(args.target_ms, False, args.cold_start_s)),
        ("(c) HPA + floor + pre-warm", default_policy(args.target_ms, True, args.cold_start_s)),
    ):
        progress(f"simulating {name}")
        results.append(simulate(name, trace, policy=policy, **common))  # type: ignore[arg-type]
    elapsed = time.monotonic() - started

    cmd = "python bench/floor_sim.py" + "".join(
        f" {a}" for a in (argv if argv is not None else sys.argv[1:])
    )
    lines = [
        RESULTS_HEADING,
        "",
        f"Command: `{cmd}` ({elapsed:.1f}s). Model and assumptions: the docstring of",
        "`bench/floor_sim.py`. Inputs: "
        f"{args.days} days, seed {args.seed}, {args.capacity_rps:g} req/s per replica, cold "
        f"start {args.cold_start_s:g}s, queue-wait target {args.target_ms:g}ms, HPA min "
        f"{MIN_REPLICAS} max {MAX_REPLICAS} CPU 60%. Floor policy: the operator's defaults "
        "(watermark 50%, step 1, cooldown 300s, pre-warm period 1 day, lead time from the "
        "measured cold start: p95 + one interval, rounded up to minutes).",
        "",
        "Both days:",
        "",
        *table(results, last_day_only=False),
        "",
        f"Day {args.days} only (pre-warm has one day of history):",
        "",
        *table(results, last_day_only=True),
        "",
        "Reading: a floor that reacts only to queue latency (b) adds replicas once the queue",
        "is already building; with a cold start longer than the peaks' ramps its replicas",
        "arrive after the damage, so it does little better than the plain HPA. What removes",
        "the violations is pre-warm (c) from the previous day's demand, on a day that has",
        "that history; it pays in GPU-hours for replicas held ready ahead of each peak.",
        "",
        "Traffic events:",
        "",
        *(f"- {e}" for e in trace.events),
        "",
    ]
    print("\n".join(lines))
    if args.write:
        write_section(args.write, RESULTS_HEADING, "\n".join(lines))
        progress(f"wrote {args.write}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
