"""queueing.py: Erlang C against known values, and the sizing it implies."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ccs_operator.core.queueing import (
    DEFAULT_TAIL_PROBABILITY,
    MAX_UTILISATION,
    MIN_UTILISATION,
    erlang_c,
    replicas_for,
    safe_utilisation,
    wait_quantile,
    wait_tail,
)


def test_erlang_c_known_values() -> None:
    # M/M/1: P(wait) = rho. M/M/2: 2 rho^2 / (1 + rho).
    assert erlang_c(1, 0.7) == pytest.approx(0.7)
    assert erlang_c(2, 1.2) == pytest.approx(2 * 0.6**2 / 1.6)
    # A textbook value: 10 servers at 8 Erlangs wait with probability ~0.409.
    assert erlang_c(10, 8.0) == pytest.approx(0.4092, abs=1e-3)
    assert erlang_c(3, 0.0) == 0.0 and erlang_c(3, 3.0) == 1.0


def test_tail_and_quantile_agree() -> None:
    q99 = wait_quantile(2, 0.02, 70.0, 0.99)
    assert wait_tail(2, 0.02, 70.0, q99) == pytest.approx(0.01)
    assert wait_quantile(2, 0.02, 100.0, 0.99) == math.inf
    assert wait_quantile(2, 0.02, 1.0, 0.99) == 0.0


def test_safe_utilisation_meets_the_tail_target() -> None:
    rho = safe_utilisation(2, 0.02, 0.1, tail=0.01)
    assert 0.55 < rho < 0.7
    assert wait_tail(2, 0.02, rho * 100, 0.1) <= 0.01 + 1e-6
    assert wait_tail(2, 0.02, (rho + 0.02) * 100, 0.1) > 0.01
    # The default plans with a margin under p99.
    assert DEFAULT_TAIL_PROBABILITY < 0.01 and safe_utilisation(2, 0.02, 0.1) < rho
    # More servers per queue pool better; a looser target allows more; capped for safety.
    assert safe_utilisation(8, 0.02, 0.1) > safe_utilisation(2, 0.02, 0.1)
    assert safe_utilisation(2, 0.02, 10.0) == MAX_UTILISATION
    with pytest.raises(ValueError):
        safe_utilisation(2, 0.0, 0.1)


def test_replicas_for() -> None:
    assert replicas_for(0.0, servers=2, service_s=0.02, target_s=0.1) == 0
    assert replicas_for(math.inf, servers=2, service_s=0.02, target_s=0.1) == 0
    assert replicas_for(300.0, servers=2, service_s=0.02, target_s=0.1, tail=0.01) == 5
    assert replicas_for(300.0, servers=2, service_s=0.02, target_s=0.1) == 6


@settings(max_examples=200, deadline=None)
@given(
    st.floats(0.1, 5000),
    st.integers(1, 8),
    st.floats(0.001, 0.5),
    st.floats(0.01, 2.0),
)
def test_the_replicas_it_asks_for_meet_the_target(
    rate: float, servers: int, service: float, target: float
) -> None:
    n = replicas_for(rate, servers=servers, service_s=service, target_s=target)
    assert n >= 1
    rho = safe_utilisation(servers, service, target)
    if rho > MIN_UTILISATION:  # at the minimum the target is out of reach by design
        assert wait_tail(servers, service, rate / n, target) <= DEFAULT_TAIL_PROBABILITY + 1e-6
    # ...and not wastefully: one fewer would break the planned utilisation.
    if n > 1:
        assert rate * service / (servers * (n - 1)) > rho - 1e-9
