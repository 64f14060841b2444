"""hpastatus.py: what the HPA alone would run, from its status."""

from __future__ import annotations

from ccs_operator.core.hpastatus import hpa_alone_replicas


def _cpu(util: int) -> dict[str, object]:
    current = {"averageUtilization": util}
    return {"type": "Resource", "resource": {"name": "cpu", "current": current}}


def _rps(value: str) -> dict[str, object]:
    return {"type": "External", "external": {"current": {"averageValue": value}}}


def test_cpu_and_external_take_the_largest() -> None:
    status = {"currentReplicas": 4, "currentMetrics": [_cpu(30), _rps("1500")]}
    # cpu: 4 * 30 / 60 = 2; rps: 4 * 1500 / 1000 = 6
    got = hpa_alone_replicas(
        status, cpu_target_percent=60, rps_target=1000, min_replicas=1, max_replicas=10
    )
    assert got == 6


def test_clamped_and_quantities_parsed() -> None:
    status = {"currentReplicas": 2, "currentMetrics": [_rps("500m"), _cpu(600)]}
    got = hpa_alone_replicas(
        status, cpu_target_percent=60, rps_target=1, min_replicas=3, max_replicas=10
    )
    assert got == 10  # cpu: 2 * 600 / 60 = 20, clamped to max
    low = {"currentReplicas": 2, "currentMetrics": [_cpu(1)]}
    assert hpa_alone_replicas(
        low, cpu_target_percent=60, rps_target=0, min_replicas=3, max_replicas=10
    ) == 3


def test_unknown_when_no_metrics() -> None:
    for status in (None, {}, {"currentReplicas": 3}, {"currentReplicas": 3, "currentMetrics": [
        {"type": "Resource", "resource": {"name": "cpu", "current": {}}},
        {"type": "External", "external": {"current": {"averageValue": "garbage"}}},
    ]}):
        assert hpa_alone_replicas(
            status, cpu_target_percent=60, rps_target=1000, min_replicas=1, max_replicas=10
        ) is None
