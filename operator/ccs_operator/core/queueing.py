"""Pure queueing arithmetic for sizing replicas from an arrival rate.

Each replica is one Triton process with `instances` model instances pulling from one
scheduler queue, and the Service spreads requests evenly over Ready replicas, so a
service of n replicas is n independent M/M/c queues with c = instances, each receiving
lambda / n. For such a queue the probability that a request waits longer than t is

    P(W > t) = C(c, a) * exp(-(c * mu - lambda_pod) * t),    a = lambda_pod / mu,

with C the Erlang C probability of waiting and mu = 1 / S the per-instance service rate.
Every replica at the same utilisation rho = lambda_pod * S / c sees the same tail, so the
highest safe utilisation depends on (c, S, t) only, never on n: `safe_utilisation` finds
it once and `replicas_for` divides by it.

S is *measured* (busy instance-seconds per request, from Triton's own counters; see
floor.py), so dynamic batching shows up as a smaller S under load. The model is a
planning estimate; the measured queue latency remains the feedback that corrects it.
"""

from __future__ import annotations

import math
from functools import lru_cache

# The floor plans for at most 0.4% of requests over the queue-wait target: a margin under
# the p99 the target is read against, for the forecast's errors.
DEFAULT_TAIL_PROBABILITY = 0.004
# Never plan above this utilisation, whatever the model says: real arrivals are burstier
# than Poisson within a scrape interval.
MAX_UTILISATION = 0.95
# ...nor below this: a target close to the service time itself cannot be met by any number
# of replicas (a request that waits at all waits about a service time), and sizing for it
# would ask for every GPU the spec allows.
MIN_UTILISATION = 0.05


def erlang_c(servers: int, offered: float) -> float:
    """Probability that an arrival waits in M/M/c with `offered` = lambda / mu < servers."""
    if servers < 1:
        raise ValueError("servers must be >= 1")
    if offered <= 0:
        return 0.0
    if offered >= servers:
        return 1.0
    b = 1.0  # Erlang B by its stable recurrence
    for k in range(1, servers + 1):
        b = offered * b / (k + offered * b)
    return servers * b / (servers - offered * (1 - b))


def wait_tail(servers: int, service_s: float, arrival_rps: float, wait_s: float) -> float:
    """P(queue wait > wait_s) at one M/M/c replica; 1.0 when saturated."""
    mu = 1.0 / service_s
    if arrival_rps >= servers * mu:
        return 1.0
    c = erlang_c(servers, arrival_rps / mu)
    return c * math.exp(-(servers * mu - arrival_rps) * wait_s)


def wait_quantile(servers: int, service_s: float, arrival_rps: float, q: float) -> float:
    """The q-quantile (e.g. 0.99) of queue wait at one replica, seconds; inf if saturated."""
    mu = 1.0 / service_s
    if arrival_rps >= servers * mu:
        return math.inf
    c = erlang_c(servers, arrival_rps / mu)
    if c <= 1 - q:
        return 0.0
    return math.log(c / (1 - q)) / (servers * mu - arrival_rps)


@lru_cache(maxsize=4096)
def _safe_utilisation(servers: int, ratio: float, tail: float) -> float:
    # ratio = target wait / service time; the tail is monotone in utilisation: bisect it.
    lo, hi = 0.0, MAX_UTILISATION
    if wait_tail(servers, 1.0, hi * servers, ratio) <= tail:
        return hi
    for _ in range(40):
        mid = (lo + hi) / 2
        if wait_tail(servers, 1.0, mid * servers, ratio) <= tail:
            lo = mid
        else:
            hi = mid
    return max(lo, MIN_UTILISATION)


def safe_utilisation(
    servers: int, service_s: float, target_s: float, tail: float = DEFAULT_TAIL_PROBABILITY
) -> float:
    """Highest utilisation at which P(wait > target_s) <= tail, within
    [MIN_UTILISATION, MAX_UTILISATION]."""
    if service_s <= 0 or target_s <= 0:
        raise ValueError("service and target times must be > 0")
    # Rounded down (the safe side) to 3 significant digits, so that a measured S wobbling in
    # its third digit reuses the cached answer.
    ratio = target_s / service_s
    scale = 10.0 ** (math.floor(math.log10(ratio)) - 2)
    ratio = math.floor(ratio / scale + 1e-9) * scale
    return _safe_utilisation(servers, ratio, tail)


def planned_utilisation(
    servers: int,
    service_s: float,
    target_s: float,
    tail: float = DEFAULT_TAIL_PROBABILITY,
    gain: float = 1.0,
) -> float:
    """`safe_utilisation` times a measured `gain` (what the service showed beyond the
    model, >= 1), never above MAX_UTILISATION."""
    return min(safe_utilisation(servers, service_s, target_s, tail) * gain, MAX_UTILISATION)


def replicas_for(
    arrival_rps: float,
    *,
    servers: int,
    service_s: float,
    target_s: float,
    tail: float = DEFAULT_TAIL_PROBABILITY,
    gain: float = 1.0,
) -> int:
    """Fewest replicas that keep P(wait > target) <= tail at `arrival_rps` (0 for no load),
    at the planned utilisation (`gain` as in `planned_utilisation`)."""
    if arrival_rps <= 0 or not math.isfinite(arrival_rps):
        return 0
    rho = planned_utilisation(servers, service_s, target_s, tail, gain)
    # A hair of slack so that exactly-full replicas do not round up one too many.
    return math.ceil(arrival_rps * service_s / (servers * rho) - 1e-9)
