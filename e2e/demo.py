"""`python -m e2e demo`: the whole product on this machine, from nothing to `kubectl get ccs`.

Steps, each announced on stderr: build (first run only) and start the local control plane
with fake GPU nodes, install the CRD, start `ccs-operator run` as a background process
(pid file and log in the cluster's state dir, reused when already running), apply
samples/claude-code.yaml, wait for the service to report Ready, and print `kubectl get ccs`
with the children the operator made. `python -m e2e down` stops the operator and the cluster.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from e2e import procs
from e2e.localcluster import LocalCluster
from e2e.prometheus import free_port

ROOT = Path(__file__).resolve().parent.parent
CRD_FILE = ROOT / "crds" / "claudecodeservices.yaml"
SAMPLE = ROOT / "samples" / "claude-code.yaml"
# The demo operator watches only this namespace, so the test suite's own operators (on
# namespaces of their own) can share the cluster with a demo left running.
DEMO_NAMESPACE = "ccs-demo"
READY_TIMEOUT_S = 180.0


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

    def start(self) -> None:
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


def run_demo(cluster: LocalCluster) -> int:
    started = time.monotonic()
    _say(
        "step 1/5: local control plane (kube-apiserver, etcd, controller-manager, scheduler, "
        "kwok GPU nodes); the first run builds them from source"
    )
    kubeconfig = cluster.up()
    _say("step 2/5: install the ClaudeCodeService CRD")
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
    _say(f"step 3/5: start the operator (ccs-operator run, watching namespace {DEMO_NAMESPACE})")
    DemoOperator(cluster).start()
    _say(f"step 4/5: kubectl apply -f {SAMPLE.relative_to(ROOT)}")
    sys.stderr.write(_kubectl(cluster, "-n", DEMO_NAMESPACE, "apply", "-f", str(SAMPLE)))
    name = str(_sample_name())
    _say(f"step 5/5: wait for ccs/{name} to be Ready")
    _wait_ready(cluster, name)
    _say(f"done in {time.monotonic() - started:.0f}s")
    print(f"$ kubectl -n {DEMO_NAMESPACE} get ccs")
    print(_kubectl(cluster, "-n", DEMO_NAMESPACE, "get", "ccs"))
    selector = f"app.kubernetes.io/instance={name}"
    kinds = "deployment,configmap,service,hpa,pods"
    if "servicemonitors" in _kubectl(cluster, "api-resources", "-o", "name", check=False):
        kinds += ",servicemonitor"
    print(f"$ kubectl -n {DEMO_NAMESPACE} get {kinds} -l {selector}")
    print(_kubectl(cluster, "-n", DEMO_NAMESPACE, "get", kinds, "-l", selector))
    print(f"export KUBECONFIG={kubeconfig}")
    print(f"kubectl -n {DEMO_NAMESPACE} describe ccs {name}   # conditions, floor and events")
    print("stop everything with: python -m e2e down")
    return 0


def _sample_name() -> str:
    import yaml

    return str(yaml.safe_load(SAMPLE.read_text())["metadata"]["name"])
