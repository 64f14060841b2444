"""ccs_service_condition: one series per condition, on its current status."""

from __future__ import annotations

from prometheus_client import REGISTRY

from ccs_operator.controllers.reconcile import _export_conditions

KEY = ("ns-metrics", "svc")


def _series() -> dict[tuple[str, str], float]:
    found = {}
    for family in REGISTRY.collect():
        if family.name != "ccs_service_condition":
            continue
        for s in family.samples:
            if (s.labels["ccs_namespace"], s.labels["ccs_name"]) == KEY:
                found[(s.labels["type"], s.labels["status"])] = s.value
    return found


def test_only_the_current_status_of_each_condition_has_a_series() -> None:
    _export_conditions(KEY, [{"type": "Ready", "status": "False"},
                             {"type": "Degraded", "status": "True"}])
    assert _series() == {("Ready", "False"): 1.0, ("Degraded", "True"): 1.0}
    _export_conditions(KEY, [{"type": "Ready", "status": "True"},
                             {"type": "Degraded", "status": "False"}])
    assert _series() == {("Ready", "True"): 1.0, ("Degraded", "False"): 1.0}
    _export_conditions(KEY, ())
    assert _series() == {}
