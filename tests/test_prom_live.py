"""promql.py against the real Prometheus, scraping real exporters.

The exporters are small HTTP servers serving prometheus_client registries under Triton's
metric names, in the text format tritonserver serves (counters without `_total`), with
values the test controls. Prometheus attaches `namespace`/`service`/`pod` as target labels,
as a ServiceMonitor's relabelling does in a cluster. Counters grow linearly at a set rate,
so rate() and the mean queue wait are known exactly.
"""

from __future__ import annotations

import math
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from ccs_operator.clients.prometheus import PrometheusClient
from ccs_operator.core.confine import QueryRefused, confine_override
from ccs_operator.core.floor import FloorObservation, FloorPolicy, FloorReason, FloorState, decide
from ccs_operator.core.promql import (
    NoData,
    PrometheusSettings,
    PrometheusUnavailable,
    QueryFailed,
    QueryTooExpensive,
    QueueLatency,
    ServiceKey,
    quote_label_value,
)
from e2e.prometheus import PrometheusServer, ScrapeTarget

from helpers import reply

pytestmark = [pytest.mark.prometheus, pytest.mark.timeout(180)]

WINDOW = "5s"  # five 1s scrapes: enough for rate()
WAIT_S = 30.0


class TritonLikeCollector(Collector):
    """Triton's queue metrics for one pod; counters advance at rates the test sets."""

    def __init__(self, model: str = "claude_code") -> None:
        self.model = model
        self._lock = threading.Lock()
        self._t = time.time()
        self._queue_us = 0.0
        self._success = 0.0
        self._queue_rate = 0.0
        self._success_rate = 0.0
        self.p99_us: float | None = None
        # Further Triton counters (name -> (value, rate per second)) and gauges.
        self.counters: dict[str, list[float]] = {}
        self.gauges: dict[str, float] = {}

    def set_counter_rate(self, name: str, per_s: float) -> None:
        with self._lock:
            self._advance()
            self.counters.setdefault(name, [0.0, 0.0])[1] = per_s

    def set_rates(self, queue_us_per_s: float, success_per_s: float) -> None:
        with self._lock:
            self._advance()
            self._queue_rate, self._success_rate = queue_us_per_s, success_per_s

    def _advance(self) -> None:
        now = time.time()
        self._queue_us += self._queue_rate * (now - self._t)
        self._success += self._success_rate * (now - self._t)
        for counter in self.counters.values():
            counter[0] += counter[1] * (now - self._t)
        self._t = now

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            self._advance()
            labels = {"model": self.model, "version": "1"}
            if self._queue_rate or self._success_rate or self._queue_us or self._success:
                for name, value in (
                    ("nv_inference_queue_duration_us", self._queue_us),
                    ("nv_inference_request_success", self._success),
                ):
                    m = Metric(name, "Triton counter", "counter")
                    m.add_sample(name, labels, value)  # Triton's counters have no _total
                    yield m
            if self.p99_us is not None:
                m = Metric("nv_inference_queue_summary_us", "Triton summary", "summary")
                name = "nv_inference_queue_summary_us"
                m.add_sample(name, {**labels, "quantile": "0.99"}, self.p99_us)
                m.add_sample(name + "_count", labels, self._success)
                m.add_sample(name + "_sum", labels, self._queue_us)
                yield m
            for name, (value, _) in self.counters.items():
                m = Metric(name, "Triton counter", "counter")
                m.add_sample(name, labels, value)
                yield m
            for name, value in self.gauges.items():
                g = Metric(name, "Triton gauge", "gauge")
                g.add_sample(name, labels, value)
                yield g


class Exporter:
    """An HTTP /metrics endpoint serving one registry in text format 0.0.4."""

    def __init__(self, collector: TritonLikeCollector) -> None:
        self.collector = collector
        registry = CollectorRegistry()
        registry.register(collector)

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                reply(self, generate_latest(registry), "text/plain; version=0.0.4; charset=utf-8")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class BearerProxy:
    """A reverse proxy that demands a bearer token, as kube-rbac-proxy does in front of a
    cluster's Prometheus (Prometheus itself has no bearer-token check)."""

    def __init__(self, upstream: str, token: str) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.headers.get("Authorization") != f"Bearer {token}":
                    self.send_response(401)
                    self.end_headers()
                    self.wfile.write(b"Unauthorized")
                    return
                with urllib.request.urlopen(upstream + self.path, timeout=10) as r:
                    body = r.read()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# Pods: (namespace, service, pod) -> rates. Service b/two has two pods with different load,
# so a per-pod average of averages (55 ms) differs from the request-weighted mean (40 ms).
PODS = {
    ("a", "one", "one-0"): (250_000.0, 10.0),  # 25 ms
    ("b", "two", "two-0"): (100_000.0, 10.0),  # 10 ms
    ("b", "two", "two-1"): (500_000.0, 5.0),  # 100 ms
    ("c", "idle", "idle-0"): (0.0, 0.0),  # counters flat: 0/0
}


@pytest.fixture(scope="module")
def world() -> Iterator[dict[str, Any]]:
    exporters: dict[tuple[str, str, str], Exporter] = {}
    for key, (queue_rate, success_rate) in PODS.items():
        collector = TritonLikeCollector()
        if key[1] == "idle":
            # Counters exist but never move (served once at 1 so the series exist).
            collector._queue_us, collector._success = 1.0, 1.0
            collector.p99_us = math.nan  # Triton's summary with no observations
        else:
            collector.set_rates(queue_rate, success_rate)
        if key[1] == "one":
            collector.p99_us = 80_000.0
        if key[1] == "two":
            # Batches of 2.5 requests on average, 40 ms each: a request's compute is the
            # batch's 40 ms, so compute grows at 40 ms x success rate.
            success = PODS[key][1]
            collector.set_counter_rate("nv_inference_exec_count", success / 2.5)
            collector.set_counter_rate(
                "nv_inference_compute_infer_duration_us", 40_000.0 * success
            )
            collector.set_counter_rate("nv_inference_request_failure", 1.0)
            collector.gauges["nv_inference_pending_request_count"] = 3.0
        exporters[key] = Exporter(collector)
    operator = TritonLikeCollector()
    op_exporter = Exporter(operator)
    hist = TritonLikeCollector()
    hist.set_rates(0.0, 10.0)
    hist_exporter = Exporter(hist)
    targets = [
        ScrapeTarget(e.address, {"namespace": ns, "service": svc, "pod": pod})
        for (ns, svc, pod), e in exporters.items()
    ]
    # The operator's own pod: its target label `namespace` is the operator's namespace.
    targets.append(ScrapeTarget(op_exporter.address, {"namespace": "ccs-system"}))
    targets.append(
        ScrapeTarget(hist_exporter.address, {"namespace": "h", "service": "hist", "pod": "h-0"})
    )
    started = time.time()  # no sample can be older than this
    with PrometheusServer(targets, scrape_interval="1s") as server:
        server.wait_for_targets_up(WAIT_S)
        client = PrometheusClient(PrometheusSettings(server.url, timeout_seconds=5))
        yield {
            "server": server,
            "client": client,
            "exporters": exporters,
            "op": operator,
            "hist": hist,
            "hist_since": started,
        }
        client.close()
    for e in [*exporters.values(), op_exporter, hist_exporter]:
        e.close()


def wait_for(fn: Any, timeout: float = WAIT_S) -> Any:
    """Poll fn until it returns without AssertionError/NoData, or fail with the last error."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return fn()
        except (AssertionError, NoData):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def test_batch_returns_every_service_in_one_query(world: dict[str, Any]) -> None:
    client: PrometheusClient = world["client"]

    def check() -> dict[ServiceKey, Any]:
        got = client.queue_latency_all(WINDOW)
        assert set(got) == {("a", "one"), ("b", "two"), ("c", "idle"), ("h", "hist")}, got
        assert got[ServiceKey("a", "one")].mean_ms == pytest.approx(25.0, rel=0.02)
        # Request-weighted: 600 000 us / 15 requests = 40 ms, not the 55 ms mean of pods.
        assert got[ServiceKey("b", "two")].mean_ms == pytest.approx(40.0, rel=0.02)
        return got

    got = wait_for(check)
    assert got[ServiceKey("a", "one")].p99_ms == pytest.approx(80.0)
    assert got[ServiceKey("b", "two")].p99_ms is None  # summaries off on those pods


def test_idle_service_reads_zero_not_nan(world: dict[str, Any]) -> None:
    client: PrometheusClient = world["client"]

    def check() -> None:
        idle = client.queue_latency("c", "idle", window=WINDOW)
        assert idle.mean_ms == 0.0
        assert idle.p99_ms is None  # the NaN quantile is dropped

    wait_for(check)


def test_single_service_and_no_data(world: dict[str, Any]) -> None:
    client: PrometheusClient = world["client"]
    one = wait_for(lambda: client.queue_latency("a", "one", window=WINDOW))
    assert one.mean_ms == pytest.approx(25.0, rel=0.02)
    with pytest.raises(NoData):
        client.queue_latency("a", "missing", window=WINDOW)
    with pytest.raises(NoData):
        client.queue_latency("missing", "one", window=WINDOW)


def override(
    client: PrometheusClient,
    namespace: str,
    service: str,
    template: str,
    *,
    max_series: int | None = None,
    timeout_seconds: float | None = None,
) -> QueueLatency:
    """A query override as the floor loop runs it: filled, confined, then sent."""
    query = confine_override(
        template, namespace=namespace, service=service, model="claude_code", window=WINDOW
    )
    return client.queue_latency(
        namespace,
        service,
        query=query,
        window=WINDOW,
        max_series=max_series,
        timeout_seconds=timeout_seconds,
    )


def test_template_override(world: dict[str, Any]) -> None:
    client: PrometheusClient = world["client"]
    template = (
        "1e-3 * sum(rate(nv_inference_queue_duration_us{namespace={namespace}, "
        'service="{service}", model="{model}"}[{window}]))'
        " / sum(rate(nv_inference_request_success{namespace={namespace}, "
        "service={service}}[{window}]))"
    )
    def both_pods() -> None:  # until both pods' rates are in
        got = override(client, "b", "two", template)
        assert got.mean_ms == pytest.approx(40.0, rel=0.02)

    wait_for(both_pods)
    # The raw ratio is 0/0 = NaN for the idle service: reported as NaN, and the floor holds.
    idle = override(client, "c", "idle", template)
    assert math.isnan(idle.mean_ms)
    policy = FloorPolicy(2, 10, 100.0)
    state = FloorState(5, last_change_at=0.0, below_watermark_since=0.0)
    d = decide(policy, state, FloorObservation(idle.mean_ms, 5, time.time()))
    assert (d.floor, d.reason) == (5, FloorReason.NO_DATA)


# Service a/one reads 25 ms mean and 80 ms p99; b/two 10 and 100 ms per pod (40 ms mean).
A_RATE = 250_000.0  # a/one's queue microseconds per second
B_POD_RATE = 500_000.0  # the busiest pod, b/two-1


def test_an_unpinned_override_reads_only_its_own_service(world: dict[str, Any]) -> None:
    """Positive control first: without confinement the same PromQL reads every namespace."""
    client: PrometheusClient = world["client"]
    raw = "max(rate(nv_inference_queue_duration_us[5s]))"

    def everyone() -> float:
        [sample] = client.query(raw)
        assert sample.value == pytest.approx(B_POD_RATE, rel=0.05)  # b/two-1's pod
        return sample.value

    wait_for(everyone)

    def own_only() -> None:  # a rate over 5 s: polled until it settles, as `everyone` is
        own = override(client, "a", "one", raw)
        assert own.mean_ms == pytest.approx(A_RATE, rel=0.05)

    wait_for(own_only)


@pytest.mark.parametrize(
    ("template", "own"),
    [
        # `or` with a selector of another namespace's metric: both sides are confined.
        ('max(nv_inference_queue_summary_us{quantile="0.99"}) / 1e3 or max(up) * 1e6', 80.0),
        # A subquery over a metric only other namespaces have: confined, it reads nothing.
        (
            "max_over_time(max(nv_inference_pending_request_count)[5s:1s]) "
            'or max(nv_inference_queue_summary_us{quantile="0.99"}) / 1e3',
            80.0,
        ),
        # offset and @ move in time, not across namespaces.
        ('max(nv_inference_queue_summary_us{quantile="0.99"} offset 1s) / 1e3', 80.0),
        ('max(nv_inference_queue_summary_us{quantile="0.99"} @ end()) / 1e3', 80.0),
        ("absent(nv_inference_pending_request_count) * 7", 7.0),  # b/two has it; a/one not
    ],
)
def test_confined_variants_never_read_a_foreign_value(
    world: dict[str, Any], template: str, own: float
) -> None:
    client: PrometheusClient = world["client"]
    got = wait_for(lambda: override(client, "a", "one", template))
    assert got.mean_ms == pytest.approx(own, rel=0.02)


@pytest.mark.parametrize(
    "template",
    [
        'sum(nv_inference_pending_request_count{namespace="b"})',
        'max(nv_inference_queue_summary_us{namespace=~"a|b"}) / 1e3',
        'max(nv_inference_queue_summary_us{namespace!="a"}) / 1e3',
        'max({__name__=~".+", namespace="a"})',
        'max(label_replace(nv_inference_queue_summary_us, "namespace", "b", "", ""))',
        'max_over_time(max(nv_inference_pending_request_count{namespace="b"})[5s:1s])',
        'max(nv_inference_queue_summary_us) or max(nv_inference_queue_summary_us{service="two"})',
    ],
)
def test_foreign_variants_are_refused_before_prometheus(
    world: dict[str, Any], template: str
) -> None:
    client: PrometheusClient = world["client"]
    with pytest.raises(QueryRefused, match=r"spec\.autoscaling\.floor\.query"):
        override(client, "a", "one", template)


def test_too_many_series_is_too_expensive(world: dict[str, Any]) -> None:
    client: PrometheusClient = world["client"]
    per_pod = "nv_inference_request_success"  # b/two has two pods
    got = wait_for(lambda: override(client, "b", "two", per_pod, max_series=2))
    assert got.mean_ms > 0  # the larger pod's counter
    with pytest.raises(QueryTooExpensive) as expensive:
        override(client, "b", "two", per_pod, max_series=1)
    assert expensive.value.what == "series"


def test_a_slow_query_is_too_expensive(world: dict[str, Any]) -> None:
    """Prometheus stops a query at the override's budget, and says so."""
    client: PrometheusClient = world["client"]
    heavy = "count_over_time(vector(1)[1h:1ms])"  # 3.6 million steps (confine refuses it)
    started = time.monotonic()
    with pytest.raises(QueryTooExpensive) as expensive:
        client.query(heavy, timeout_seconds=0.001)
    assert expensive.value.what in ("slow", "samples")
    # Prometheus' answer, or the read timeout just after the budget; never retried.
    assert time.monotonic() - started < 2.5
    assert client.query("vector(1)", timeout_seconds=0.5)[0].value == 1.0  # budget is enough


@pytest.mark.parametrize(
    "value",
    ['a"} or vector(1) #', "b\\", "c'd", "e\nf\tg", "`raw`", "é☃", '\\"} or up{job=~".+'],
)
def test_hostile_values_parse_and_round_trip(world: dict[str, Any], value: str) -> None:
    """Prometheus's own parser reads the escaped literal back as exactly the value."""
    client: PrometheusClient = world["client"]
    literal = quote_label_value(value)
    [sample] = client.query(f'label_replace(vector(1), "v", {literal}, "", "")')
    assert sample.labels["v"] == value and sample.value == 1.0
    # ...and used as a service name it selects nothing rather than injecting a query.
    with pytest.raises(NoData):
        client.queue_latency("a", value, window=WINDOW)
    with pytest.raises(NoData):
        override(client, value, value, "vector(1) and on() up{service={service}}")


def test_bad_query_is_query_failed(world: dict[str, Any]) -> None:
    client: PrometheusClient = world["client"]
    with pytest.raises(QueryFailed, match="400"):
        client.query("sum(rate(")


def test_floor_signals_in_one_query(world: dict[str, Any]) -> None:
    client: PrometheusClient = world["client"]

    def check() -> Any:
        got = client.floor_signals_all(WINDOW)
        two = got[ServiceKey("b", "two")]
        # Arrivals: successes (10 + 5) plus failures (1 + 1) per second.
        assert two.arrival_rps == pytest.approx(17.0, rel=0.03)
        # Busy instance-seconds: per pod 40 ms x exec rate = 0.04 * (10 + 5) / 2.5.
        assert two.busy_instances == pytest.approx(0.04 * 15 / 2.5, rel=0.03)
        assert two.pending_requests == pytest.approx(6.0)
        assert two.latency is not None and two.latency.mean_ms == pytest.approx(40.0, rel=0.02)
        one = got[ServiceKey("a", "one")]
        # No compute series there: busy is 0 (not NaN), pending unknown.
        assert one.arrival_rps == pytest.approx(10.0, rel=0.03)
        assert one.pending_requests is None
        return got

    got = wait_for(check)
    assert ServiceKey("c", "idle") in got and got[ServiceKey("c", "idle")].arrival_rps == 0.0


def test_prewarm_history_from_tritons_arrival_series(world: dict[str, Any]) -> None:
    """Period 10 s, lead 4 s: at T, period k reads the highest rate over [T - 10k, T - 10k + 4]
    relative to the rate at T - 10k. A pod serving 10/s rises to 40/s at t_b:
    - at T = t_b + 9, one period back sits 1 s before the rise: a 4x rise;
    - with two periods required, the older one (t_b - 11) saw no rise: the smaller is 1x;
    - long after, at 40/s throughout: 1x;
    - a service with only one period of data has no history at all."""
    client: PrometheusClient = world["client"]
    hist: TritonLikeCollector = world["hist"]
    t_s = world["hist_since"]
    period, lead = 10, 4
    args = {"slack_seconds": 0, "window": "2s", "step": "1s"}
    while time.time() < t_s + 2 * period + 6:
        time.sleep(0.5)
    t_b = time.time()
    hist.set_rates(0.0, 40.0)
    while time.time() < t_b + 2 * period + 8:
        time.sleep(0.5)
    key = ServiceKey("h", "hist")
    one = client.prewarm_history_all(period, lead, periods=1, at=t_b + period - 1, **args)
    assert one[key] == pytest.approx(4.0, rel=0.15)
    both = client.prewarm_history_all(period, lead, periods=2, at=t_b + period - 1, **args)
    assert both[key] == pytest.approx(1.0, rel=0.05)
    steady = client.prewarm_history_all(period, lead, periods=2, at=t_b + 2 * period + 8, **args)
    assert steady[key] == pytest.approx(1.0, rel=0.05)
    young = client.prewarm_history_all(period, lead, periods=2, at=t_s + period + 1, **args)
    assert key not in young


def test_bearer_token_is_sent(world: dict[str, Any]) -> None:
    proxy = BearerProxy(world["server"].url, "s3cret")
    try:
        with PrometheusClient(PrometheusSettings(proxy.url, bearer_token="s3cret")) as ok:
            assert ok.query("vector(7)")[0].value == 7.0
        for token in (None, "wrong"):
            settings = PrometheusSettings(proxy.url, bearer_token=token)
            with PrometheusClient(settings) as refused, pytest.raises(QueryFailed, match="401"):
                refused.query("vector(7)")
    finally:
        proxy.close()


def test_concurrent_threads(world: dict[str, Any]) -> None:
    client: PrometheusClient = world["client"]
    results: list[float] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(5):
                results.append(client.query("vector(3)")[0].value)
        except BaseException as e:  # collected and re-raised below
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and results == [3.0] * 40


def test_unresponsive_server_times_out() -> None:
    """A port that accepts connections but never answers: PrometheusUnavailable, bounded."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
        settings = PrometheusSettings(url, timeout_seconds=0.5, retries=0)
        start = time.monotonic()
        with PrometheusClient(settings) as client, pytest.raises(PrometheusUnavailable):
            client.query("vector(1)")
        assert time.monotonic() - start < 5


def test_prometheus_down_then_back(world: dict[str, Any]) -> None:
    """Stopping Prometheus gives PrometheusUnavailable (the floor holds); it recovers."""
    server: PrometheusServer = world["server"]
    client: PrometheusClient = world["client"]
    wait_for(lambda: client.queue_latency("a", "one", window=WINDOW))
    server.stop()
    try:
        start = time.monotonic()
        with pytest.raises(PrometheusUnavailable):
            client.queue_latency_all(WINDOW)
        assert time.monotonic() - start < 10
        with pytest.raises(urllib.error.URLError):
            urllib.request.urlopen(server.url + "/-/ready", timeout=2)
    finally:
        server.start()
    one = wait_for(lambda: client.queue_latency("a", "one", window=WINDOW))
    assert one.mean_ms == pytest.approx(25.0, rel=0.05)


def test_targets_rewritten_and_reloaded(world: dict[str, Any]) -> None:
    """set_targets + reload: the same pod relabelled as another service shows up under it."""
    server: PrometheusServer = world["server"]
    client: PrometheusClient = world["client"]
    exporter: Exporter = world["exporters"][("a", "one", "one-0")]
    original = list(server.targets)
    moved = ScrapeTarget(exporter.address, {"namespace": "a", "service": "renamed", "pod": "p"})
    server.set_targets([t for t in original if t.address != exporter.address] + [moved])
    try:

        def check() -> None:
            got = client.queue_latency("a", "renamed", window=WINDOW)
            assert got.mean_ms == pytest.approx(25.0, rel=0.05)

        wait_for(check)
    finally:
        server.set_targets(original)
