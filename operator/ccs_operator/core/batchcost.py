"""What a dynamic batcher costs, learnt from Triton's counters, and what a replica sustains.

A batching Triton runs an execution of b requests in about T(b) = fixed + per_item * b
seconds (a GPU's kernel launch and weight reads are paid once per batch). Its counters give,
over each rate window, the mean requests per execution b = requests / executions and the
mean seconds per execution T = busy instance-seconds / executions. Busy time alone cannot
size such a service: once the instances run back to back they are busy all the time, at
any load below saturation, while the batches, not the queue, absorb more load. The headroom
is in the batch size, so the floor sizes batching services from the cost line instead.

The line is a least-squares fit over the (b, T) points the service has shown, each point
decayed with a half-life so that a changed model is not sized with old evidence. It counts
only once the points' squared deviations from their mean batch sum to `MIN_BATCH_LEVERAGE`
(requests per execution, squared; e.g. four minutes at one request per execution more than
the rest): one point, or many at the same batch size, fit any line.

Sizing: while the instances run back to back, each execution carries what arrived since
the previous one was taken, b = rate * T / c for a replica of c instances, so the cycle is

    T = fixed / (1 - per_item * rate / c)

and a request waits at most one cycle for an instance to take it. The rate a replica
sustains with the cycle, hence every wait, within `wait_s` is

    rate <= c * (1 - fixed / wait_s) / per_item,

and at most `MAX_UTILISATION` of what it completes at the largest batch,
c * max_batch / T(max_batch). A fixed cost at or above `wait_s` cannot meet it: no rate.

Before the line is known, one point (b, T) still bounds it: of every line through that
point, the one with no fixed cost allows the least, MAX_UTILISATION * c * b / T, and at that
rate the true cycle of any line through the point is at most T (it is fixed * T / (fixed +
(1 - MAX_UTILISATION) * per_item * b)). So while T is within `wait_s`, that rate is safe
whatever the split (`point_bound_rps`; a property test checks it against random lines).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ccs_operator.core.queueing import MAX_UTILISATION

# The points' summed squared deviation from their mean batch before the line counts.
MIN_BATCH_LEVERAGE = 4.0
# Fitted points older than this count half.
HALF_LIFE_SECONDS = 6 * 3600.0


@dataclass(frozen=True, slots=True)
class CostLine:
    fixed_s: float  # seconds per execution, whatever its size
    per_item_s: float  # seconds per request in it

    def execution_s(self, batch: float) -> float:
        return self.fixed_s + self.per_item_s * batch

    def sustained_rps(self, instances: int, max_batch: int, wait_s: float) -> float | None:
        """Requests per second one replica sustains with every queue wait within `wait_s`;
        None when the fixed cost alone reaches it."""
        if instances < 1 or max_batch < 1 or wait_s <= 0:
            raise ValueError("need instances >= 1, max_batch >= 1 and wait_s > 0")
        if self.fixed_s >= wait_s:
            return None
        largest = MAX_UTILISATION * instances * max_batch / self.execution_s(max_batch)
        if self.per_item_s <= 0:
            return largest
        return min(instances * (1 - self.fixed_s / wait_s) / self.per_item_s, largest)


@dataclass(frozen=True, slots=True)
class CostFit:
    """Decayed least-squares sums over (batch, seconds per execution) points."""

    weight: float = 0.0
    batch: float = 0.0
    seconds: float = 0.0
    batch_sq: float = 0.0
    batch_seconds: float = 0.0
    updated_at: float | None = None
    last: tuple[float, float] | None = None  # the latest (batch, seconds per execution)

    def add(self, now: float, batch: float, seconds: float, weight: float = 1.0) -> CostFit:
        """The fit with one more point, older points decayed by the time since the last."""
        if not (math.isfinite(batch) and math.isfinite(seconds)) or batch < 1 or seconds <= 0:
            return self
        keep = 1.0
        if self.updated_at is not None:
            keep = 0.5 ** (max(now - self.updated_at, 0.0) / HALF_LIFE_SECONDS)
        return CostFit(
            weight=self.weight * keep + weight,
            batch=self.batch * keep + weight * batch,
            seconds=self.seconds * keep + weight * seconds,
            batch_sq=self.batch_sq * keep + weight * batch * batch,
            batch_seconds=self.batch_seconds * keep + weight * batch * seconds,
            updated_at=now,
            last=(batch, seconds),
        )

    @property
    def leverage(self) -> float:
        """The points' summed squared deviation from their mean batch size."""
        if self.weight <= 0:
            return 0.0
        return max(self.batch_sq - self.batch * self.batch / self.weight, 0.0)

    def line(self) -> CostLine | None:
        """The fitted line, or None while the points do not spread enough to fix it. The
        slope is held within what the points allow: at least 0 (a batch never costs less
        than a smaller one) and at most the mean cost per request (no negative fixed cost).
        """
        if self.leverage < MIN_BATCH_LEVERAGE:
            return None
        mean_b = self.batch / self.weight
        mean_t = self.seconds / self.weight
        variance = self.batch_sq / self.weight - mean_b * mean_b
        slope = (self.batch_seconds / self.weight - mean_b * mean_t) / variance
        slope = min(max(slope, 0.0), mean_t / mean_b)
        return CostLine(fixed_s=mean_t - slope * mean_b, per_item_s=slope)


def point_bound_rps(
    instances: int, max_batch: int, wait_s: float, batch: float, seconds: float
) -> float | None:
    """What one replica sustains by the one point (batch, seconds per execution) alone, safe
    for every cost line through it; None when that execution already exceeds `wait_s`."""
    if seconds > wait_s or batch < 1 or seconds <= 0:
        return None
    return CostLine(0.0, seconds / batch).sustained_rps(instances, max_batch, wait_s)
