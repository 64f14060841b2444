"""The whole loop on the cluster, every part real: load -> Triton queue -> the ServiceMonitor the
operator rendered -> prometheus-operator -> Prometheus -> the floor -> the HPA -> new pods ->
their own Tritons -> latency back under target; then no load -> the floor steps down.

Load is open loop (e2e.loadgen), sent from inside the pod network to the Service's ready
endpoints, as kube-proxy would spread it. Each step is asserted and its time recorded
(printed, and appended to $CCS_BENCH_CLOSED_LOOP_OUT when set); no assertion is on a timing.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from kubernetes import client

from ccs_operator.clients.prometheus import PrometheusClient
from ccs_operator.core.promql import NoData, PrometheusError, PrometheusSettings
from e2e import kwok, loadgen, podserving
from e2e.fixtures import Cluster
from e2e.localcluster import LocalCluster
from e2e.monitoring import MonitoringStack
from e2e.operator_fixtures import OperatorProcess, Services, condition, sample

pytestmark = [pytest.mark.cluster, pytest.mark.triton, pytest.mark.prometheus]

NAME = "loop"
# Above one batch's service time (~104 ms): with enough replicas the p99 queue wait is then
# under the target, and one replica past its capacity is far over it.
TARGET_MS = 150
INTERVAL_S = 5
COOLDOWN_S = 15
MAX_REPLICAS = 3
# One instance, batches of at most 4, ~104 ms per batch: about 38 requests/s per replica.
BATCH_COST_MS = "100"
# Past one replica's capacity, within two or three.
PROFILE = "0:4,20:60,130:60"
PLATEAU_FROM_S = 20
PLATEAU_RPS = 60
PLATEAU_END_S = 130


def _spec() -> dict[str, Any]:
    placement = kwok.serving_placement()
    return {
        "model": {
            "name": "claude_code",
            "repository": "/models/claude_code",
            "platform": "python",
            "inputs": [{"name": "input_ids", "dataType": "TYPE_INT32", "dims": [-1]}],
            "outputs": [{"name": "output", "dataType": "TYPE_FP32", "dims": [-1, 16]}],
        },
        "resources": {"gpus": 1, "cpu": "1", "memory": "1Gi"},
        "batching": {"maxBatchSize": 4, "maxQueueDelayMicroseconds": 1000},
        "instanceGroups": [{"count": 1, "kind": "KIND_GPU"}],
        "replicas": {"min": 1, "max": MAX_REPLICAS},
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
        "monitoring": {"serviceMonitor": True, "interval": "2s"},
        "nodeSelector": placement["nodeSelector"],
        "tolerations": placement["tolerations"],
    }


@pytest.fixture
def served(served_cluster: LocalCluster) -> Iterator[LocalCluster]:
    """The local cluster's Tritons, made as slow per batch as this test needs."""
    local = served_cluster
    before = podserving.Settings.read(local.state_dir / podserving.SETTINGS_FILE)
    # Room for this test's replicas beside whatever already runs (a demo left up, say).
    room = max(before.max_tritons, len(podserving.pod_tritons()) + MAX_REPLICAS)
    podserving.write_settings(
        local.state_dir, max_tritons=room, env={"CCS_SAMPLE_BATCH_COST_MS": BATCH_COST_MS}
    )
    try:
        yield local
    finally:
        podserving.write_settings(local.state_dir, before.max_tritons, before.env)


class Loop:
    """What the test watches, polled every 0.5 s: the first time each step happened."""

    def __init__(
        self, prometheus_url: str, services: Services, apps: client.AppsV1Api, namespace: str
    ) -> None:
        self.prom = PrometheusClient(PrometheusSettings(url=prometheus_url))
        self.services, self.apps, self.namespace = services, apps, namespace
        self.started = time.monotonic()
        self.at: dict[str, float] = {}
        self.max_floor = 1
        self.max_ready = 0
        self.queue_ms: list[tuple[float, float]] = []
        self.plateau_capacity: list[float] = []
        self.max_gain = 1.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def mark(self, step: str) -> None:
        self.at.setdefault(step, round(time.monotonic() - self.started, 1))

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(Exception):
                self._poll()
            self._stop.wait(0.5)

    def _poll(self) -> None:
        status = self.services.get(self.namespace, NAME).get("status") or {}
        floor = int(status.get("floor") or 1)
        elapsed = time.monotonic() - self.started
        accounting = status.get("floorAccounting") or {}
        capacity = accounting.get("capacityPerReplicaRps")
        self.max_gain = max(self.max_gain, float(accounting.get("utilizationGain") or 1.0))
        if capacity and PLATEAU_FROM_S + 10 <= elapsed <= PLATEAU_END_S:
            self.plateau_capacity.append(float(capacity))
        self.max_floor = max(self.max_floor, floor)
        if floor > 1:
            self.mark("floor_raised")
        if "floor_raised" in self.at and floor == 1:
            self.mark("floor_back_to_min")
        autoscaling = client.AutoscalingV2Api(self.apps.api_client)
        hpa = autoscaling.read_namespaced_horizontal_pod_autoscaler(NAME, self.namespace)
        if (hpa.spec.min_replicas or 1) > 1:
            self.mark("hpa_min_raised")
        deployment = self.apps.read_namespaced_deployment(NAME, self.namespace)
        ready = deployment.status.ready_replicas or 0
        self.max_ready = max(self.max_ready, ready)
        if ready > 1:
            self.mark("second_replica_ready")
        with contextlib.suppress(NoData, PrometheusError):
            latency = self.prom.queue_latency(self.namespace, NAME, window="5s")
            value = latency.signal(prefer_p99=True)
            now = round(time.monotonic() - self.started, 1)
            self.queue_ms.append((now, value))
            if value > TARGET_MS:
                self.mark("queue_over_target")
            elif ready > 1 and now >= PLATEAU_FROM_S + 10:
                # Past one replica's capacity, served by more, under the target.
                self.mark("queue_under_target_at_plateau")

    def __enter__(self) -> Loop:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.prom.close()


def _per_pod_rate(prom_url: str, namespace: str) -> dict[str, float]:
    """Requests/s each pod's Triton served, from the series our ServiceMonitor brought in."""
    with PrometheusClient(PrometheusSettings(url=prom_url)) as prom:
        query = (
            f'sum by (pod) (rate(nv_inference_request_success{{namespace="{namespace}",'
            f'service="{NAME}"}}[10s]))'
        )
        return {s.labels.get("pod", ""): s.value for s in prom.query(query)}


_steps: list[Loop] = []


def _until(what: str, check: Callable[[], Any], timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.5)
    seen = ""
    if _steps:
        loop = _steps[-1]
        seen = (
            f"; steps so far {loop.at}, floor peak {loop.max_floor}, queue ms {loop.queue_ms[-12:]}"
        )
    raise AssertionError(f"{what}: not within {timeout:.0f}s{seen}")


def test_load_raises_the_floor_new_pods_serve_latency_recovers_and_the_floor_steps_down(
    served: LocalCluster,
    monitoring: MonitoringStack,
    cluster: Cluster,
    solo_namespace: str,
    services: Services,
    start_operator: Callable[..., OperatorProcess],
) -> None:
    ns = solo_namespace
    start_operator(
        ns, CCS_PROMETHEUS_URL=monitoring.url, CCS_FLOOR_WINDOW="5s", CCS_RESYNC_SECONDS="30"
    )
    services.apply(ns, {**sample(NAME), "spec": _spec()})
    services.wait_ready(ns, NAME, timeout=120)
    # The series reach Prometheus only through the ServiceMonitor the operator rendered.
    services.wait(
        ns,
        NAME,
        lambda b: (condition(b, "MetricsAvailable") or {}).get("status") == "True",
        timeout=120,
        what="MetricsAvailable True (Triton's series scraped through our ServiceMonitor)",
    )
    assert services.get(ns, NAME)["status"]["floor"] == 1

    with cluster.api_client() as api_client:
        apps = client.AppsV1Api(api_client)
        argv = served.exec_argv(loadgen.command(served.state_dir, ns, NAME, PROFILE))
        with Loop(monitoring.url, services, apps, ns) as loop:
            load = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            try:
                _steps.append(loop)
                _until("the floor raised", lambda: "floor_raised" in loop.at, 120)
                _until("a second replica Ready", lambda: "second_replica_ready" in loop.at, 120)
                # The new pods' own Tritons take load.
                rates = _until(
                    "load served by two pods or more",
                    lambda: (
                        (r := _per_pod_rate(monitoring.url, ns))
                        and sum(1 for v in r.values() if v > 1) >= 2
                        and r
                    ),
                    60,
                )
                _until(
                    "queue wait under the target on the plateau, with more replicas",
                    lambda: "queue_under_target_at_plateau" in loop.at,
                    90,
                )
                out, err = load.communicate(timeout=180)
            finally:
                if load.poll() is None:
                    load.kill()
            assert load.returncode == 0, err[-2000:]
            lines = [json.loads(line) for line in out.splitlines()]
            summary = lines[-1]["summary"]
            assert summary["ok"] > 0.9 * summary["sent"], summary
            # No load: the floor comes back to spec min after the cool-down.
            _until(
                "the floor back at min",
                lambda: "floor_back_to_min" in loop.at,
                60 + MAX_REPLICAS * (COOLDOWN_S + INTERVAL_S),
            )
    status = services.get(ns, NAME)["status"]
    # One replica could not have served the plateau: the floor's own measured capacity says so.
    assert loop.plateau_capacity, "no measured capacity in status during the plateau"
    capacity = float(np.median(loop.plateau_capacity))
    assert 0 < capacity < PLATEAU_RPS, loop.plateau_capacity
    # The queueing model (M/M/1 here) is far too cautious for a batching Triton: the replicas'
    # own evidence (busy share within target) raised the planned utilisation.
    assert loop.max_gain > 1.5, loop.max_gain
    history = status["scalingHistory"]
    assert any(h["to"] > h["from"] for h in history) and any(h["to"] < h["from"] for h in history)
    record = {
        "steps_s": loop.at,
        "max_floor": loop.max_floor,
        "max_ready": loop.max_ready,
        "per_pod_rps": {k: round(v, 1) for k, v in rates.items()},
        "capacity_per_replica_rps": capacity,
        "utilization_gain_max": loop.max_gain,
        "queue_p99_ms_max": max((v for _, v in loop.queue_ms), default=None),
        "load": summary,
        "lead_s": (
            round(loop.at["queue_over_target"] - loop.at["floor_raised"], 1)
            if "queue_over_target" in loop.at
            else None
        ),
    }
    print("closed loop:", json.dumps(record))
    out_file = os.environ.get("CCS_BENCH_CLOSED_LOOP_OUT")
    if out_file:
        with open(out_file, "a") as handle:
            handle.write(json.dumps(record) + "\n")
