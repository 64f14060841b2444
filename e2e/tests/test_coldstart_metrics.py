"""Cold start measured from real pods, and MetricsAvailable against a real Prometheus.

kwok turns each pod Ready after the delay named in its pod-ready annotation, so a replica's
cold start is known in advance; the operator must find it in the pods' own status.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest

from e2e.fixtures import Cluster
from e2e.kwok import POD_READY_DELAY_ANNOTATION
from e2e.operator_fixtures import OperatorProcess, Services, condition, sample
from e2e.prometheus import PrometheusServer

pytestmark = pytest.mark.cluster

COLD_START_S = 6


def test_cold_start_of_new_replicas_is_measured_into_status(
    cluster: Cluster, op_namespace: str, services: Services
) -> None:
    services.apply(op_namespace, sample("cold", replicas={"min": 2, "max": 4}))
    services.wait_ready(op_namespace, "cold")
    # Another field manager adds the annotation to the pod template; server-side apply
    # leaves it alone, and the rollout makes two new replicas that take COLD_START_S each.
    patch = {
        "spec": {
            "template": {
                "metadata": {"annotations": {POD_READY_DELAY_ANNOTATION: f"{COLD_START_S}s"}}
            }
        }
    }
    cluster.kubectl(
        "patch", "deployment", "cold", "-n", op_namespace, "--type=merge", "-p", json.dumps(patch)
    )

    def measured(body: dict[str, Any]) -> bool:
        cold = (body.get("status") or {}).get("coldStart") or {}
        return cold.get("samples", 0) >= 4 and cold.get("lastSeconds", 0) >= COLD_START_S

    body = services.wait(op_namespace, "cold", measured, timeout=120, what="4 cold starts")
    cold = body["status"]["coldStart"]
    # The newest replica is one of the annotated ones. Timestamps have one-second
    # resolution, and kwok acts a moment after the delay.
    assert COLD_START_S <= cold["lastSeconds"] <= COLD_START_S + 4, cold
    assert cold["maxSeconds"] >= COLD_START_S, cold
    assert cold["p50Seconds"] <= cold["p95Seconds"] <= cold["maxSeconds"], cold
    # In kwok a container starts and turns ready at once: the wait is all "starting".
    assert cold["loadingP50Seconds"] == 0, cold
    # The template annotation survived the operator's own applies (it is not its field).
    template = cluster.kubectl(
        "get",
        "deployment",
        "cold",
        "-n",
        op_namespace,
        "-o",
        "jsonpath={.spec.template.metadata.annotations}",
    ).stdout
    assert POD_READY_DELAY_ANNOTATION in template


def test_missing_series_hold_the_floor_and_name_the_query(
    cluster: Cluster,
    solo_namespace: str,
    services: Services,
    start_operator: Callable[..., OperatorProcess],
) -> None:
    # A real Prometheus that scrapes nothing: every query answers, with no series.
    with PrometheusServer([]) as prometheus:
        start_operator(
            solo_namespace,
            CCS_PROMETHEUS_URL=prometheus.url,
            CCS_FLOOR_WINDOW="10s",
            CCS_RESYNC_SECONDS="10",
        )
        floor = {"evaluationIntervalSeconds": 5, "cooldownSeconds": 5}
        spec = {
            "replicas": {"min": 1, "max": 5},
            "autoscaling": {"cpuUtilization": 60, "requestsPerSecond": 0, "floor": floor},
        }
        services.apply(solo_namespace, sample("quiet", **spec))
        services.wait_ready(solo_namespace, "quiet")

        def reported(body: dict[str, Any]) -> bool:
            found = condition(body, "MetricsAvailable")
            return found is not None and found["status"] == "False"

        body = services.wait(solo_namespace, "quiet", reported, timeout=60, what="MetricsAvailable")
        available = condition(body, "MetricsAvailable")
        assert available is not None and available["reason"] == "SeriesMissing", available
        assert "nv_inference_queue" in available["message"], available
        assert "ServiceMonitor" in available["message"], available

        # A floor raised earlier (as after a peak) must not be lowered while data is missing.
        cluster.kubectl(
            "patch",
            "ccs",
            "quiet",
            "-n",
            solo_namespace,
            "--subresource=status",
            "--type=merge",
            "-p",
            json.dumps({"status": {"floor": 3}}),
        )

        def hpa_min_replicas() -> int:
            return int(
                cluster.kubectl(
                    "get",
                    "hpa",
                    "quiet",
                    "-n",
                    solo_namespace,
                    "-o",
                    "jsonpath={.spec.minReplicas}",
                ).stdout
            )

        # The next resync renders the stored floor into the HPA.
        deadline = time.monotonic() + 40
        while hpa_min_replicas() != 3:
            assert time.monotonic() < deadline, "HPA minReplicas never followed status.floor"
            time.sleep(1)
        # Several evaluations and more than two cool-downs pass with no data.
        time.sleep(15)
        body = services.get(solo_namespace, "quiet")
        assert body["status"]["floor"] == 3, body["status"]
        assert (condition(body, "FloorControllerActive") or {}).get("reason") == "NoData"
        assert hpa_min_replicas() == 3
