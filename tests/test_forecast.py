"""forecast.py: the Holt filter and the decayed histogram of rises."""

from __future__ import annotations

import pytest

from ccs_operator.core.forecast import RISE_BIN, Holt, Rises, decay_for


def test_holt_follows_a_ramp_and_projects_it() -> None:
    h = Holt.start(100.0, 0.0)
    for t in range(30, 1800, 30):
        h = h.update(100.0 + t * 0.5, float(t), 0.5, 0.3)
    assert h.trend == pytest.approx(0.5, rel=0.05)
    # Damped: 120 s of trend at most, whatever the horizon.
    assert h.forecast(600.0, 120.0, 10.0) < h.level + 0.5 * 120.0 + 1
    assert h.forecast(600.0, 120.0, 10.0) > h.level + 0.5 * 100.0


def test_holt_never_extrapolates_a_fall_and_is_capped() -> None:
    h = Holt.start(500.0, 0.0)
    for t in range(30, 600, 30):
        h = h.update(500.0 - t, float(t), 0.5, 0.3)
    assert h.trend < 0
    assert h.forecast(300.0, 120.0, 2.0) == pytest.approx(max(h.level, 0.0))
    up = Holt(100.0, 10.0, 0.0)
    assert up.forecast(300.0, 1e9, 2.0) == 200.0
    assert up.update(1.0, 0.0, 0.5, 0.3) is up  # no time passed: unchanged


def test_rises_quantile_and_decay() -> None:
    r = Rises()
    assert r.quantile(0.9) == 0.0
    for _ in range(90):
        r = r.add(0.0, 1.0)
    for _ in range(10):
        r = r.add(0.5, 1.0)
    assert r.quantile(0.5) == 0.0
    assert r.quantile(0.95) == pytest.approx(0.5)
    assert r.add(99.0, 1.0).quantile(1.0) == pytest.approx(80 * RISE_BIN)
    # Old samples fade: after many quiet samples the bursts no longer count.
    decay = decay_for(30.0, 3600.0)
    for _ in range(2000):
        r = r.add(0.0, decay)
    assert r.quantile(0.95) == 0.0
    assert decay_for(30.0, 0.0) == 0.0


def test_a_fall_to_nothing_never_forecasts_traffic_again() -> None:
    """Defect (found with scale to zero): after 40/s fell to 0, the level overshot below 0
    and its recovery read as a rising trend: a forecast of 0.2/s with nothing arriving,
    which woke a service from zero and put it back to sleep every cool-down."""
    holt = Holt.start(40.0, 0.0)
    for t in range(1, 200):
        holt = holt.update(0.0, 30.0 * t, 0.5, 0.3)
        assert holt.level >= 0.0
        if t > 10:
            assert holt.forecast(240.0, 120.0, 2.0) < 1e-3
