"""The warm floor end to end, with real components only.

A real Triton (the CPU `tritonserver` from PyPI's nvidia-pytriton, serving the Python sample
model with a fixed per-batch compute time) stands in for the service's pods; a real
Prometheus scrapes it with the `namespace`/`service`/`pod` labels a ServiceMonitor's
relabelling attaches.

- Under a gRPC load that pushes the queue wait over the target, the operator must raise the
  floor, the real HPA controller must scale the Deployment, kwok must make the new pods
  Ready; with Prometheus stopped the floor must be held and the condition must say why; when
  the load stops the floor must come back to spec min, no sooner than a cool-down after it
  last rose.
- Under an open-loop ramp of the request rate past the Triton's capacity, the floor must rise
  *before* Prometheus shows the queue wait over the target (it reads the arrival rate, its
  trend and the measured service time, not only the queue), and the lead is recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest

from ccs_operator.clients.prometheus import PrometheusClient
from ccs_operator.core.api import parse_service
from ccs_operator.core.promql import NoData, PrometheusError, PrometheusSettings
from e2e.fixtures import Cluster
from e2e.operator_fixtures import OperatorProcess, Services, condition, sample
from e2e.prometheus import PrometheusServer, ScrapeTarget
from serving_image.client import AsyncTritonClient, RetryPolicy
from serving_image.local import LocalTriton

pytestmark = [pytest.mark.cluster, pytest.mark.triton, pytest.mark.prometheus]

NAME = "floor"
TARGET_MS = 40
INTERVAL_S = 5
COOLDOWN_S = 10
# One instance, batches of at most 4, 100 ms per batch: 16 clients queue ~300 ms each.
BATCH_COST_MS = "100"
CONCURRENCY = 16


def _spec() -> dict[str, Any]:
    return {
        "model": {
            "name": "claude_code",
            "repository": "/models/claude_code",
            "platform": "python",
            "inputs": [{"name": "input_ids", "dataType": "TYPE_INT32", "dims": [-1]}],
            # A small vocabulary keeps responses light; the shape rule is the same.
            "outputs": [{"name": "output", "dataType": "TYPE_FP32", "dims": [-1, 16]}],
        },
        "resources": {"gpus": 1, "cpu": "1", "memory": "1Gi"},
        "batching": {"maxBatchSize": 4, "maxQueueDelayMicroseconds": 1000},
        "instanceGroups": [{"count": 1, "kind": "KIND_GPU"}],
        "replicas": {"min": 1, "max": 4},
        "autoscaling": {
            "cpuUtilization": 60,
            "requestsPerSecond": 0,
            "scaleDownStabilizationSeconds": 0,
            "floor": {
                "queueLatencyTargetMs": TARGET_MS,
                "evaluationIntervalSeconds": INTERVAL_S,
                "cooldownSeconds": COOLDOWN_S,
            },
        },
    }


class Load:
    """CONCURRENCY gRPC clients in a loop on their own event loop, until stopped."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.done = 0
        self.failed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    async def _client(self, client: AsyncTritonClient) -> None:
        ids = np.arange(8, dtype=np.int32).reshape(1, 8)
        while not self._stop.is_set():
            try:
                await client.infer(ids)
                self.done += 1
            except Exception:
                self.failed += 1
                await asyncio.sleep(0.1)

    async def _run(self) -> None:
        policy = RetryPolicy(attempt_timeout_s=10.0, total_timeout_s=20.0)
        async with AsyncTritonClient(self.url, "claude_code", policy=policy) as client:
            await asyncio.gather(*(self._client(client) for _ in range(CONCURRENCY)))

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def __exit__(self, *_: object) -> None:
        self.stop()


@pytest.fixture
def triton(solo_namespace: str) -> Iterator[LocalTriton]:
    body = {"metadata": {"name": NAME, "namespace": solo_namespace}, "spec": _spec()}
    server = LocalTriton.for_service(
        parse_service(body), env={"CCS_SAMPLE_BATCH_COST_MS": BATCH_COST_MS}
    )
    with server:
        yield server


class BreachWatch:
    """When Prometheus itself first shows the queue wait over the target (polled every 0.25 s
    with the operator's own query), and when the HPA's minReplicas first rises: the operator's
    reaction time, measured from outside it."""

    def __init__(self, prometheus_url: str, namespace: str, hpa_min: Callable[[], int]) -> None:
        self.client = PrometheusClient(PrometheusSettings(url=prometheus_url))
        self.namespace = namespace
        self.hpa_min = hpa_min
        self.breach_at: float | None = None
        self.hpa_raised_at: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set() and self.hpa_raised_at is None:
            now = time.monotonic()
            if self.breach_at is None:
                with contextlib.suppress(NoData, PrometheusError):
                    latency = self.client.queue_latency(self.namespace, NAME, window="5s")
                    if latency.signal(prefer_p99=True) > TARGET_MS:
                        self.breach_at = now
            elif self.hpa_min() > 1:
                self.hpa_raised_at = now
            self._stop.wait(0.25)

    def __enter__(self) -> BreachWatch:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.client.close()

    @property
    def reaction_s(self) -> float | None:
        if self.breach_at is None or self.hpa_raised_at is None:
            return None
        return self.hpa_raised_at - self.breach_at


def _record_reaction(reaction_s: float | None) -> None:
    """bench/floor_reaction.py collects the figure through this file; tests assert nothing
    about timings."""
    out = os.environ.get("CCS_BENCH_FLOOR_REACTION_OUT")
    print(f"queue-latency breach seen in Prometheus -> HPA minReplicas raised: {reaction_s}s")
    if out:
        with open(out, "a") as handle:
            handle.write(json.dumps({"reaction_s": reaction_s, "interval_s": INTERVAL_S}) + "\n")


# A raise comes from the forecast or, when the plan fell short, from the queue itself.
RAISE_REASONS = {"DemandForecast", "QueueLatencyAboveTarget"}


def _parse(stamp: str) -> float:
    return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()


def _hpa_min(cluster: Cluster, namespace: str) -> int:
    out = cluster.kubectl(
        "get", "hpa", NAME, "-n", namespace, "-o", "jsonpath={.spec.minReplicas}"
    ).stdout
    return int(out or 0)


def _until(check: Callable[[], bool], timeout: float, what: str) -> float:
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{what} not reached in {timeout}s")
        time.sleep(0.5)
    return time.monotonic() - started


def _scrape_target(triton: LocalTriton, namespace: str, name: str) -> ScrapeTarget:
    """The Triton as a ServiceMonitor's relabelling would label its pod."""
    return ScrapeTarget(
        triton.metrics_url.removeprefix("http://").removesuffix("/metrics"),
        {"namespace": namespace, "service": name, "pod": f"{name}-0"},
    )


def _serve(
    start_operator: Callable[..., OperatorProcess],
    services: Services,
    prometheus: PrometheusServer,
    namespace: str,
    name: str,
    spec: dict[str, Any],
) -> dict[str, Any]:
    """Operator reading this Prometheus, the service applied, Ready, its metrics present."""
    start_operator(
        namespace,
        CCS_PROMETHEUS_URL=prometheus.url,
        CCS_FLOOR_WINDOW="5s",
        CCS_RESYNC_SECONDS="30",
    )
    services.apply(namespace, {**sample(name), "spec": spec})
    services.wait_ready(namespace, name)
    return services.wait(
        namespace,
        name,
        lambda b: (condition(b, "MetricsAvailable") or {}).get("status") == "True",
        timeout=60,
        what="MetricsAvailable True",
    )


def test_floor_rises_under_load_holds_without_prometheus_and_steps_down(
    cluster: Cluster,
    solo_namespace: str,
    services: Services,
    start_operator: Callable[..., OperatorProcess],
    triton: LocalTriton,
) -> None:
    namespace = solo_namespace
    prometheus = PrometheusServer([_scrape_target(triton, namespace, NAME)], scrape_interval="1s")
    with prometheus:
        prometheus.wait_for_targets_up()
        # Idle: the series exist and read 0 ms, so the floor is active and stays at min.
        body = _serve(start_operator, services, prometheus, namespace, NAME, _spec())
        assert body["status"]["floor"] == 1
        assert _hpa_min(cluster, namespace) == 1

        watch = BreachWatch(prometheus.url, namespace, lambda: _hpa_min(cluster, namespace))
        with watch, Load(triton.grpc_url) as load:
            raised = services.wait(
                namespace,
                NAME,
                lambda b: (b.get("status") or {}).get("floor", 1) > 1,
                timeout=90,
                what="floor raised under load",
            )
            history = raised["status"]["scalingHistory"]
            assert history[-1]["reason"] in RAISE_REASONS, raised["status"]
            assert history[-1]["from"] == 1 and history[-1]["to"] == raised["status"]["floor"]
            accounting = raised["status"]["floorAccounting"]
            # The service time the floor sizes with is measured from Triton's own counters.
            assert accounting["serviceTimeMs"] > 0 and accounting["capacityPerReplicaRps"] > 0
            # The HPA follows the floor, the real HPA controller scales the Deployment and
            # kwok's pods turn Ready: ready replicas reach the floor.
            _until(lambda: _hpa_min(cluster, namespace) > 1, 30, "HPA minReplicas raised")
            scaled = services.wait(
                namespace,
                NAME,
                lambda b: b["status"].get("readyReplicas", 0) >= b["status"]["floor"] > 1,
                timeout=90,
                what="ready replicas at the floor",
            )
            assert load.done > 0
            floor_under_load = scaled["status"]["floor"]
        _record_reaction(watch.reaction_s)

        # Prometheus goes away while the floor is up: the floor is held, never dropped,
        # even over several cool-downs, and the condition says why.
        prometheus.stop()
        held = services.wait(
            namespace,
            NAME,
            lambda b: (
                (condition(b, "FloorControllerActive") or {}).get("reason")
                == "PrometheusUnavailable"
            ),
            timeout=30,
            what="FloorControllerActive PrometheusUnavailable",
        )
        active = condition(held, "FloorControllerActive")
        assert active is not None and active["status"] == "False"
        held_floor = held["status"]["floor"]
        assert held_floor >= floor_under_load
        time.sleep(3 * COOLDOWN_S)
        body = services.get(namespace, NAME)
        assert body["status"]["floor"] == held_floor, body["status"]
        assert _hpa_min(cluster, namespace) == body["status"]["floor"]
        events = cluster.kubectl(
            "get",
            "events",
            "-n",
            namespace,
            "--field-selector",
            "involvedObject.kind=ClaudeCodeService",
        ).stdout
        assert "PrometheusUnavailable" in events and "FloorRaised" in events

        # Prometheus is back: the controller recovers by itself, and with no load the floor
        # comes back to spec min, each step no sooner than a cool-down after the last raise.
        prometheus.start()
        services.wait(
            namespace,
            NAME,
            lambda b: (condition(b, "FloorControllerActive") or {}).get("status") == "True",
            timeout=60,
            what="FloorControllerActive True again",
        )
        lowered = services.wait(
            namespace,
            NAME,
            lambda b: b["status"].get("floor") == 1,
            timeout=90 + held_floor * (COOLDOWN_S + INTERVAL_S),
            what="floor back at spec min",
        )
        history = lowered["status"]["scalingHistory"]
        steps = [h for h in history if h["to"] < h["from"]]
        assert steps and all(h["reason"] == "DemandBelowFloor" for h in steps), steps
        last_raise = max(_parse(h["time"]) for h in history if h["to"] > h["from"])
        assert all(_parse(h["time"]) - last_raise >= COOLDOWN_S for h in steps), history
        _until(lambda: _hpa_min(cluster, namespace) == 1, 30, "HPA minReplicas back at 1")
        with contextlib.suppress(Exception):
            prometheus.stop()


# --- the floor leads a ramp ----------------------------------------------------------------

RAMP = "ramp"
RAMP_TARGET_MS = 100
# One instance, batches of up to 8 at 10 ms + 1 ms per item: about 440 requests/s at most.
RAMP_ENV = {"CCS_SAMPLE_BATCH_COST_MS": "10", "CCS_SAMPLE_ITEM_COST_MS": "1"}
RAMP_FROM_RPS, RAMP_TO_RPS, RAMP_SECONDS = 10.0, 700.0, 140.0


def _ramp_spec() -> dict[str, Any]:
    spec = _spec()
    spec["batching"] = {"maxBatchSize": 8, "maxQueueDelayMicroseconds": 1000}
    spec["replicas"] = {"min": 1, "max": 6}
    spec["autoscaling"]["floor"] = {
        "queueLatencyTargetMs": RAMP_TARGET_MS,
        "evaluationIntervalSeconds": INTERVAL_S,
        "cooldownSeconds": 60,
    }
    return spec


@pytest.fixture
def ramp_triton(solo_namespace: str) -> Iterator[LocalTriton]:
    body = {"metadata": {"name": RAMP, "namespace": solo_namespace}, "spec": _ramp_spec()}
    with LocalTriton.for_service(parse_service(body), env=RAMP_ENV) as server:
        yield server


class OpenLoopRamp:
    """Requests sent at a rate that rises linearly, whether or not earlier ones finished
    (open loop: a queue that builds does not slow the sender down, as with real users)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.sent = 0
        self.done = 0
        self.failed = 0
        self.started_at = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def rate(self, elapsed: float) -> float:
        share = min(1.0, max(0.0, elapsed / RAMP_SECONDS))
        return RAMP_FROM_RPS + (RAMP_TO_RPS - RAMP_FROM_RPS) * share

    async def _one(self, client: Any, inputs: Any, limit: asyncio.Semaphore) -> None:
        async with limit:
            try:
                await client.infer("claude_code", inputs, client_timeout=30)
                self.done += 1
            except Exception:
                self.failed += 1

    async def _run(self) -> None:
        import tritonclient.grpc.aio as grpcclient

        client = grpcclient.InferenceServerClient(self.url)
        ids = grpcclient.InferInput("input_ids", [1, 8], "INT32")
        ids.set_data_from_numpy(np.arange(8, dtype=np.int32).reshape(1, 8))
        limit = asyncio.Semaphore(2000)
        tasks: set[asyncio.Task[None]] = set()
        self.started_at = time.monotonic()
        owed = 0.0
        last = self.started_at
        while not self._stop.is_set():
            await asyncio.sleep(0.01)
            now = time.monotonic()
            owed += self.rate(now - self.started_at) * (now - last)
            last = now
            while owed >= 1:
                owed -= 1
                self.sent += 1
                task = asyncio.ensure_future(self._one(client, [ids], limit))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await client.close()

    def __enter__(self) -> OpenLoopRamp:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)


def _record_lead(row: dict[str, Any]) -> None:
    out = os.environ.get("CCS_BENCH_FLOOR_REACTION_OUT")
    print(f"floor leading a ramp: {row}")
    if out:
        with open(out, "a") as handle:
            handle.write(json.dumps({"lead": row, "interval_s": INTERVAL_S}) + "\n")


def test_floor_leads_a_load_ramp(
    cluster: Cluster,
    solo_namespace: str,
    services: Services,
    start_operator: Callable[..., OperatorProcess],
    ramp_triton: LocalTriton,
) -> None:
    namespace = solo_namespace
    target = _scrape_target(ramp_triton, namespace, RAMP)
    with PrometheusServer([target], scrape_interval="1s") as prometheus:
        prometheus.wait_for_targets_up()
        _serve(start_operator, services, prometheus, namespace, RAMP, _ramp_spec())
        probe = PrometheusClient(PrometheusSettings(url=prometheus.url))
        raised_at: float | None = None
        breach_at: float | None = None
        raised: dict[str, Any] = {}
        try:
            with OpenLoopRamp(ramp_triton.grpc_url) as ramp:
                deadline = time.monotonic() + RAMP_SECONDS + 60
                while time.monotonic() < deadline and breach_at is None:
                    now = time.monotonic()
                    if raised_at is None:
                        body = services.get(namespace, RAMP)
                        if body["status"].get("floor", 1) > 1:
                            raised_at, raised = now, body
                    with contextlib.suppress(NoData, PrometheusError):
                        latency = probe.queue_latency(namespace, RAMP, window="5s")
                        if latency.signal(prefer_p99=True) > RAMP_TARGET_MS:
                            breach_at = now
                    time.sleep(0.25)
                rate_at = ramp.rate
                sent, done = ramp.sent, ramp.done
                start = ramp.started_at
        finally:
            probe.close()
        assert done > 0, (sent, done)
        assert raised_at is not None, "the floor never rose during the ramp"
        history = raised["status"]["scalingHistory"]
        # It rose on the leading signals, not because the queue had already built.
        assert history[0]["reason"] == "DemandForecast", history
        assert breach_at is not None, "the ramp past capacity never breached the target"
        lead = breach_at - raised_at
        _record_lead(
            {
                "floor_raised_s": round(raised_at - start, 1),
                "floor_raised_rps": round(rate_at(raised_at - start)),
                "breach_s": round(breach_at - start, 1),
                "breach_rps": round(rate_at(breach_at - start)),
                "lead_s": round(lead, 1),
            }
        )
        assert lead > 0, f"the floor rose {-lead:.1f}s after the breach"
