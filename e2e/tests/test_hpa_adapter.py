"""HPA mode, the metric served: the real HPA controller scales the seed sample's Deployment on
requests_per_second, read from prometheus-adapter with the chart's rules, from the real
Prometheus scraping the real Tritons behind the pods.

Every part is real: Tritons behind the pods (e2e.podserving), the ServiceMonitor the operator
rendered, prometheus-operator and Prometheus (e2e.monitoring), prometheus-adapter built from
its Go module and registered as v1beta1.external.metrics.k8s.io on the API server's
aggregation layer (e2e.adapter, reached through e2e.egress), kube-controller-manager's HPA
controller. Without the adapter the operator says ExternalMetricsAPIMissing (the negative's
positive control); with it, MetricsAvailable turns True and the HPA reads a real value.
The suite owns external.metrics.k8s.io while it runs and removes its APIService after.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.parse
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kubernetes import client
from kubernetes.utils import parse_quantity

from ccs_operator.clients.prometheus import PrometheusClient
from ccs_operator.core.promql import PrometheusSettings
from e2e import adapter, kwok, loadgen, podserving
from e2e.fixtures import Cluster
from e2e.localcluster import LocalCluster
from e2e.monitoring import MonitoringStack
from e2e.operator_fixtures import OperatorProcess, Services, condition, sample

pytestmark = [pytest.mark.cluster, pytest.mark.triton, pytest.mark.prometheus]

NAME = "claude-code"
# Requests/s per replica the HPA aims at (an AverageValue target on the service's total).
TARGET_RPS = 5
MAX_REPLICAS = 3
# 20 requests/s for 180 s: the HPA wants ceil(20 / 5) = 4 replicas, capped at MAX_REPLICAS.
LOAD_RPS = 20
PROFILE = f"0:{LOAD_RPS},180:{LOAD_RPS}"


def _spec() -> dict[str, Any]:
    """The seed sample, sized for this machine; only the HPA scales (CPU off: kwok pods
    report no CPU usage; the floor off: it would raise replicas of its own)."""
    placement = kwok.serving_placement()
    return {
        "resources": {"gpus": 1, "cpu": "1", "memory": "1Gi"},
        "batching": {"maxBatchSize": 4, "maxQueueDelayMicroseconds": 1000},
        "instanceGroups": [{"count": 1, "kind": "KIND_GPU"}],
        "replicas": {"min": 1, "max": MAX_REPLICAS},
        "autoscaling": {
            "cpuUtilization": 0,
            "requestsPerSecond": TARGET_RPS,
            "scaleDownStabilizationSeconds": 0,
            "floor": {"enabled": False},
        },
        "monitoring": {"serviceMonitor": True, "interval": "2s"},
        "nodeSelector": placement["nodeSelector"],
        "tolerations": placement["tolerations"],
    }


@pytest.fixture
def served(served_cluster: LocalCluster) -> Iterator[LocalCluster]:
    local = served_cluster
    before = podserving.Settings.read(local.state_dir / podserving.SETTINGS_FILE)
    room = max(before.max_tritons, len(podserving.pod_tritons()) + MAX_REPLICAS)
    podserving.write_settings(local.state_dir, max_tritons=room)
    try:
        yield local
    finally:
        podserving.write_settings(local.state_dir, before.max_tritons, before.env)


def _until(what: str, check: Callable[[], Any], timeout: float, seen: Callable[[], str]) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.5)
    raise AssertionError(f"{what}: not within {timeout:.0f}s; {seen()}")


def _external_value(cluster: Cluster, namespace: str) -> float | None:
    """requests_per_second{service=NAME} as the HPA controller reads it (None: no item)."""
    selector = urllib.parse.quote(f"service={NAME}")
    path = (
        f"/apis/{adapter.GROUP}/{adapter.VERSION}/namespaces/{namespace}/"
        f"requests_per_second?labelSelector={selector}"
    )
    done = cluster.kubectl("get", "--raw", path, check=False)
    if done.returncode != 0:  # not (yet) served: 404 from the adapter, 503 while it starts
        return None
    items = json.loads(done.stdout)["items"]
    if not items:
        return None
    assert all(i["metricName"] == "requests_per_second" for i in items), items
    return sum(float(parse_quantity(i["value"])) for i in items)


def _prometheus_rate(url: str, namespace: str) -> float:
    """The same arrival rate straight from Prometheus (completed + failed, 1m)."""
    with PrometheusClient(PrometheusSettings(url=url)) as prom:
        samples = prom.query(
            'sum(rate({__name__=~"nv_inference_request_success|nv_inference_request_failure",'
            f'namespace="{namespace}",service="{NAME}"}}[1m]))'
        )
    return samples[0].value if samples else 0.0


def _hpa_external(hpa: Any) -> float | None:
    for metric in hpa.status.current_metrics or ():
        if metric.type == "External" and metric.external.current is not None:
            current = metric.external.current
            raw = current.average_value or current.value
            return float(parse_quantity(raw)) if raw is not None else None
    return None


def test_hpa_scales_on_requests_per_second_served_by_prometheus_adapter(
    served: LocalCluster,
    monitoring: MonitoringStack,
    cluster: Cluster,
    solo_namespace: str,
    services: Services,
    start_operator: Callable[..., OperatorProcess],
) -> None:
    ns = solo_namespace
    start_operator(ns, CCS_PROMETHEUS_URL=monitoring.url, CCS_RESYNC_SECONDS="30")
    services.apply(ns, sample(NAME, **_spec()))
    services.wait_ready(ns, NAME, timeout=120)
    # Nothing serves external.metrics.k8s.io yet: the operator says so, and what to install.
    missing = services.wait(
        ns,
        NAME,
        lambda b: (
            (condition(b, "MetricsAvailable") or {}).get("reason") == "ExternalMetricsAPIMissing"
        ),
        timeout=90,
        what="MetricsAvailable ExternalMetricsAPIMissing before the adapter runs",
    )
    assert "prometheus-adapter" in (condition(missing, "MetricsAvailable") or {})["message"]

    stack = adapter.AdapterStack(served, monitoring)
    at: dict[str, float] = {}
    started = time.monotonic()
    with cluster.api_client() as api_client, stack:
        at["adapter_up"] = round(time.monotonic() - started, 1)
        autoscaling = client.AutoscalingV2Api(api_client)
        apps = client.AppsV1Api(api_client)

        def hpa() -> Any:
            return autoscaling.read_namespaced_horizontal_pod_autoscaler(NAME, ns)

        def seen() -> str:
            h = hpa()
            conditions = [
                (c.type, c.status, c.reason, c.message) for c in h.status.conditions or ()
            ]
            return f"HPA status: replicas {h.status.current_replicas}, conditions {conditions}"

        # Idle Tritons export their counters at zero: the metric is served, value 0.
        _until(
            "requests_per_second served for the service",
            lambda: _external_value(cluster, ns) is not None,
            60,
            lambda: f"adapter log {stack.log}",
        )
        services.wait(
            ns,
            NAME,
            lambda b: (condition(b, "MetricsAvailable") or {}).get("status") == "True",
            timeout=90,
            what="MetricsAvailable True once the adapter serves the metric",
        )
        at["metrics_available"] = round(time.monotonic() - started, 1)

        argv = served.exec_argv(loadgen.command(served.state_dir, ns, NAME, PROFILE))
        load_started = time.monotonic()
        load = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            # The HPA controller itself reads a real, non-zero value through the adapter.
            read = _until(
                "the HPA reads a non-zero requests_per_second",
                lambda: (v := _hpa_external(hpa())) and v > 0 and v,
                90,
                seen,
            )
            at["hpa_reads_rps"] = round(time.monotonic() - load_started, 1)
            _until(
                "the HPA scales the Deployment up on requests per second",
                lambda: (hpa().status.desired_replicas or 0) >= 2,
                90,
                seen,
            )
            at["hpa_scaled_up"] = round(time.monotonic() - load_started, 1)
            _until(
                f"{MAX_REPLICAS} replicas Ready (each its own Triton)",
                lambda: (
                    (apps.read_namespaced_deployment(NAME, ns).status.ready_replicas or 0)
                    >= MAX_REPLICAS
                ),
                120,
                seen,
            )
            at["max_replicas_ready"] = round(time.monotonic() - load_started, 1)
            # What the adapter serves is Triton's arrival rate in Prometheus, as the rules say.
            _until(
                "the adapter's value and Prometheus' rate agree",
                lambda: (
                    (served_rps := _external_value(cluster, ns)) is not None
                    and abs(served_rps - _prometheus_rate(monitoring.url, ns)) <= 0.2 * LOAD_RPS
                    and served_rps > 0.5 * LOAD_RPS
                ),
                60,
                lambda: (
                    f"adapter {_external_value(cluster, ns)}, "
                    f"Prometheus {_prometheus_rate(monitoring.url, ns)}"
                ),
            )
            final = hpa()
            scaling = {c.type: c for c in final.status.conditions or ()}
            assert scaling["ScalingActive"].status == "True", seen()
            assert scaling["ScalingActive"].reason == "ValidMetricFound", seen()
            assert final.status.desired_replicas == MAX_REPLICAS, seen()
            out, err = load.communicate(timeout=240)
        finally:
            if load.poll() is None:
                load.kill()
        assert load.returncode == 0, err[-2000:]
        summary = json.loads(out.splitlines()[-1])["summary"]
        assert summary["ok"] > 0.9 * summary["sent"], summary
    # The suite's APIService is gone: nothing is left owning external.metrics.k8s.io.
    with cluster.api_client() as api_client:
        registration = client.ApiregistrationV1Api(api_client)
        names = {s.metadata.name for s in registration.list_api_service().items}
        assert adapter.API_SERVICE not in names
    record = {"steps_s": at, "hpa_first_read_rps_per_replica": read, "load": summary}
    print("hpa adapter:", json.dumps(record))
