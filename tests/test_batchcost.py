"""The batching cost line: fitted from Triton's (batch, seconds per execution) points, and
the rate one replica sustains within a queue-wait bound."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ccs_operator.core.batchcost import HALF_LIFE_SECONDS, CostFit, CostLine, point_bound_rps
from ccs_operator.core.queueing import MAX_UTILISATION

T0 = 1_700_000_000.0


def fitted(points: list[tuple[float, float]], every: float = 30.0) -> CostFit:
    fit = CostFit()
    for i, (batch, seconds) in enumerate(points):
        fit = fit.add(T0 + every * i, batch, seconds)
    return fit


def test_the_line_is_recovered_from_two_batch_sizes() -> None:
    line = CostLine(0.04, 0.01)
    fit = fitted([(b, line.execution_s(b)) for b in (1.0, 4.0) * 5])
    got = fit.line()
    assert got is not None
    assert got.fixed_s == pytest.approx(0.04) and got.per_item_s == pytest.approx(0.01)


def test_one_batch_size_fits_any_line_so_none_is_claimed() -> None:
    # A thousand minutes at one request per execution say nothing about the split.
    assert fitted([(1.0, 0.05)] * 1000).line() is None
    # A few points a request apart from the rest are enough (the positive control).
    fit = fitted([(1.0, 0.05)] * 1000 + [(2.0, 0.06)] * 5)
    got = fit.line()
    assert got is not None and got.per_item_s == pytest.approx(0.01)


def test_the_slope_stays_within_what_the_points_allow() -> None:
    # Bigger batches that cost less (noise): no negative slope, all of it fixed cost.
    down = fitted([(1.0, 0.05), (5.0, 0.04)] * 4).line()
    assert down is not None and down.per_item_s == 0.0
    # A fixed cost below zero would be a slope above the mean cost per request.
    steep = fitted([(1.0, 0.01), (5.0, 0.2)] * 4).line()
    assert steep is not None and steep.fixed_s >= 0.0


def test_old_points_fade_so_a_changed_model_is_refitted() -> None:
    before = CostLine(0.04, 0.01)
    after = CostLine(0.02, 0.005)
    fit = fitted([(b, before.execution_s(b)) for b in (1.0, 4.0) * 10])
    later = T0 + 10 * HALF_LIFE_SECONDS
    for i, b in enumerate((1.0, 4.0) * 10):
        fit = fit.add(later + 30 * i, b, after.execution_s(b))
    got = fit.line()
    assert got is not None and got.per_item_s == pytest.approx(0.005, rel=0.01)


def test_broken_points_are_ignored() -> None:
    fit = fitted([(1.0, 0.05), (4.0, 0.08)] * 4)
    for batch, seconds in ((math.nan, 0.1), (0.5, 0.1), (2.0, 0.0), (2.0, math.inf)):
        assert fit.add(T0 + 1e4, batch, seconds) == fit


def test_sustained_rate() -> None:
    line = CostLine(0.04, 0.01)
    # The cycle fixed / (1 - per_item * rate / c) reaches 90 ms at c(1 - 40/90)/0.01.
    assert line.sustained_rps(2, 8, 0.09) == pytest.approx(2 * (1 - 0.04 / 0.09) / 0.01)
    # ...unless the largest batch saturates first.
    assert line.sustained_rps(2, 2, 0.09) == pytest.approx(MAX_UTILISATION * 2 * 2 / 0.06)
    # A fixed cost alone over the bound: no rate meets it.
    assert CostLine(0.1, 0.0).sustained_rps(2, 8, 0.09) is None
    # No cost per request: only the largest batch limits.
    assert CostLine(0.04, 0.0).sustained_rps(1, 8, 0.09) == pytest.approx(
        MAX_UTILISATION * 8 / 0.04
    )
    with pytest.raises(ValueError):
        line.sustained_rps(0, 8, 0.09)


def _cycle(line: CostLine, instances: int, rate: float) -> float:
    """The true cycle of a batcher at `rate` (back to back, or one request per execution)."""
    single = line.execution_s(1)
    if rate * single <= instances:
        return single
    return line.fixed_s / (1 - line.per_item_s * rate / instances)


@given(
    fixed=st.floats(0.0, 0.08),
    per_item=st.floats(0.0005, 0.03),
    instances=st.integers(1, 4),
    max_batch=st.integers(2, 64),
    measured=st.floats(1.0, 3.0),
)
def test_the_worst_line_through_one_point_is_safe_for_every_true_line(
    fixed: float, per_item: float, instances: int, max_batch: int, measured: float
) -> None:
    """Before the split is known, the floor sizes by one measured point: whatever the true
    line through that point, the rate it allows keeps the true cycle (every wait) within
    the bound."""
    true = CostLine(fixed, per_item)
    wait = 0.09
    point = min(measured, max_batch)
    rate = point_bound_rps(instances, max_batch, wait, point, true.execution_s(point))
    if rate is None:
        assert true.execution_s(point) > wait
        return
    assert _cycle(true, instances, rate) <= wait + 1e-9
    # Nor does it claim more than the largest batch completes.
    assert rate <= MAX_UTILISATION * instances * max_batch / true.execution_s(max_batch) + 1e-9
