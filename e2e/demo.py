"""`python -m e2e demo`: the product doing its job on this machine, from nothing.

Steps, each announced on stderr: build (first run only) and start the local control plane
with fake GPU nodes and its pod network; the CRD; prometheus-operator and Prometheus;
prometheus-adapter for the HPA's requests-per-second metric; the operator (`ccs-operator
run`, detached, pid file and log in the cluster's state dir); samples/claude-code.yaml with
the local changes it prints as LOCAL ONLY (its pods on the Triton-backed nodes, a real CPU
tritonserver behind each, the HPA on requests per second only); then a bounded load through the
Service's endpoints while a live table shows READY, FLOOR and QUEUE-P99 move, until the
floor is back at its minimum. It ends with `kubectl get ccs`, the children and where to look
next. `python -m e2e down` stops it all. Exit status 1 when the floor never rose.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from e2e import kwok, loadgen, podserving, procs
from e2e.adapter import NAME as ADAPTER
from e2e.adapter import AdapterStack
from e2e.localcluster import LocalCluster
from e2e.monitoring import MonitoringStack
from e2e.prometheus import free_port

ROOT = Path(__file__).resolve().parent.parent
CRD_FILE = ROOT / "crds" / "claudecodeservices.yaml"
SAMPLE = ROOT / "samples" / "claude-code.yaml"
DASHBOARD = ROOT / "chart" / "ccs-operator" / "dashboards" / "ccs-overview.json"
# The demo operator watches only this namespace, so the test suite's own operators (on
# namespaces of their own) can share the cluster with a demo left running.
DEMO_NAMESPACE = "ccs-demo"
READY_TIMEOUT_S = 180.0
# Four HPA syncs: long enough for one good read of the external metric after a failed one.
HPA_METRIC_WAIT_S = 60.0


class DemoError(RuntimeError):
    """A demo step failed; the message says which and where its log is."""


def _say(message: str) -> None:
    print(f"[demo] {message}", file=sys.stderr, flush=True)


class DemoOperator:
    """`ccs-operator run` detached from the shell, found again through its pid file."""

    def __init__(self, cluster: LocalCluster) -> None:
        self.cluster = cluster
        self.pidfile = cluster.state_dir / "run" / "ccs-operator.pid"
        self.log = cluster.state_dir / "logs" / "ccs-operator.log"
        # Where its metrics and health endpoints listen, for a person looking around.
        self.ports_file = cluster.state_dir / "run" / "ccs-operator.ports.json"

    def pid(self) -> int | None:
        """The live operator's pid; a stale file (reboot, crash) is removed."""
        try:
            pid = int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return None
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            argv = []
        if procs.alive(pid) and b"ccs_operator.cli" in argv and b"run" in argv:
            return pid
        self.pidfile.unlink(missing_ok=True)
        return None

    def start(self, prometheus_url: str) -> None:
        if self.pid() is not None:
            _say(f"operator already running (pid {self.pid()}), log: {self.log}")
            return
        ports = {"metrics": free_port(), "health": free_port()}
        self.ports_file.parent.mkdir(parents=True, exist_ok=True)
        self.ports_file.write_text(json.dumps(ports) + "\n")
        env = {
            **os.environ,
            "KUBECONFIG": str(self.cluster.kubeconfig),
            "CCS_METRICS_PORT": str(ports["metrics"]),
            "CCS_HEALTH_PORT": str(ports["health"]),
            "CCS_NAMESPACES": DEMO_NAMESPACE,
            "CCS_LEASE_NAMESPACE": DEMO_NAMESPACE,
            "CCS_PROMETHEUS_URL": prometheus_url,
            "PYTHONUNBUFFERED": "1",
        }
        argv = [sys.executable, "-m", "ccs_operator.cli", "run"]
        # Detached like the cluster's own processes, so it outlives this command.
        process = procs.start(argv, self.pidfile, self.log, ROOT, env)
        self._wait_healthy(process, ports["health"])
        _say(f"operator running (pid {process.pid}), log: {self.log}")

    def _wait_healthy(self, process: subprocess.Popen[bytes], port: int) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise DemoError(f"the operator exited ({process.returncode}); see {self.log}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2):
                    return
            except OSError:
                time.sleep(0.3)
        raise DemoError(f"the operator did not become healthy in 60s; see {self.log}")

    def stop(self) -> bool:
        pid = self.pid()
        if pid is None:
            return False
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while procs.alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if procs.alive(pid):
            os.kill(pid, signal.SIGKILL)
        self.pidfile.unlink(missing_ok=True)
        return True


def shutdown(cluster: LocalCluster) -> list[str]:
    """Stop the demo operator, the monitoring stack and the cluster's processes (what
    `python -m e2e down` does); the state stays, so `up` or the demo starts it again.
    Returns what was stopped."""
    stopped = []
    if DemoOperator(cluster).stop():
        print("[e2e] stopped the demo operator", file=sys.stderr, flush=True)
        stopped.append("demo operator")
    monitoring = MonitoringStack(cluster)
    stopped += stop_adapter(cluster, monitoring)
    monitoring.down()
    return stopped + cluster.down()


def stop_adapter(cluster: LocalCluster, monitoring: MonitoringStack) -> list[str]:
    """Stop the demo's prometheus-adapter and remove its APIService, so a cluster shared
    with the test suite serves no external metrics nobody asked for."""
    adapter = AdapterStack(cluster, monitoring)
    if procs.read_pid(adapter.pidfile, ADAPTER) is None:
        return []
    return adapter.down()


def _kubectl(cluster: LocalCluster, *args: str, check: bool = True) -> str:
    argv = [str(cluster.bin_path() / "kubectl"), f"--kubeconfig={cluster.kubeconfig}", *args]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    if check and done.returncode != 0:
        raise DemoError(f"kubectl {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout


def _wait_ready(cluster: LocalCluster, name: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    last = ""
    while time.monotonic() < deadline:
        out = _kubectl(cluster, "-n", DEMO_NAMESPACE, "get", "ccs", name, "-o", "json")
        status = json.loads(out).get("status") or {}
        phase = status.get("phase", "")
        if phase != last:
            _say(f"ccs/{name} phase: {phase or '(not yet reconciled)'}")
            last = phase
        if phase == "Ready":
            return
        time.sleep(1)
    raise DemoError(
        f"ccs/{name} not Ready in {READY_TIMEOUT_S:.0f}s; `kubectl describe ccs {name}` says why"
    )


# What differs locally from the sample, applied on top of it and printed as LOCAL ONLY.
# Pods land on the Triton-backed nodes (real tritonserver on CPU behind each pod); the floor
# evaluates and cools down faster so the whole loop fits in a few minutes; the sample model
# costs per batch what makes a few replicas' worth of load fit on a small CPU.
DEMO_FLOOR = {"evaluationIntervalSeconds": 10, "cooldownSeconds": 45}
DEMO_MODEL_COST = {"CCS_SAMPLE_BATCH_COST_MS": "40", "CCS_SAMPLE_ITEM_COST_MS": "60"}
DEMO_MAX_TRITONS = 6
# Requests/s over time (seconds): a ramp past two replicas' capacity, a plateau, then none.
DEMO_PROFILE = "0:4,40:45,100:45,101:0"
DEMO_SEQ_LEN = 1
AFTER_LOAD_S = 150.0
VIEW_EVERY_S = 5.0


def demo_manifest() -> tuple[dict[str, Any], list[str]]:
    """The sample as applied locally, and what was changed (the LOCAL ONLY lines)."""
    import yaml

    body: dict[str, Any] = yaml.safe_load(SAMPLE.read_text())
    spec = body["spec"]
    placement = kwok.serving_placement()
    spec["nodeSelector"] = {**spec.get("nodeSelector", {}), **placement["nodeSelector"]}
    spec["tolerations"] = [*spec.get("tolerations", []), *placement["tolerations"]]
    autoscaling = spec.setdefault("autoscaling", {})
    cpu_target = autoscaling.get("cpuUtilization")
    autoscaling["cpuUtilization"] = 0
    floor = autoscaling.setdefault("floor", {})
    before = {k: floor.get(k) for k in DEMO_FLOOR}
    floor.update(DEMO_FLOOR)
    notes = [
        f"autoscaling cpuUtilization {cpu_target} -> 0: the HPA scales on requests per second "
        "(served by prometheus-adapter); no metrics-server runs here, and a CPU metric the HPA "
        "cannot read would keep it from ever scaling down",
        "pods are placed on the Triton-backed fake GPU nodes (nodeSelector and toleration "
        f"{kwok.SERVING_LABEL}={kwok.SERVING_VALUE}); each pod is a real tritonserver on CPU",
        f"floor evaluationIntervalSeconds/cooldownSeconds {before['evaluationIntervalSeconds']}/"
        f"{before['cooldownSeconds']} -> {DEMO_FLOOR['evaluationIntervalSeconds']}/"
        f"{DEMO_FLOOR['cooldownSeconds']}, so the loop fits in a few minutes",
        "the sample model costs "
        f"{DEMO_MODEL_COST['CCS_SAMPLE_BATCH_COST_MS']} ms per batch + "
        f"{DEMO_MODEL_COST['CCS_SAMPLE_ITEM_COST_MS']} ms per request (a stand-in for GPU time)",
    ]
    from ccs_operator.core.api import parse_service
    from serving_image.local import local_model_config, local_repository

    ccs = parse_service({**body, "metadata": {"name": body["metadata"]["name"]}})
    notes += local_model_config(ccs)[1] + local_repository(ccs, None)[1]
    return body, notes


class LoadProcess:
    """e2e.loadgen inside the pod network, its per-second lines read in the background."""

    def __init__(self, cluster: LocalCluster, name: str) -> None:
        argv = cluster.exec_argv(
            loadgen.command(
                cluster.state_dir, DEMO_NAMESPACE, name, DEMO_PROFILE, f"--seq-len={DEMO_SEQ_LEN}"
            )
        )
        env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig)}
        self.process = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT
        )
        self.last: dict[str, Any] = {}
        self.summary: dict[str, Any] | None = None
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with contextlib.suppress(ValueError):
                item = json.loads(line)
                if "summary" in item:
                    self.summary = item["summary"]
                else:
                    self.last = item

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        if self.running:
            self.process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=10)
        self._reader.join(timeout=5)


def _view_line(elapsed: float, load: LoadProcess, body: dict[str, Any]) -> str:
    status = body.get("status") or {}
    queue = status.get("queueLatencyMs")
    rate = load.last.get("rate") if load.running else 0
    served = load.last.get("ok", 0) if load.running else 0
    queue_text = f"{queue}ms" if queue is not None else "-"
    return (
        f"{elapsed:6.0f}s  {rate if rate is not None else 0:>6}  {served:>6}  "
        f"{status.get('readyReplicas', 0):>5}  {status.get('floor', '-'):>5}  "
        f"{queue_text:>9}  {status.get('phase', '-')}"
    )


def run_demo(cluster: LocalCluster) -> int:
    started = time.monotonic()
    _say(
        "step 1/7: local control plane (kube-apiserver, etcd, controller-manager, scheduler, "
        "kwok GPU nodes) and its pod network; the first run builds them from source"
    )
    kubeconfig = cluster.up()
    if not cluster.serving_enabled():
        raise DemoError(
            "the demo runs a real Triton behind each pod inside a network namespace: run it "
            "as root (ip netns)"
        )
    podserving.write_settings(cluster.state_dir, max_tritons=DEMO_MAX_TRITONS, env=DEMO_MODEL_COST)
    _say("step 2/7: install the ClaudeCodeService CRD")
    _kubectl(cluster, "apply", "--server-side", "--force-conflicts", "-f", str(CRD_FILE))
    _kubectl(
        cluster,
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/claudecodeservices.serving.claudecode.io",
    )
    if DEMO_NAMESPACE not in _kubectl(cluster, "get", "namespaces", "-o", "name"):
        _kubectl(cluster, "create", "namespace", DEMO_NAMESPACE)
    _say(
        "step 3/7: monitoring: prometheus-operator (built from its Go module) and Prometheus, "
        "which scrapes only what the operator's ServiceMonitors select"
    )
    stack = MonitoringStack(cluster).up()
    _say(
        "step 3/7: prometheus-adapter (built from its Go module) serves the HPA's "
        "requests-per-second metric from Prometheus, with the chart's rules"
    )
    AdapterStack(cluster, stack).up()
    _say(
        f"step 4/7: start the operator (ccs-operator run, namespace {DEMO_NAMESPACE}, "
        f"Prometheus {stack.url})"
    )
    DemoOperator(cluster).start(stack.url)
    body, notes = demo_manifest()
    name = str(body["metadata"]["name"])
    _say(f"step 5/7: kubectl apply -f {SAMPLE.relative_to(ROOT)} (with the local changes below)")
    for note in notes:
        _say(f"LOCAL ONLY: {note}")
    import yaml

    sys.stderr.write(
        _kubectl_input(cluster, yaml.safe_dump(body), "-n", DEMO_NAMESPACE, "apply", "-f", "-")
    )
    _say(f"step 6/7: wait for ccs/{name} to be Ready, its Tritons serving and scraped")
    _wait_ready(cluster, name)
    _wait_metrics(cluster, name)
    _say(
        f"step 7/7: load through the Service's endpoints ({DEMO_PROFILE} as seconds:requests/s, "
        f"then none); the floor must rise before the queue wait passes its target, and step "
        f"down after the load ends"
    )
    print(
        f"{'time':>7}  {'load/s':>6}  {'done/s':>6}  {'READY':>5}  {'FLOOR':>5}  "
        f"{'QUEUE-P99':>9}  PHASE",
        flush=True,
    )
    load = LoadProcess(cluster, name)
    min_floor = int(body["spec"]["replicas"]["min"])
    peak_floor = 0
    load_ended_at: float | None = None
    try:
        while True:
            now = time.monotonic()
            status = _ccs(cluster, name)
            floor = int((status.get("status") or {}).get("floor") or 0)
            peak_floor = max(peak_floor, floor)
            print(_view_line(now - started, load, status), flush=True)
            if not load.running and load_ended_at is None:
                load_ended_at = now
                _say("load ended; waiting for the floor to step down after its cool-down")
            if load_ended_at is not None and (
                floor <= min_floor or now - load_ended_at > AFTER_LOAD_S
            ):
                break
            time.sleep(VIEW_EVERY_S)
    finally:
        load.stop()
    summary = load.summary or {}
    _say(
        f"load: {summary.get('ok', 0)} requests served, {summary.get('failed', 0)} failed, "
        f"p99 {summary.get('p99_ms') or 0:.0f} ms; floor peaked at {peak_floor} "
        f"(spec min {min_floor})"
    )
    _say(f"done in {time.monotonic() - started:.0f}s")
    _wait_hpa_reads_its_metric(cluster, name)
    print(f"$ kubectl -n {DEMO_NAMESPACE} get ccs")
    print(_kubectl(cluster, "-n", DEMO_NAMESPACE, "get", "ccs"))
    selector = f"app.kubernetes.io/instance={name}"
    kinds = "deployment,configmap,service,hpa,pods,servicemonitor"
    print(f"$ kubectl -n {DEMO_NAMESPACE} get {kinds} -l {selector}")
    print(_kubectl(cluster, "-n", DEMO_NAMESPACE, "get", kinds, "-l", selector, "-o", "wide"))
    print(f"export KUBECONFIG={kubeconfig}")
    print(f"kubectl -n {DEMO_NAMESPACE} describe ccs {name}   # conditions, floor, its accounting")
    print(f"Prometheus: {stack.url}  (try: nv_inference_queue_duration_us, ccs_floor_replicas)")
    print(f"Grafana dashboard: {DASHBOARD.relative_to(ROOT)}")
    print(
        "more load: python -m e2e exec -- python -m e2e.loadgen -n "
        f"{DEMO_NAMESPACE} -s {name} --profile 0:10,60:40"
    )
    print("stop everything with: python -m e2e down")
    return 0 if peak_floor > min_floor else 1


def _ccs(cluster: LocalCluster, name: str) -> dict[str, Any]:
    out = _kubectl(cluster, "-n", DEMO_NAMESPACE, "get", "ccs", name, "-o", "json", check=False)
    try:
        return dict(json.loads(out))
    except ValueError:
        return {}


def _wait_metrics(cluster: LocalCluster, name: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        for item in (_ccs(cluster, name).get("status") or {}).get("conditions") or []:
            # The floor evaluates only on Triton's series, which reach Prometheus solely
            # through the operator's ServiceMonitor.
            if item.get("type") == "FloorControllerActive" and item.get("status") == "True":
                _say(
                    "Triton's series reach Prometheus through the operator's ServiceMonitor; "
                    "the floor is evaluating"
                )
                return
        time.sleep(1)
    raise DemoError(
        f"ccs/{name} has no FloorControllerActive=True after {READY_TIMEOUT_S:.0f}s; "
        f"`kubectl -n {DEMO_NAMESPACE} describe ccs {name}` says why"
    )


def _wait_hpa_reads_its_metric(cluster: LocalCluster, name: str) -> None:
    """The final listing shows what the HPA last read. One failed fetch of the external
    metric (prometheus-adapter answering "no metrics returned" while pods come and go) leaves
    `<unknown>` in its status until the next 15 s sync, so wait a few syncs for a good one;
    if none comes, say why (the HPA's own condition) and list anyway."""
    deadline = time.monotonic() + HPA_METRIC_WAIT_S
    message = ""
    while time.monotonic() < deadline:
        out = _kubectl(cluster, "-n", DEMO_NAMESPACE, "get", "hpa", name, "-o", "json", check=False)
        try:
            conditions = (json.loads(out).get("status") or {}).get("conditions") or []
        except ValueError:
            conditions = []
        for item in conditions:
            if item.get("type") == "ScalingActive":
                if item.get("status") == "True":
                    return
                message = item.get("message", "")
        time.sleep(2)
    _say(f"the HPA cannot read its metric: {message or 'no ScalingActive condition'}")


def _kubectl_input(cluster: LocalCluster, text: str, *args: str) -> str:
    argv = [str(cluster.bin_path() / "kubectl"), f"--kubeconfig={cluster.kubeconfig}", *args]
    done = subprocess.run(
        argv, input=text, capture_output=True, text=True, timeout=120, check=False
    )
    if done.returncode != 0:
        raise DemoError(f"kubectl {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout


def _sample_name() -> str:
    import yaml

    return str(yaml.safe_load(SAMPLE.read_text())["metadata"]["name"])
