"""The prometheus-adapter rules the chart ships for `requests_per_second`, and the chart's
ConfigMap of them (rendered by the real helm CLI)."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from ccs_operator.controllers import floorloop
from ccs_operator.core import adapterrules
from ccs_operator.core.api import parse_service
from ccs_operator.core.promql import REQUEST_FAILURE_METRIC, REQUEST_SUCCESS_METRIC
from ccs_operator.core.render import render_children
from e2e.helmchart import CHART_DIR, find, template

RULES_FILE = CHART_DIR / "adapter" / "prometheus-adapter-rules.yaml"


def _hpa_external_metric() -> dict[str, Any]:
    body = {
        "metadata": {"name": "svc", "namespace": "ns"},
        "spec": {"model": {"name": "m", "repository": "/models"}},
    }
    (hpa,) = [
        c for c in render_children(parse_service(body)) if c["kind"] == "HorizontalPodAutoscaler"
    ]
    (external,) = [m["external"] for m in hpa["spec"]["metrics"] if m["type"] == "External"]
    return dict(external)


def test_the_charts_file_is_the_rendered_rules() -> None:
    assert RULES_FILE.read_text() == adapterrules.render(), (
        f"{RULES_FILE} is stale; regenerate it: "
        f"python -m ccs_operator.core.adapterrules > {RULES_FILE}"
    )


def test_the_rule_serves_the_metric_and_label_the_operators_hpa_selects_on() -> None:
    external = _hpa_external_metric()
    (rule,) = yaml.safe_load(RULES_FILE.read_text())["externalRules"]
    assert rule["name"]["as"] == external["metric"]["name"] == floorloop.EXTERNAL_RPS_METRIC
    # The HPA selects service=<name>; the adapter turns that selector into the PromQL
    # matcher service="<name>", so the series must carry that label (the ServiceMonitor's).
    assert set(external["metric"]["selector"]["matchLabels"]) == {adapterrules.SERVICE_LABEL}
    assert 'service!=""' in rule["seriesQuery"] and 'namespace!=""' in rule["seriesQuery"]
    assert rule["resources"]["overrides"] == {"namespace": {"resource": "namespace"}}
    # An AverageValue target: the value must be the service's total, summed over pods.
    assert external["target"]["type"] == "AverageValue"


def test_the_query_counts_successful_and_failed_requests_over_the_window() -> None:
    query = adapterrules.metrics_query("2m")
    assert query == (
        'sum by (namespace, service) (rate({__name__=~"nv_inference_request_success|'
        'nv_inference_request_failure",<<.LabelMatchers>>}[2m]))'
    )
    assert set(adapterrules.COUNTERS) == {REQUEST_SUCCESS_METRIC, REQUEST_FAILURE_METRIC}
    with pytest.raises(ValueError):
        adapterrules.metrics_query("1 minute")


def test_chart_ships_the_rules_as_a_configmap_only_when_asked() -> None:
    assert not find(template({}), "ConfigMap", "ccs-operator-adapter-rules")
    docs = template({"prometheusAdapter": {"rules": {"enabled": True, "namespace": "monitoring"}}})
    (config_map,) = find(docs, "ConfigMap", "ccs-operator-adapter-rules")
    assert config_map["metadata"]["namespace"] == "monitoring"
    assert config_map["data"]["config.yaml"].strip() == RULES_FILE.read_text().strip()
    named = template({"prometheusAdapter": {"rules": {"enabled": True, "name": "adapter-config"}}})
    assert find(named, "ConfigMap", "adapter-config")
