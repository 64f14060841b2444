"""Pure forecasting pieces of the warm floor: a trend filter and a burst-size memory.

- `Holt`: Holt's linear (double exponential) smoothing of the arrival rate, sampled once
  per evaluation. The forecast `h` seconds ahead is level + max(trend, 0) * h: the floor
  uses it to look ahead by the measured cold start, and never lowers on a falling trend
  (lowering has its own, slower rule).
- `Rises`: how much the arrival rate has risen over one cold-start horizon, as a decayed
  histogram of relative rises, so the floor can hold the headroom that covers a chosen
  share of the service's *own* observed bursts (not a constant).

Both are immutable values: an update returns a new value, so they live inside FloorState
and the policy stays a pure function.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# Relative rises are binned in steps of 5% up to +400%; a bigger rise lands in the last bin.
RISE_BIN = 0.05
RISE_BINS = 81


@dataclass(frozen=True, slots=True)
class Holt:
    level: float
    trend: float  # per second
    at: float  # epoch seconds of the last update

    @classmethod
    def start(cls, value: float, at: float) -> Holt:
        return cls(value, 0.0, at)

    def update(self, value: float, at: float, alpha: float, beta: float) -> Holt:
        dt = at - self.at
        if dt <= 0:
            return self
        predicted = self.level + self.trend * dt
        # A rate is never negative: after a fall to nothing, an unclamped level overshoots
        # below 0 and its recovery reads as a rising trend (a forecast of traffic that is
        # not there, which would wake a service scaled to zero).
        level = max(0.0, alpha * value + (1 - alpha) * predicted)
        trend = beta * (level - self.level) / dt + (1 - beta) * self.trend
        return Holt(level, trend, at)

    def forecast(self, ahead_s: float, damping_s: float, cap: float) -> float:
        """The level `ahead_s` from the last update, never using a falling trend.

        The trend is damped with time constant `damping_s` (a sharp edge is a step, not a
        ramp that goes on for a whole cold start), and the forecast is at most `cap` times
        the level."""
        ahead = damping_s * (1 - math.exp(-ahead_s / damping_s)) if damping_s > 0 else 0.0
        value = self.level + max(self.trend, 0.0) * ahead
        return max(0.0, min(value, cap * max(self.level, 0.0)))


@dataclass(frozen=True, slots=True)
class Rises:
    """Decayed histogram of relative rises of the arrival rate over one horizon."""

    weights: tuple[float, ...] = (0.0,) * RISE_BINS

    def add(self, rise: float, decay: float) -> Rises:
        """Record one rise (>= 0, relative); older samples are multiplied by `decay`."""
        index = min(RISE_BINS - 1, max(0, math.ceil(rise / RISE_BIN - 1e-9)))
        weights = [w * decay for w in self.weights]
        weights[index] += 1.0
        return Rises(tuple(weights))

    @property
    def samples(self) -> float:
        return sum(self.weights)

    def quantile(self, q: float) -> float:
        """The q-quantile of the recorded rises (upper bin edge); 0 with no samples."""
        total = self.samples
        if total <= 0:
            return 0.0
        need = q * total
        running = 0.0
        for index, weight in enumerate(self.weights):
            running += weight
            if running >= need - 1e-12:
                return index * RISE_BIN
        return (RISE_BINS - 1) * RISE_BIN


def decay_for(interval_s: float, half_life_s: float) -> float:
    """Per-sample decay so that a sample's weight halves every `half_life_s`."""
    if half_life_s <= 0:
        return 0.0
    return 0.5 ** (interval_s / half_life_s)
