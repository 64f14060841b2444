"""The control loop at scale: N ClaudeCodeServices on the local cluster with kwok GPU nodes.

    export CCS_E2E_STATE_DIR=...   # optional: a cluster state dir of your own
    python bench/scale_bench.py --sizes 100,500,1000 --write bench/RESULTS.md

Starts (or reuses) the local cluster with enough fake 8-GPU nodes for max(N) one-GPU pods,
a real Prometheus on loopback, and one real tritonserver (the sample model on CPU) under a
steady trickle of Poisson requests: once the services are Ready, Prometheus scrapes that
server once per service, each target labelled as the service's pod, so the floor loop reads
live Triton series for every service (the same series N times; kwok pods serve nothing).
For each N:

0. Unrelated load: `--unrelated` Pods and as many ConfigMaps in another namespace, none of
   them the operator's (the pods held by a scheduling gate, so they cost the scheduler
   nothing). An operator that watched the whole cluster would list and keep them all.
1. Baselines, the floor of what any operator can do, from `ccs-operator render` of the N
   services: (a) serial: ONE `kubectl apply --server-side` of all their children (kubectl
   sends them one at a time); (b) parallel: the same server-side applies sent by 16
   threads (the operator's API worker count). Time-to-Ready of a service is when its
   Deployment first has a ready replica, from the start of the apply.
2. Operator: `ccs-operator run` as a process watching one fresh namespace; ONE
   `kubectl apply --server-side` of the N services; time-to-Ready is when status.phase is
   Ready for the current generation, from the start of that apply. Both are observed by a
   watch, so both pay the same observation cost.
3. Operator CPU seconds (utime+stime) and peak RSS (VmHWM) from /proc of its process.
4. Idle, with the live series: after everything is Ready and settled, the API server's own
   `apiserver_request_total` write verbs (APPLY, PATCH, POST, PUT, DELETE) on the operator's
   children and services (their /status apart) over an idle window that spans at least
   one full no-op resync (CCS_RESYNC_SECONDS is set below the window), plus the operator's counters
   (`ccs_apply_requests_total`, `ccs_status_writes_total`) and its reconciles, which show
   that the resyncs ran inside the window.
5. Floor loop over the same idle window: Prometheus queries per evaluation interval, from
   Prometheus's own `prometheus_http_requests_total{handler="/api/v1/query"}` and the
   operator's `ccs_prometheus_query_duration_seconds_count`, the decisions by reason, the lag
   between an interval boundary and each decision (`ccs_floor_evaluation_lag_seconds`), and
   the status writes (the API server's count on claudecodeservices/status) against the
   changes stored (MODIFIED events of the services: a no-op apply stores none).
6. Restart storm: the operator is stopped, `--drift` percent of the HPAs are edited behind
   its back (maxReplicas), a fresh operator starts; API writes until it is quiet again,
   against the number of children that actually differ.

Numbers are from one run on a shared machine; ratios against the baseline of the same run are
what to compare. The services are the sample's with gpus 1, replicas 1..2 so the pods fit.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from kubernetes import client, watch  # noqa: E402
from kubernetes.client.exceptions import ApiException  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from e2e.prometheus import PrometheusServer, ScrapeTarget  # noqa: E402
from e2e.providers import LocalProvider  # noqa: E402
from results import commit, write_section  # noqa: E402

RESULTS_HEADING = "## Control loop at scale"
GROUP, VERSION, PLURAL = "serving.claudecode.io", "v1alpha1", "claudecodeservices"
GPUS_PER_NODE = 8
WRITE_VERBS = ("APPLY", "PATCH", "POST", "PUT", "DELETE")
# The resources the operator writes; everything else (leases, pods, nodes, replicasets,
# endpoint slices, the controllers' /status writes) belongs to the control plane and kwok.
OPERATOR_RESOURCES = {
    ("configmaps", ""),
    ("services", ""),
    ("deployments", ""),
    ("horizontalpodautoscalers", ""),
    ("servicemonitors", ""),
    ("claudecodeservices", ""),
    ("claudecodeservices", "status"),
}
SERVICE_STATUS = "claudecodeservices/status"
EVAL_INTERVAL_S = 10
# Prometheus scrapes the live Triton once per service at this interval (N targets).
SCRAPE_INTERVAL = "10s"
LIVE_RATE_RPS = 2.0


def progress(message: str) -> None:
    print(f"[scale {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


# --- the services --------------------------------------------------------------------------


def service(name: str) -> dict[str, Any]:
    body = yaml.safe_load((ROOT / "samples" / "claude-code.yaml").read_text())
    body["metadata"] = {"name": name}
    spec = body["spec"]
    spec["resources"] = {"gpus": 1, "cpu": "1", "memory": "1Gi"}
    spec["replicas"] = {"min": 1, "max": 2}
    spec["autoscaling"]["floor"]["evaluationIntervalSeconds"] = EVAL_INTERVAL_S
    return dict(body)


def services_yaml(n: int) -> str:
    return yaml.safe_dump_all([service(f"svc-{i:04d}") for i in range(n)])


# --- cluster access ------------------------------------------------------------------------


class Kube:
    def __init__(self, provider: LocalProvider) -> None:
        self.provider = provider
        self.api_client = provider.api_client()
        self.core = client.CoreV1Api(self.api_client)
        self.custom = client.CustomObjectsApi(self.api_client)

    def kubectl(self, *args: str, input: str | None = None, timeout: float = 1800) -> str:
        return self.provider.kubectl(*args, input=input, timeout=timeout).stdout

    def create_namespace(self, name: str) -> None:
        self.core.create_namespace({"metadata": {"name": name, "labels": {"ccs-bench": "scale"}}})
        deadline = time.monotonic() + 60
        while True:
            try:
                self.core.read_namespaced_service_account("default", name)
                return
            except ApiException as exc:
                if exc.status != 404 or time.monotonic() > deadline:
                    raise
            time.sleep(0.2)

    def delete_namespace(self, name: str, timeout: float = 900) -> float:
        """Delete and wait until it is gone (its pods release their GPUs); returns seconds."""
        started = time.monotonic()
        with contextlib.suppress(ApiException):
            self.core.delete_namespace(name)
        while time.monotonic() - started < timeout:
            try:
                self.core.read_namespace(name)
            except ApiException as exc:
                if exc.status == 404:
                    return time.monotonic() - started
                raise
            time.sleep(2)
        raise TimeoutError(f"namespace {name} not deleted in {timeout}s")

    def apply_parallel(self, manifests: list[dict[str, Any]], threads: int) -> None:
        """Server-side apply of each manifest, `threads` at a time (no operator involved)."""
        from concurrent.futures import ThreadPoolExecutor

        from ccs_operator.clients.kube import CHILD_TYPES

        def apply(manifest: dict[str, Any]) -> None:
            meta = manifest["metadata"]
            path = CHILD_TYPES[manifest["kind"]].path(meta["namespace"], meta["name"])
            self.api_client.call_api(
                *self.api_client.param_serialize(
                    method="PATCH",
                    resource_path=path,
                    query_params=[("fieldManager", "bench"), ("force", "true")],
                    header_params={"Content-Type": "application/apply-patch+yaml"},
                    body=manifest,
                    auth_settings=["BearerToken"],
                )
            ).read()

        with ThreadPoolExecutor(max_workers=threads) as pool:
            list(pool.map(apply, [m for m in manifests if m]))

    def unrelated_objects(self, namespace: str, count: int) -> None:
        """`count` Pods (gated: never scheduled) and `count` ConfigMaps the operator does not
        manage, so a watch that is not filtered on the server would list them all."""
        self.create_namespace(namespace)
        objects: list[dict[str, Any]] = []
        for i in range(count):
            objects.append(
                {
                    "apiVersion": "v1",
                    "kind": "ConfigMap",
                    "metadata": {"name": f"other-{i:05d}", "namespace": namespace},
                    "data": {"payload": "x" * 512},
                }
            )
            objects.append(
                {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": {"name": f"other-{i:05d}", "namespace": namespace},
                    "spec": {
                        "schedulingGates": [{"name": "bench.ccs/hold"}],
                        "containers": [{"name": "c", "image": "unrelated:1"}],
                    },
                }
            )
        from concurrent.futures import ThreadPoolExecutor

        def create(obj: dict[str, Any]) -> None:
            with contextlib.suppress(ApiException):
                if obj["kind"] == "Pod":
                    self.core.create_namespaced_pod(namespace, obj)
                else:
                    self.core.create_namespaced_config_map(namespace, obj)

        with ThreadPoolExecutor(max_workers=16) as pool:
            list(pool.map(create, objects))

    def apiserver_writes(self) -> Counter[tuple[str, str, str]]:
        """apiserver_request_total for write verbs, by (verb, resource, subresource)."""
        text = self.kubectl("get", "--raw", "/metrics", timeout=60)
        counts: Counter[tuple[str, str, str]] = Counter()
        for family in text_string_to_metric_families(text):
            if family.name != "apiserver_request":
                continue
            for s in family.samples:
                if s.name != "apiserver_request_total":
                    continue
                verb = s.labels.get("verb", "")
                # The namespace controller's deletecollection (scope "namespace") while it
                # empties a deleted namespace is not a write of the operator's.
                if verb == "DELETE" and s.labels.get("scope") != "resource":
                    continue
                if verb in WRITE_VERBS and s.labels.get("dry_run", "") == "":
                    key = (verb, s.labels.get("resource", ""), s.labels.get("subresource", ""))
                    counts[key] += int(s.value)
        return counts


def operator_writes(delta: Counter[tuple[str, str, str]]) -> Counter[str]:
    """Write requests on the operator's resources, by 'VERB resource[/sub]'."""
    out: Counter[str] = Counter()
    for (verb, resource, sub), value in delta.items():
        if (resource, sub) in OPERATOR_RESOURCES and value:
            out[f"{verb} {resource}{'/' + sub if sub else ''}"] += value
    return out


def split_writes(delta: Counter[tuple[str, str, str]]) -> tuple[Counter[str], int]:
    """operator_writes apart from the services' /status, and the count of those."""
    writes = operator_writes(delta)
    status = sum(v for k, v in writes.items() if k.endswith(SERVICE_STATUS))
    return Counter({k: v for k, v in writes.items() if not k.endswith(SERVICE_STATUS)}), status


def child_writes(delta: Counter[tuple[str, str, str]]) -> Counter[str]:
    return split_writes(delta)[0]


def events_written(delta: Counter[tuple[str, str, str]]) -> int:
    return sum(v for (_, resource, _), v in delta.items() if resource == "events")


class FirstTrue:
    """Watches a namespaced collection and records when each object first satisfies `ready`."""

    def __init__(
        self,
        kube: Kube,
        namespace: str,
        group: str,
        version: str,
        plural: str,
        ready: Callable[[Mapping[str, Any]], bool],
    ) -> None:
        self.kube = kube
        self.args = {"group": group, "version": version, "namespace": namespace, "plural": plural}
        self.ready = ready
        self.times: dict[str, float] = {}
        self.relists = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _see(self, obj: Mapping[str, Any]) -> None:
        name = obj["metadata"]["name"]
        if name not in self.times and self.ready(obj):
            self.times[name] = time.monotonic()

    def _listed(self, obj: Mapping[str, Any]) -> None:
        self._see(obj)

    def _event(self, kind: str, obj: Mapping[str, Any]) -> None:
        if kind in ("ADDED", "MODIFIED"):
            self._see(obj)

    def _run(self) -> None:
        # Listed once; each watch resumes from the last version seen, so no event falls
        # between two watches (Changes counts them). Re-listed only after a failure (410
        # Gone included), which Changes reports.
        version: str | None = None
        while not self._stop.is_set():
            try:
                if version is None:
                    listing = self.kube.custom.list_namespaced_custom_object(**self.args)
                    for item in listing.get("items", ()):
                        self._listed(item)
                    version = listing["metadata"]["resourceVersion"]
                stream = watch.Watch().stream(
                    self.kube.custom.list_namespaced_custom_object,
                    resource_version=version,
                    timeout_seconds=30,
                    **self.args,
                )
                for event in stream:
                    if self._stop.is_set():
                        return
                    version = event["object"]["metadata"]["resourceVersion"]
                    self._event(event["type"], event["object"])
            except Exception as exc:  # re-listed after any failure
                if not self._stop.is_set():
                    self.relists += 1
                    progress(f"watch {self.args['plural']}: {exc!r:.200}; re-listing")
                    version = None
                    time.sleep(0.5)

    def start(self) -> FirstTrue:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def wait(self, count: int, timeout: float, label: str) -> None:
        deadline = time.monotonic() + timeout
        last = -1
        while len(self.times) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{label}: {len(self.times)}/{count} ready after {timeout}s")
            if len(self.times) != last and (len(self.times) - last >= count // 10 or last < 0):
                last = len(self.times)
                progress(f"{label}: {last}/{count} ready")
            time.sleep(0.5)
        progress(f"{label}: {count}/{count} ready")


def deployment_ready(obj: Mapping[str, Any]) -> bool:
    return int((obj.get("status") or {}).get("readyReplicas") or 0) >= 1


def service_ready(obj: Mapping[str, Any]) -> bool:
    status = obj.get("status") or {}
    return status.get("phase") == "Ready" and status.get("observedGeneration") == obj[
        "metadata"
    ].get("generation")


# --- live Triton series ------------------------------------------------------------------------


class LiveTriton:
    """One real tritonserver (the sample model, CPU, Python backend) under Poisson requests
    at `rate` per second, so its counters, queue and compute times and p99 summaries move.
    Prometheus scrapes its /metrics once per service, each target labelled with that
    service's namespace, service and a pod: every service has live Triton series, the same
    ones N times (a tritonserver per kwok pod would need N of them)."""

    def __init__(self, rate: float = LIVE_RATE_RPS, seed: int = 1) -> None:
        self.rate = rate
        self.rng = random.Random(seed)
        self.sent = 0
        self.failed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._load, daemon=True)
        self.server: Any = None

    def start(self) -> LiveTriton:
        from serving_image.local import LocalTriton

        progress("starting a real tritonserver for the live series (sample model, CPU)")
        self.server = LocalTriton.for_service(ROOT / "samples" / "claude-code.yaml").start()
        self._thread.start()
        progress(f"tritonserver ready, metrics on {self.server.metrics_url}; {self.rate}/s load")
        return self

    def _load(self) -> None:
        import numpy as np

        from serving_image.client import RetryPolicy, TritonClient

        policy = RetryPolicy(max_attempts=1, attempt_timeout_s=10.0, total_timeout_s=10.0)
        data = np.ones((1, 8), dtype=np.int32)
        with TritonClient(self.server.grpc_url, "claude_code", policy=policy) as c:
            due = time.monotonic()
            while not self._stop.is_set():
                try:
                    c.infer(data)
                    self.sent += 1
                except Exception:  # counted; the series show failures as Triton does
                    self.failed += 1
                due += self.rng.expovariate(self.rate)
                self._stop.wait(max(0.0, due - time.monotonic()))

    def targets(self, namespace: str, names: Iterable[str]) -> list[ScrapeTarget]:
        address = f"{self.server.host}:{self.server.metrics_port}"
        return [
            ScrapeTarget(address, {"namespace": namespace, "service": n, "pod": f"{n}-live"})
            for n in names
        ]

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=15)
        if self.server is not None:
            self.server.stop()


def live_services(prom: PrometheusServer, namespace: str) -> int:
    """Services of `namespace` whose Triton request counter Prometheus has now."""
    series = f'nv_inference_request_success{{namespace="{namespace}"}}'
    query = urllib.parse.urlencode({"query": f"count(count by (service) ({series}))"})
    with urllib.request.urlopen(f"{prom.url}/api/v1/query?{query}", timeout=10) as r:
        result = json.loads(r.read())["data"]["result"]
    return int(float(result[0]["value"][1])) if result else 0


class Changes(FirstTrue):
    """Counts MODIFIED events of the services in a namespace (each one a change the API
    server stored: a no-op server-side apply changes nothing and sends no event)."""

    def __init__(self, kube: Kube, namespace: str) -> None:
        super().__init__(kube, namespace, GROUP, VERSION, PLURAL, lambda _: False)
        self.modified = 0

    def _listed(self, obj: Mapping[str, Any]) -> None:
        pass

    def _event(self, kind: str, obj: Mapping[str, Any]) -> None:
        if kind == "MODIFIED":
            self.modified += 1

    def count(self) -> int:
        self.stop()
        return self.modified


# --- the operator process --------------------------------------------------------------------


class Operator:
    def __init__(self, kubeconfig: Path, namespace: str, log_dir: Path, **env: str) -> None:
        self.metrics_port = free_port()
        self.health_port = free_port()
        self.log_path = log_dir / f"operator-{namespace}-{int(time.time())}.log"
        self.env = {
            **os.environ,
            "KUBECONFIG": str(kubeconfig),
            "CCS_NAMESPACES": namespace,
            "CCS_LEASE_NAME": f"bench-{namespace}",
            "CCS_LEASE_NAMESPACE": "default",
            "CCS_METRICS_PORT": str(self.metrics_port),
            "CCS_HEALTH_PORT": str(self.health_port),
            "CCS_LOADER_IMAGE": "ccs-model-loader:bench",
            "PYTHONUNBUFFERED": "1",
            **env,
        }
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60) -> Operator:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "ccs_operator.cli", "run"],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"operator exited; log {self.log_path}")
            with contextlib.suppress(OSError, ValueError):
                url = f"http://127.0.0.1:{self.health_port}/healthz"
                with urllib.request.urlopen(url, timeout=2) as r:
                    if json.loads(r.read()).get("role") == "leader":
                        return self
            time.sleep(0.3)
        raise TimeoutError(f"operator not leading in {timeout}s; log {self.log_path}")

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def peak_rss_mb(self, field: str = "VmHWM") -> float:
        """Peak resident memory (VmHWM), or the current one with field="VmRSS"."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def metrics(self) -> dict[str, float]:
        """Flat samples: 'name{sorted labels}' -> value."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as r:
            return flat_samples(r.read().decode())

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


def flat_samples(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}"] = float(s.value)
    return out


def metric_sum(samples: Mapping[str, float], name: str) -> float:
    return sum(v for k, v in samples.items() if k.split("{", 1)[0] == name)


def delta_sum(after: Mapping[str, float], before: Mapping[str, float], name: str) -> float:
    return metric_sum(after, name) - metric_sum(before, name)


def decisions_by_reason(after: Mapping[str, float], before: Mapping[str, float]) -> Counter[str]:
    out: Counter[str] = Counter()
    for key, value in after.items():
        if key.startswith("ccs_floor_decisions_total{"):
            reason = re.search(r"reason=([^,}]+)", key)
            delta = int(value - before.get(key, 0.0))
            if reason and delta:
                out[reason.group(1)] += delta
    return out


def histogram_quantile(
    after: Mapping[str, float], before: Mapping[str, float], name: str, q: float
) -> float:
    """Upper bound of the bucket holding quantile q of the observations between snapshots."""
    buckets: list[tuple[float, float]] = []
    for key, value in after.items():
        if key.startswith(f"{name}_bucket{{"):
            le = re.search(r"le=([^,}]+)", key)
            if le:
                buckets.append((float(le.group(1)), value - before.get(key, 0.0)))
    buckets.sort()
    total = buckets[-1][1] if buckets else 0.0
    if total <= 0:
        return float("nan")
    for bound, count in buckets:
        if count >= q * total:
            return bound
    return float("inf")


def prometheus_queries(prom: PrometheusServer) -> float:
    with urllib.request.urlopen(f"{prom.url}/metrics", timeout=10) as r:
        samples = flat_samples(r.read().decode())
    return sum(
        v
        for k, v in samples.items()
        if k.startswith("prometheus_http_requests_total{")
        and re.search(r"handler=/api/v1/query[,}]", k)
    )


# --- one size ------------------------------------------------------------------------------


@dataclass
class Result:
    n: int
    raw_apply_s: float = 0.0
    raw_p50: float = 0.0
    raw_p99: float = 0.0
    par_p50: float = 0.0
    par_p99: float = 0.0
    idle_reconciles: float = 0.0
    op_apply_s: float = 0.0
    op_p50: float = 0.0
    op_p99: float = 0.0
    cpu_to_ready_s: float = 0.0
    cpu_idle_s: float = 0.0
    peak_rss_mb: float = 0.0
    idle_rss_mb: float = 0.0
    idle_s: float = 0.0
    idle_writes: Counter[str] = field(default_factory=Counter)
    idle_events: int = 0
    idle_apply_requests: float = 0.0
    idle_status_writes: float = 0.0
    idle_status_requests: int = 0
    idle_changes: int = 0
    idle_relists: int = 0
    idle_decisions: Counter[str] = field(default_factory=Counter)
    live_services: int = 0
    intervals: float = 0.0
    prom_queries: float = 0.0
    op_queries: float = 0.0
    lag_mean: float = 0.0
    lag_p99: float = 0.0
    decisions: float = 0.0
    drifted: int = 0
    storm_s: float = 0.0
    storm_writes: Counter[str] = field(default_factory=Counter)
    storm_apply_requests: float = 0.0
    storm_children_changed: float = 0.0
    storm_skipped: float = 0.0
    storm_restored: int = 0
    storm_status_requests: int = 0
    storm_changes: int = 0


def run_size(
    n: int,
    kube: Kube,
    provider: LocalProvider,
    prom: PrometheusServer,
    live: LiveTriton,
    args: argparse.Namespace,
    log_dir: Path,
) -> Result:
    result = Result(n)
    manifests = services_yaml(n)
    run_id = f"{n}-{int(time.time()) % 100000}"

    # 1. Baselines: the rendered children applied raw, serially and in parallel.
    if not args.skip_baseline:
        for mode in ("serial", "parallel"):
            raw_ns = f"scale-{mode[:3]}-{run_id}"
            kube.create_namespace(raw_ns)
            rendered = subprocess.run(
                [sys.executable, "-m", "ccs_operator.cli", "render", "-f", "-", "-n", raw_ns],
                input=manifests,
                capture_output=True,
                text=True,
                check=True,
                cwd=ROOT,
            ).stdout
            watcher = FirstTrue(kube, raw_ns, "apps", "v1", "deployments", deployment_ready).start()
            time.sleep(1)
            progress(f"N={n}: {mode} baseline: server-side apply of {5 * n} rendered children")
            t0 = time.monotonic()
            if mode == "serial":
                kube.kubectl("apply", "--server-side", "-n", raw_ns, "-f", "-", input=rendered)
            else:
                kube.apply_parallel(list(yaml.safe_load_all(rendered)), threads=16)
            apply_s = time.monotonic() - t0
            progress(f"N={n}: {mode} baseline apply returned after {apply_s:.1f}s")
            watcher.wait(n, args.ready_timeout, f"N={n} {mode} baseline")
            watcher.stop()
            times = [t - t0 for t in watcher.times.values()]
            p50, p99 = percentile(times, 50), percentile(times, 99)
            if mode == "serial":
                result.raw_apply_s, result.raw_p50, result.raw_p99 = apply_s, p50, p99
            else:
                result.par_p50, result.par_p99 = p50, p99
            progress(f"N={n}: {mode} baseline p50 {p50:.1f}s p99 {p99:.1f}s")
            gone = kube.delete_namespace(raw_ns)
            progress(f"N={n}: {mode} baseline namespace deleted in {gone:.0f}s")

    # 2. The operator.
    op_ns = f"scale-op-{run_id}"
    kube.create_namespace(op_ns)
    env = {
        "CCS_RESYNC_SECONDS": str(args.resync_seconds),
        "CCS_PROMETHEUS_URL": prom.url,
    }
    operator = Operator(provider.kubeconfig, op_ns, log_dir, **env).start()
    try:
        watcher = FirstTrue(kube, op_ns, GROUP, VERSION, PLURAL, service_ready).start()
        time.sleep(1)
        cpu0 = operator.cpu_seconds()
        progress(f"N={n}: operator: kubectl apply --server-side of {n} ClaudeCodeServices")
        t0 = time.monotonic()
        kube.kubectl("apply", "--server-side", "-n", op_ns, "-f", "-", input=manifests)
        result.op_apply_s = time.monotonic() - t0
        watcher.wait(n, args.ready_timeout, f"N={n} operator")
        watcher.stop()
        times = [t - t0 for t in watcher.times.values()]
        result.op_p50, result.op_p99 = percentile(times, 50), percentile(times, 99)
        result.cpu_to_ready_s = operator.cpu_seconds() - cpu0
        progress(
            f"N={n}: operator p50 {result.op_p50:.1f}s p99 {result.op_p99:.1f}s, "
            f"CPU {result.cpu_to_ready_s:.1f}s, RSS peak {operator.peak_rss_mb():.0f} MB"
        )

        # Live Triton series for every service from here on (one target per service).
        names = [f"svc-{i:04d}" for i in range(n)]
        prom.set_targets(live.targets(op_ns, names))
        deadline = time.monotonic() + 180
        while (seen := live_services(prom, op_ns)) < n and time.monotonic() < deadline:
            time.sleep(2)
        result.live_services = seen
        progress(f"N={n}: live Triton series for {seen}/{n} services; two floor intervals")
        time.sleep(2 * EVAL_INTERVAL_S)

        # 3./4. Idle: settle, then a window spanning at least one full resync.
        # Ready is not idle: kopf's annotation patches, first floor evaluations and status
        # updates may still be in flight. Idle starts once the children and the services
        # (their /status apart: the accounting refreshes go on under live series) have seen
        # no write for 15 s (at most --settle-seconds).
        settle_until = time.monotonic() + args.settle_seconds
        last, quiet_since = child_writes(kube.apiserver_writes()), time.monotonic()
        while time.monotonic() < settle_until and time.monotonic() - quiet_since < 15:
            time.sleep(3)
            now = child_writes(kube.apiserver_writes())
            if now != last:
                last, quiet_since = now, time.monotonic()
        progress(f"N={n}: quiet {time.monotonic() - quiet_since:.0f}s; idle window starts")
        changes = Changes(kube, op_ns)
        changes.start()
        time.sleep(1)  # listed, watching
        api0, op0, prom0, cpu1 = (
            kube.apiserver_writes(),
            operator.metrics(),
            prometheus_queries(prom),
            operator.cpu_seconds(),
        )
        progress(f"N={n}: idle window {args.idle_seconds}s (resync every {args.resync_seconds}s)")
        t_idle = time.monotonic()
        time.sleep(args.idle_seconds)
        result.idle_changes = changes.count()  # before the writes' count: none is missed
        result.idle_relists = changes.relists
        api1, op1, prom1 = kube.apiserver_writes(), operator.metrics(), prometheus_queries(prom)
        result.idle_s = time.monotonic() - t_idle
        result.cpu_idle_s = operator.cpu_seconds() - cpu1
        result.peak_rss_mb = operator.peak_rss_mb()
        result.idle_rss_mb = operator.peak_rss_mb("VmRSS")
        result.idle_writes, result.idle_status_requests = split_writes(api1 - api0)
        result.idle_decisions = decisions_by_reason(op1, op0)
        result.idle_events = events_written(api1 - api0)
        result.idle_apply_requests = delta_sum(op1, op0, "ccs_apply_requests_total")
        result.idle_reconciles = delta_sum(op1, op0, "ccs_reconcile_total")
        result.idle_status_writes = delta_sum(op1, op0, "ccs_status_writes_total")
        # 5. Floor loop over the same window.
        result.intervals = result.idle_s / EVAL_INTERVAL_S
        result.prom_queries = prom1 - prom0
        result.op_queries = delta_sum(op1, op0, "ccs_prometheus_query_duration_seconds_count")
        lag_count = delta_sum(op1, op0, "ccs_floor_evaluation_lag_seconds_count")
        lag_sum = delta_sum(op1, op0, "ccs_floor_evaluation_lag_seconds_sum")
        result.decisions = lag_count
        result.lag_mean = lag_sum / lag_count if lag_count else float("nan")
        result.lag_p99 = histogram_quantile(op1, op0, "ccs_floor_evaluation_lag_seconds", 0.99)
        progress(
            f"N={n}: idle writes {dict(result.idle_writes) or 0}, "
            f"prometheus queries {result.prom_queries:.0f} in {result.intervals:.1f} intervals, "
            f"lag mean {result.lag_mean:.2f}s p99 <= {result.lag_p99}s"
        )

        # 6. Restart storm, with some children drifted while no operator runs.
        operator.stop()
        result.drifted = max(1, round(n * args.drift / 100))
        for i in range(result.drifted):
            kube.kubectl(
                "patch",
                "hpa",
                f"svc-{i:04d}",
                "-n",
                op_ns,
                "--type=merge",
                "-p",
                '{"spec":{"maxReplicas":7}}',
            )
        changes = Changes(kube, op_ns)
        changes.start()
        time.sleep(1)  # listed, watching
        api0 = kube.apiserver_writes()
        operator = Operator(provider.kubeconfig, op_ns, log_dir, **env)
        t_storm = time.monotonic()
        operator.start()
        progress(f"N={n}: restarted the operator after drifting {result.drifted} HPAs")
        # Quiet: every service reconciled at least once, then no apply for 10 s (resync
        # timers keep reconciling; the point is that they write nothing). Status writes are
        # not waited for: with live series the floor's accounting is refreshed every few
        # minutes per service, spread over the period, restart or not.
        last_writes, quiet_since = -1.0, time.monotonic()
        deadline = time.monotonic() + args.ready_timeout
        while time.monotonic() < deadline:
            samples = operator.metrics()
            writes = metric_sum(samples, "ccs_apply_requests_total")
            if writes != last_writes:
                last_writes, quiet_since = writes, time.monotonic()
            elif (
                metric_sum(samples, "ccs_reconcile_total") >= n
                and time.monotonic() - quiet_since >= 10
            ):
                break
            time.sleep(1)
        result.storm_changes = changes.count()
        op1 = operator.metrics()
        api1 = kube.apiserver_writes()
        result.storm_s = time.monotonic() - t_storm
        result.storm_writes, result.storm_status_requests = split_writes(api1 - api0)
        result.storm_apply_requests = metric_sum(op1, "ccs_apply_requests_total")
        result.storm_skipped = metric_sum(op1, "ccs_apply_skipped_total")
        result.storm_children_changed = metric_sum(op1, "ccs_children_applied_total")
        maxes = json.loads(kube.kubectl("get", "hpa", "-n", op_ns, "-o", "json"))["items"]
        result.storm_restored = sum(
            1
            for h in maxes
            if h["metadata"]["name"] < f"svc-{result.drifted:04d}" and h["spec"]["maxReplicas"] == 2
        )
        progress(
            f"N={n}: restart storm {result.storm_s:.0f}s: writes {dict(result.storm_writes)}, "
            f"{result.storm_restored}/{result.drifted} drifted HPAs restored"
        )
    finally:
        prom.set_targets([])
        # Delete while the operator still runs, as a user would.
        if operator.process is None or operator.process.poll() is not None:
            operator = Operator(provider.kubeconfig, op_ns, log_dir, **env).start()
        gone = kube.delete_namespace(op_ns)
        operator.stop()
        progress(f"N={n}: operator namespace deleted in {gone:.0f}s")
    return result


# --- report ----------------------------------------------------------------------------------


def fmt_counter(counts: Counter[str]) -> str:
    if not counts:
        return "0"
    parts = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
    return f"{sum(counts.values())} ({parts})"


def report(
    results: list[Result], args: argparse.Namespace, live: LiveTriton, cmd: str, elapsed: float
) -> str:
    def ratio(op: float, raw: float) -> str:
        return f"**{op / raw:.2f}x**" if raw > 0 else "n/a"

    lines = [
        RESULTS_HEADING,
        "",
        f"Command: `{cmd}` at {commit()}, one run ({elapsed / 60:.0f} min, load average "
        f"{args.load_at_start:.1f} at the start). Method: the docstring of "
        "`bench/scale_bench.py`. Local cluster (real kube-apiserver, etcd, controller-manager, "
        f"scheduler; kwok GPU nodes), {args.unrelated} unrelated Pods and as many ConfigMaps "
        "in another namespace, a real Prometheus, the operator as a process; "
        f"services: `samples/claude-code.yaml` with gpus 1 and replicas 1..2, floor interval "
        f"{EVAL_INTERVAL_S}s. Idle window {args.idle_seconds}s with CCS_RESYNC_SECONDS="
        f"{args.resync_seconds}, so every service's no-op resync falls inside it (the "
        "issue asks for 5 minutes: `--idle-seconds 300` for that; the window only scales "
        "the count of no-op resyncs, which is what must be 0).",
        "",
        "Time to Ready (from the start of the apply of everything; the operator gets one "
        "`kubectl apply --server-side` of the N services):",
        "",
        "| N | serial raw apply: p50 / p99 s | parallel raw apply (16): p50 / p99 s | "
        "operator: p50 / p99 s | p99 vs serial | p99 vs parallel (goal <= 1.5x) | "
        "operator CPU s to Ready | CPU per service | RSS MB peak / idle (goal <= 150 at 1000) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r.n} | {r.raw_p50:.1f} / {r.raw_p99:.1f} | {r.par_p50:.1f} / {r.par_p99:.1f} | "
            f"{r.op_p50:.1f} / {r.op_p99:.1f} | {ratio(r.op_p99, r.raw_p99)} | "
            f"{ratio(r.op_p99, r.par_p99)} | "
            f"{r.cpu_to_ready_s:.1f} | {r.cpu_to_ready_s / r.n * 1000:.0f} ms | "
            f"{r.peak_rss_mb:.0f} / {r.idle_rss_mb:.0f} |"
        )
    sent, failed = live.sent, live.failed
    lines += [
        "",
        "API writes (the API server's `apiserver_request_total`, write verbs on the children: "
        "configmaps, services, deployments, HPAs, servicemonitors, and on claudecodeservices "
        "themselves; the services' /status apart, in the next table; the controllers' own "
        "/status writes on Deployments and HPAs excluded). Live Triton series for every "
        "service throughout. After the restart, services changed counts the MODIFIED events "
        "of the services (the drifted HPAs' restore is not one):",
        "",
        "| N | idle window s | reconciles in it (resyncs ran) | child writes while idle (goal 0) | "
        "operator CPU s idle | restart: children drifted | child writes after the restart (goal: "
        "the drifted only) | status writes after the restart / services changed | "
        "drifted restored | until quiet s |",
        "|---:|---:|---:|---|---:|---:|---|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r.n} | {r.idle_s:.0f} | {r.idle_reconciles:.0f} | {fmt_counter(r.idle_writes)} | "
            f"{r.cpu_idle_s:.1f} | "
            f"{r.drifted} | {fmt_counter(r.storm_writes)} | "
            f"{r.storm_status_requests} / {r.storm_changes} | "
            f"{r.storm_restored}/{r.drifted} | {r.storm_s:.0f} |"
        )
    lines += [
        "",
        "Floor loop over the idle window, on live Triton series: one real tritonserver (the "
        f"sample model on CPU) under Poisson requests at {LIVE_RATE_RPS:g}/s ({sent} answered, "
        f"{failed} failed over the run), scraped by Prometheus every {SCRAPE_INTERVAL} once per "
        "service (N targets, each labelled as that service's pod), so every service's "
        "counters, queue and compute times and p99 summary move. Status writes are the API "
        "server's count on claudecodeservices/status; changes stored are the MODIFIED events "
        "of the services in the same window (a no-op apply stores nothing and sends none):",
        "",
        "| N | services with live series | intervals | Prometheus queries (Prometheus's count) "
        "| (operator's count) | per interval | decisions (by reason) | lag mean s | "
        "lag p99 s (bucket bound) | status writes | changes stored |",
        "|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    for r in results:
        per = r.prom_queries / r.intervals if r.intervals else float("nan")
        lines.append(
            f"| {r.n} | {r.live_services} | {r.intervals:.1f} | {r.prom_queries:.0f} | "
            f"{r.op_queries:.0f} | {per:.2f} | {fmt_counter(r.idle_decisions)} | "
            f"{r.lag_mean:.2f} | {r.lag_p99:g} | {r.idle_status_requests} | {r.idle_changes} |"
        )
    lines += ["", "Goals, each judged on this run:", "", *goal_verdicts(results), ""]
    return "\n".join(lines)


def goal_verdicts(results: list[Result]) -> list[str]:
    """One line per goal clause of the controller issue: met or missed, with the figure."""

    def verdict(ok: bool) -> str:
        return "met" if ok else "**missed**"

    lines = []
    for r in results:
        ratio = r.op_p99 / r.par_p99 if r.par_p99 > 0 else float("nan")
        storm = sum(r.storm_writes.values())
        only_drifted = storm <= r.drifted and r.storm_restored == r.drifted
        lines.append(
            f"- N={r.n}: time to Ready p99 <= 1.5x the parallel raw apply: "
            f"{verdict(ratio <= 1.5)} ({ratio:.2f}x); idle child writes 0: "
            f"{verdict(not r.idle_writes)} ({sum(r.idle_writes.values())}); "
            f"writes after the restart only for the drifted children: "
            f"{verdict(only_drifted)} ({storm} for {r.drifted})"
        )
    biggest = max(results, key=lambda r: r.n)
    if biggest.n >= 1000:
        lines.append(
            f"- RSS <= 150 MB at {biggest.n}: {verdict(biggest.peak_rss_mb <= 150)} "
            f"({biggest.peak_rss_mb:.0f} MB peak)"
        )
    for r in results:
        live = r.live_services == r.n and sum(r.idle_decisions.values()) > 0
        lines.append(
            f"- N={r.n}, live Triton series ({r.live_services}/{r.n} services): "
            f"{verdict(live)}; status writes only on a real change (no more writes than "
            f"changes stored): {verdict(r.idle_status_requests <= r.idle_changes)} "
            f"({r.idle_status_requests} writes, {r.idle_changes} changes"
            + (
                f"; the watch re-listed {r.idle_relists}x, changes may be missed"
                if r.idle_relists
                else ""
            )
            + ")"
        )
    return lines


def ensure_cluster(gpu_nodes: int) -> LocalProvider:
    progress(f"starting (or reusing) the local cluster with {gpu_nodes} GPU nodes")
    subprocess.run(
        [sys.executable, "-m", "e2e", "up", "--gpu-nodes", str(gpu_nodes)],
        check=True,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
    )
    provider = LocalProvider()
    provider.kubectl(
        "apply",
        "--server-side",
        "--force-conflicts",
        "-f",
        str(ROOT / "crds" / "claudecodeservices.yaml"),
    )
    provider.kubectl(
        "wait", "--for=condition=Established", "--timeout=60s", f"crd/{PLURAL}.{GROUP}"
    )
    return provider


def main(argv: Iterable[str] | None = None) -> int:
    argv = list(argv) if argv is not None else sys.argv[1:]
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="100,500,1000", help="comma-separated N")
    p.add_argument("--idle-seconds", type=int, default=60, help="idle window (issue: 300)")
    p.add_argument("--resync-seconds", type=int, default=30, help="operator CCS_RESYNC_SECONDS")
    p.add_argument("--settle-seconds", type=int, default=300, help="max wait for quiet")
    p.add_argument("--drift", type=float, default=2.0, help="percent of HPAs edited while down")
    p.add_argument("--ready-timeout", type=float, default=1200)
    p.add_argument("--skip-baseline", action="store_true")
    p.add_argument(
        "--unrelated", type=int, default=5000, help="unrelated Pods and ConfigMaps (each)"
    )
    p.add_argument("--write", type=Path, help="update this RESULTS.md's section")
    args = p.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    started = time.monotonic()
    args.load_at_start = os.getloadavg()[0]
    provider = ensure_cluster(gpu_nodes=math.ceil(max(sizes) / GPUS_PER_NODE) + 2)
    kube = Kube(provider)
    log_dir = Path(os.environ.get("TMPDIR", "/tmp")) / "ccs-scale-bench"
    log_dir.mkdir(parents=True, exist_ok=True)
    progress(f"operator logs in {log_dir}")
    if args.unrelated:
        unrelated_ns = f"scale-unrelated-{int(time.time()) % 100000}"
        progress(f"creating {args.unrelated} unrelated Pods and ConfigMaps in {unrelated_ns}")
        kube.unrelated_objects(unrelated_ns, args.unrelated)
    results = []
    live = LiveTriton().start()
    try:
        with PrometheusServer(scrape_interval=SCRAPE_INTERVAL) as prom:
            for n in sizes:
                load = os.getloadavg()[0]
                progress(f"N={n}: load average {load:.2f}")
                results.append(run_size(n, kube, provider, prom, live, args, log_dir))
                partial = report(results, args, live, "(partial)", time.monotonic() - started)
                print(partial, flush=True)
    finally:
        live.stop()
    if live.sent == 0:
        raise SystemExit("the live tritonserver answered no request: the live series are not live")
    if args.unrelated:
        kube.delete_namespace(unrelated_ns)
    cmd = "python bench/scale_bench.py" + "".join(f" {a}" for a in argv)
    section = report(results, args, live, cmd, time.monotonic() - started)
    print(section)
    if args.write:
        write_section(args.write, RESULTS_HEADING, section)
        progress(f"wrote {args.write}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
