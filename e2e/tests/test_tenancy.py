"""Query overrides cannot read another namespace's series, against a real Prometheus.

Prometheus scrapes two exporters on loopback that serve the same metric: one labelled as a
service of another tenant (`namespace="other-tenant"`, value 52.6, the value issue 17 saw
leak into status), one as this test's own service (value 7). A solo operator, allowed to run
overrides in the test's namespace, evaluates a legitimate override and several hostile ones.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from e2e.fixtures import Cluster
from e2e.operator_fixtures import OperatorProcess, Services, condition, sample
from e2e.prometheus import PrometheusServer, ScrapeTarget

from helpers import reply

pytestmark = pytest.mark.cluster

FOREIGN = 52.6
OWN = 7.0
METRIC = "tenant_probe_value"


class Gauge:
    """An HTTP /metrics endpoint on loopback serving one gauge."""

    def __init__(self, value: float) -> None:
        body = f"# TYPE {METRIC} gauge\n{METRIC} {value}\n".encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                reply(self, body, "text/plain; version=0.0.4")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.address = f"127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def gauges() -> Iterator[tuple[Gauge, Gauge]]:
    foreign, own = Gauge(FOREIGN), Gauge(OWN)
    yield foreign, own
    foreign.close()
    own.close()


# Overrides the CRD admits but the operator must confine or refuse: name -> (query, reason).
HOSTILE = {
    # Unpinned: confined to this namespace and service, where the metric does not exist.
    "unpinned": (f"max({METRIC})", "NoData"),
    "subquery": (f"max_over_time(max({METRIC})[30s:5s])", "NoData"),
    "offset": (f"max({METRIC} offset 5s)", "NoData"),
    "at-end": (f"max({METRIC} @ end())", "NoData"),
    # `or` with a selector of another metric: confined too (this service has no `up`).
    "or-up": (f"max({METRIC}) or max(up) * 3", "NoData"),
    "relabel": (
        f'max(label_replace({METRIC}, "namespace", "other-tenant", "", ""))',
        "QueryRefused",
    ),
    "nameless": ('max({job="triton"})', "QueryRefused"),
}


def test_overrides_never_read_another_namespace(
    cluster: Cluster,
    solo_namespace: str,
    services: Services,
    start_operator: Callable[..., OperatorProcess],
    gauges: tuple[Gauge, Gauge],
) -> None:
    foreign, own = gauges
    targets = [
        ScrapeTarget(foreign.address, {"namespace": "other-tenant", "service": "victim"}),
        ScrapeTarget(own.address, {"namespace": solo_namespace, "service": "legit"}),
    ]
    with PrometheusServer(targets, scrape_interval="1s") as prometheus:
        prometheus.wait_for_targets_up(30)
        # Positive control: the foreign value is there for anyone who asks unconfined.
        deadline = time.monotonic() + 30
        while True:
            result = prometheus.api("/api/v1/query", {"query": f"max({METRIC})"})["result"]
            if result and float(result[0]["value"][1]) == FOREIGN:
                break
            assert time.monotonic() < deadline, result
            time.sleep(0.5)
        start_operator(
            solo_namespace,
            CCS_PROMETHEUS_URL=prometheus.url,
            CCS_FLOOR_WINDOW="10s",
            CCS_RESYNC_SECONDS="10",
            CCS_QUERY_OVERRIDES="namespaces",
            CCS_QUERY_OVERRIDE_NAMESPACES=solo_namespace,
        )

        def spec(query: str) -> dict[str, Any]:
            floor = {"evaluationIntervalSeconds": 5, "cooldownSeconds": 5, "query": query}
            return {
                "replicas": {"min": 1, "max": 3},
                "autoscaling": {"cpuUtilization": 60, "requestsPerSecond": 0, "floor": floor},
            }

        # The issue's own query is refused at admission already.
        issue = sample("issue", **spec(f'sum({METRIC}{{namespace="other-tenant"}}) / 1e6'))
        refused = cluster.kubectl(
            "apply", "-n", solo_namespace, "-f", "-", input=json.dumps(issue), check=False
        )
        assert refused.returncode != 0
        assert "may not name another namespace" in refused.stderr, refused.stderr

        services.apply(solo_namespace, sample("legit", **spec(f"max({METRIC}) * 1")))
        for name, (query, _) in HOSTILE.items():
            services.apply(solo_namespace, sample(name, **spec(query)))

        # A legitimate override pinned to its own service still works.
        body = services.wait(
            solo_namespace,
            "legit",
            lambda b: (b.get("status") or {}).get("queueLatencyMs") == OWN,
            timeout=90,
            what=f"queueLatencyMs {OWN}",
        )
        active = condition(body, "FloorControllerActive")
        assert active is not None and active["status"] == "True", active

        def settled(reason: str) -> Callable[[dict[str, Any]], bool]:
            def check(b: dict[str, Any]) -> bool:
                found = condition(b, "FloorControllerActive")
                return found is not None and found["reason"] == reason

            return check

        for name, (_, reason) in HOSTILE.items():
            body = services.wait(
                solo_namespace, name, settled(reason), timeout=60, what=f"reason {reason}"
            )
            if reason == "QueryRefused":
                found = condition(body, "FloorControllerActive") or {}
                assert "spec.autoscaling.floor.query" in found.get("message", ""), found
        # Several more evaluations: no status ever carries the foreign value.
        time.sleep(12)
        for name in ["legit", *HOSTILE]:
            status = services.get(solo_namespace, name).get("status") or {}
            assert status.get("queueLatencyMs") != FOREIGN, (name, status)
            assert str(FOREIGN) not in json.dumps(status), (name, status)
        events = cluster.kubectl("get", "events", "-n", solo_namespace, "-o", "json").stdout
        reasons = {e["reason"] for e in json.loads(events)["items"]}
        assert "QueryRefused" in reasons, reasons
