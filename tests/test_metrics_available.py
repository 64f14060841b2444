"""MetricsAvailable: the series the floor and the HPA depend on, and what to do if missing."""

from __future__ import annotations

from typing import Any

from ccs_operator.controllers.floorloop import Reading, _external_metric_problem, _metrics_available
from ccs_operator.core.api import parse_service
from ccs_operator.core.status import FLOOR_ACTIVE, METRICS_AVAILABLE, Condition


def service(**spec: Any) -> Any:
    body = {
        "metadata": {"name": "svc", "namespace": "ns"},
        "spec": {"model": {"name": "m", "repository": "/models"}, **spec},
    }
    return parse_service(body)


NO_DATA = Condition(FLOOR_ACTIVE, False, "NoData", "no series for query Q")
DOWN = Condition(FLOOR_ACTIVE, False, "PrometheusUnavailable", "connection refused")


def test_present_when_the_queue_series_and_the_external_metric_exist() -> None:
    ccs = service()
    condition = _metrics_available(ccs, Reading(12.0), None, [])
    assert (condition.type, condition.status, condition.reason) == (
        METRICS_AVAILABLE,
        True,
        "MetricsPresent",
    )
    assert "requests_per_second" in condition.message


def test_missing_series_names_the_query() -> None:
    condition = _metrics_available(service(), Reading(None, NO_DATA), None, [])
    assert (condition.status, condition.reason) == (False, "SeriesMissing")
    assert "query Q" in condition.message


def test_series_that_stop_are_stale() -> None:
    before = [{"type": METRICS_AVAILABLE, "status": "True"}]
    condition = _metrics_available(service(), Reading(None, NO_DATA), None, before)
    assert (condition.status, condition.reason) == (False, "MetricsStale")


def test_prometheus_down_is_unknown_not_missing() -> None:
    condition = _metrics_available(service(), Reading(None, DOWN), None, [])
    assert (condition.status, condition.reason) == (None, "PrometheusUnavailable")


def test_no_external_metrics_adapter_says_what_to_install() -> None:
    ccs = service()
    problem = _external_metric_problem(ccs, None)
    assert problem is not None and problem.reason == "ExternalMetricsAPIMissing"
    assert "prometheus-adapter or KEDA" in problem.message
    assert "requestsPerSecond: 0" in problem.message
    condition = _metrics_available(ccs, Reading(5.0), problem, [])
    assert (condition.status, condition.reason) == (False, "ExternalMetricsAPIMissing")
    both = _metrics_available(ccs, Reading(None, NO_DATA), problem, [])
    assert both.reason == "SeriesMissing" and "prometheus-adapter" in both.message


def test_adapter_without_the_metric_is_missing_and_a_value_is_fine() -> None:
    ccs = service()
    missing = _external_metric_problem(ccs, [])
    assert missing is not None and missing.reason == "ExternalMetricMissing"
    assert _external_metric_problem(ccs, [{"value": "3"}]) is None


def test_nothing_needed_when_floor_and_rps_are_off() -> None:
    ccs = service(autoscaling={"requestsPerSecond": 0, "floor": {"enabled": False}})
    condition = _metrics_available(ccs, Reading(None), None, [])
    assert (condition.status, condition.reason) == (True, "NotRequired")
