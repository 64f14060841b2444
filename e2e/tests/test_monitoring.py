"""The ServiceMonitor the operator renders, consumed by the real prometheus-operator and the
real Prometheus (e2e.monitoring): it must select the service's pods on the metrics port with
the labels the floor's queries use, and a ServiceMonitor that is wrong must select nothing.

The service uses a metrics port and a scrape interval that are not the defaults of either
the operator or Prometheus, so a target that carries them can only have come from what the
operator rendered. Each wrong ServiceMonitor is a copy of the rendered one with a single
fault; both are loaded by Prometheus (their scrape pools exist), so "no target" means the
fault, not a configuration that never arrived.
"""

from __future__ import annotations

import copy
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import pytest
from kubernetes import client

from e2e import kwok
from e2e.fixtures import Cluster
from e2e.monitoring import MonitoringStack, servicemonitor_job
from e2e.operator_fixtures import OperatorProcess, Services, sample

pytestmark = [pytest.mark.cluster, pytest.mark.prometheus]

NAME = "scraped"
REPLICAS = 2
METRICS_PORT = 9102  # not Triton's 8002: the scrape URL must follow the spec
INTERVAL = "7s"  # neither the ServiceMonitor default (15s) nor the Prometheus' (5s)
MONITORING = ("monitoring.coreos.com", "v1", "servicemonitors")


def _spec(replicas: int = REPLICAS, **extra: Any) -> dict[str, Any]:
    return sample(
        NAME,
        replicas={"min": replicas, "max": replicas + 2},
        ports={"http": 8000, "grpc": 8001, "metrics": METRICS_PORT},
        monitoring={"serviceMonitor": True, "interval": INTERVAL},
        **extra,
    )


def _wait(what: str, check: Any, timeout: float = 90) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.5)
    raise AssertionError(f"{what} not reached in {timeout:.0f}s (last: {last!r})")


def _health(monitoring: MonitoringStack) -> list[tuple[str, str, str]]:
    return [(t["scrapeUrl"], t["health"], t["lastError"]) for t in monitoring.active_targets()]


def _wrong_copies(rendered: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The rendered ServiceMonitor with one fault each, owned by nobody."""
    base = {
        "apiVersion": rendered["apiVersion"],
        "kind": rendered["kind"],
        "spec": copy.deepcopy(rendered["spec"]),
    }
    wrong_port = copy.deepcopy(base)
    wrong_port["metadata"] = {"name": f"{NAME}-wrong-port"}
    wrong_port["spec"]["endpoints"][0]["port"] = "metricz"
    wrong_selector = copy.deepcopy(base)
    wrong_selector["metadata"] = {"name": f"{NAME}-wrong-selector"}
    wrong_selector["spec"]["selector"]["matchLabels"]["app.kubernetes.io/instance"] = "nobody"
    return {"port": wrong_port, "selector": wrong_selector}


Deployed = tuple[str, dict[str, Any], dict[str, str]]


@pytest.fixture
def deploy(
    cluster: Cluster,
    monitoring: MonitoringStack,
    services: Services,
    solo_namespace: str,
    start_operator: Callable[..., OperatorProcess],
) -> Callable[..., Deployed]:
    """Deploys a service; returns its namespace, rendered ServiceMonitor and pods (name -> IP).

    An operator of its own watches the namespace by name and reads this Prometheus.
    """

    def deploy(replicas: int = REPLICAS, timeout: float = 120, **spec: Any) -> Deployed:
        namespace = solo_namespace
        start_operator(namespace, CCS_PROMETHEUS_URL=monitoring.url)
        services.apply(namespace, _spec(replicas, **spec))
        services.wait_ready(namespace, NAME, timeout=timeout)
        with cluster.api_client() as api_client:
            custom = client.CustomObjectsApi(api_client)
            rendered: dict[str, Any] = custom.get_namespaced_custom_object(  # type: ignore[assignment]
                *MONITORING[:2], namespace, MONITORING[2], NAME
            )
            labels = rendered["spec"]["selector"]["matchLabels"]
            selector = ",".join(f"{k}={v}" for k, v in labels.items())
            core = client.CoreV1Api(api_client)

            def pods() -> dict[str, str] | None:
                items = core.list_namespaced_pod(namespace, label_selector=selector).items
                ips = {
                    str(p.metadata.name): str(p.status.pod_ip)
                    for p in items
                    if p.metadata and p.status and p.status.pod_ip
                }
                return ips if len(ips) == replicas else None

            return namespace, rendered, _wait(f"{replicas} pods with addresses", pods)

    return deploy


@pytest.fixture
def scraped(deploy: Callable[..., Deployed]) -> Deployed:
    """A Ready service on kwok's fake pods (nothing answers the scrapes)."""
    return deploy()


def test_the_rendered_servicemonitor_yields_one_target_per_pod(
    cluster: Cluster,
    monitoring: MonitoringStack,
    scraped: tuple[str, dict[str, Any], dict[str, str]],
) -> None:
    namespace, rendered, pods = scraped
    wrong = _wrong_copies(rendered)
    with cluster.api_client() as api_client:
        custom = client.CustomObjectsApi(api_client)
        for body in wrong.values():
            custom.create_namespaced_custom_object(*MONITORING[:2], namespace, MONITORING[2], body)

    job = servicemonitor_job(namespace, NAME)
    wrong_jobs = [
        servicemonitor_job(namespace, body["metadata"]["name"]) for body in wrong.values()
    ]

    def loaded() -> bool:
        return {job, *wrong_jobs} <= set(monitoring.loaded_jobs())

    monitoring.wait_until(loaded, 90, lambda: f"jobs loaded: {monitoring.loaded_jobs()}")

    def targets() -> list[dict[str, Any]] | None:
        found = monitoring.targets_of(job)
        return found if len(found) == REPLICAS else None

    found = _wait(f"{REPLICAS} active targets of {job}", targets)
    by_pod = {t["labels"]["pod"]: t for t in found}
    assert set(by_pod) == set(pods), (by_pod.keys(), pods)
    for pod, target in by_pod.items():
        labels = target["labels"]
        # What the floor's queries select on, and what prometheus-operator's relabelling adds.
        assert labels["namespace"] == namespace
        assert labels["service"] == NAME
        assert labels["job"] == NAME
        assert labels["endpoint"] == "metrics"
        url = urlsplit(target["scrapeUrl"])
        assert (url.hostname, url.port, url.path) == (pods[pod], METRICS_PORT, "/metrics")
        assert target["scrapeInterval"] == INTERVAL

    # Both faults are in the configuration Prometheus runs, and select nothing.
    for wrong_job in wrong_jobs:
        assert monitoring.targets_of(wrong_job) == [], wrong_job


@pytest.mark.triton
def test_triton_series_arrive_through_the_servicemonitor(
    monitoring: MonitoringStack, deploy: Callable[..., Deployed], cluster: Cluster
) -> None:
    """Series from the pod's real Triton (e2e.podserving), with the labels the floor's
    queries pin: only the rendered ServiceMonitor can have brought them."""
    local = cluster.local
    if local is None or not local.serving_enabled():
        pytest.skip("pods answered by real Tritons need the local provider as root")
    placement = kwok.serving_placement()
    namespace, _rendered, pods = deploy(
        replicas=1,
        timeout=300,  # a real model load
        resources={"gpus": 1, "cpu": "1", "memory": "1Gi"},
        batching={"maxBatchSize": 4, "maxQueueDelayMicroseconds": 1000},
        instanceGroups=[{"count": 1, "kind": "KIND_GPU"}],
        autoscaling={"cpuUtilization": 60, "requestsPerSecond": 0, "floor": {"enabled": False}},
        nodeSelector=placement["nodeSelector"],
        tolerations=placement["tolerations"],
    )
    selector = f'namespace="{namespace}",service="{NAME}"'

    def pods_reporting(query: str) -> set[str]:
        result = monitoring.api("/api/v1/query", {"query": query})["result"]
        return {r["metric"].get("pod", "") for r in result}

    monitoring.wait_until(
        lambda: pods_reporting(f"up{{{selector}}} == 1") == set(pods),
        120,
        lambda: f"up: {pods_reporting(f'up{{{selector}}}')}; targets: {_health(monitoring)}",
    )
    monitoring.wait_until(
        lambda: pods_reporting(f"nv_inference_count{{{selector}}}") == set(pods),
        60,
        lambda: f"nv_inference_count from {pods_reporting(f'nv_inference_count{{{selector}}}')}",
    )


def test_a_prometheusrule_reaches_the_rule_files_prometheus_evaluates(
    cluster: Cluster, monitoring: MonitoringStack, namespace: str
) -> None:
    """PrometheusRule -> the operator's rulefiles ConfigMap -> a file -> an evaluated rule."""
    record = f"ccs_e2e:{namespace.replace('-', '_')}:up"
    body = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "probe"},
        "spec": {
            "groups": [{"name": namespace, "rules": [{"record": record, "expr": "vector(1)"}]}]
        },
    }
    plural = ("monitoring.coreos.com", "v1", namespace, "prometheusrules")

    def evaluated() -> list[dict[str, Any]]:
        groups = monitoring.api("/api/v1/rules", {"type": "record"})["groups"]
        return [r for g in groups for r in g["rules"] if r["name"] == record]

    with cluster.api_client() as api_client:
        custom = client.CustomObjectsApi(api_client)
        custom.create_namespaced_custom_object(*plural, body)
        rules = _wait("the rule evaluated", lambda: [r for r in evaluated() if r["health"] == "ok"])
        assert rules[0]["query"] == "vector(1)"
        custom.delete_namespaced_custom_object(*plural, "probe")
        _wait("the rule gone", lambda: not evaluated())


def _get(url: str) -> tuple[str, str, bytes]:
    """The final URL (after redirects), content type and body of a GET that succeeds."""
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.geturl(), response.headers.get_content_type(), response.read()
    except urllib.error.HTTPError as exc:
        raise AssertionError(f"GET {url}: {exc.code} {exc.read()[:300]!r}") from exc


def test_the_url_prometheus_is_bridged_to_serves_its_web_ui(monitoring: MonitoringStack) -> None:
    """The URL `make demo` prints opens Prometheus' own UI, built from its module's sources
    (e2e.toolchain): `/` leads to the query page, the graph and targets pages are the UI's
    page too, and the script that page loads is served."""
    final, content_type, body = _get(f"{monitoring.url}/")
    assert urlsplit(final).path == "/query", final
    assert content_type == "text/html", content_type
    page = body.decode()
    assert '<div id="root"></div>' in page, page[:2000]
    scripts = re.findall(r'<script type="module"[^>]* src="\.?(/assets/[^"]+\.js)"', page)
    assert scripts, page[:2000]
    for path in ("/graph", "/targets"):
        assert _get(f"{monitoring.url}{path}")[2] == body, path
    for script in scripts:
        _, content_type, code = _get(f"{monitoring.url}{script}")
        assert content_type in {"application/javascript", "text/javascript"}, script
        assert len(code) > 100_000, (script, code[:200])  # the bundled UI, not an error page
