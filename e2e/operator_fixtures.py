"""Fixtures that run the real operator (`ccs-operator run`) as a process against the cluster.

The session operator watches namespaces named `op-*`; tests that kill or restart an operator
start their own, on `solo-*` namespaces with a lease of their own, so they never share
objects with the session operator.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from e2e.fixtures import Cluster

ROOT = Path(__file__).resolve().parent.parent
CRD_FILE = ROOT / "crds" / "claudecodeservices.yaml"
GROUP, VERSION, PLURAL = "serving.claudecode.io", "v1alpha1", "claudecodeservices"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class OperatorProcess:
    """One `ccs-operator run` process with its own ports, lease and log file."""

    def __init__(
        self, cluster: Cluster, log_dir: Path, namespaces: str, lease: str, **env: str
    ) -> None:
        self.cluster = cluster
        self.log_path = log_dir / f"operator-{lease}-{uuid.uuid4().hex[:4]}.log"
        self.metrics_port = free_port()
        self.health_port = free_port()
        self.env = {
            **os.environ,
            "KUBECONFIG": str(cluster.kubeconfig),
            "CCS_NAMESPACES": namespaces,
            "CCS_LEASE_NAME": lease,
            "CCS_LEASE_NAMESPACE": "default",
            "CCS_METRICS_PORT": str(self.metrics_port),
            "CCS_HEALTH_PORT": str(self.health_port),
            "CCS_LOADER_IMAGE": "ccs-model-loader:test",
            "PYTHONUNBUFFERED": "1",
            **env,
        }
        self.process: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self._stopping = threading.Event()

    def supervise(self) -> OperatorProcess:
        """Restart the process whenever it exits non-zero, as the kubelet does for the
        chart's Deployment (an operator that lost its Lease exits 1 and must come back)."""

        def watch() -> None:
            while not self._stopping.is_set():
                process = self.process
                if process is None:
                    return
                code = process.wait()
                if self._stopping.is_set() or code == 0:
                    return
                time.sleep(1.0)
                if self._stopping.is_set():
                    return
                self.restarts += 1
                with contextlib.suppress(Exception):
                    self.start()

        threading.Thread(target=watch, daemon=True, name="operator-supervisor").start()
        return self

    def start(self) -> OperatorProcess:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "ccs_operator.cli", "run", "--verbose"],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
        log.close()
        self.wait_healthy()
        return self

    def wait_healthy(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        url = f"http://127.0.0.1:{self.health_port}/healthz"
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"operator exited {self.process.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
            time.sleep(0.3)
        raise TimeoutError(f"operator not healthy in {timeout}s:\n{self.log_tail()}")

    def metrics(self) -> str:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            return str(response.read().decode())

    def health(self) -> dict[str, Any]:
        import json

        url = f"http://127.0.0.1:{self.health_port}/healthz"
        with urllib.request.urlopen(url, timeout=5) as response:
            return dict(json.loads(response.read()))

    def log_tail(self, lines: int = 60) -> str:
        if not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def kill(self) -> None:
        """SIGKILL: no cleanup, as when a node dies."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self, timeout: float = 30) -> int | None:
        self._stopping.set()
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        return self.process.returncode


def install_crd(cluster: Cluster) -> None:
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD_FILE))
    cluster.kubectl(
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        f"crd/{PLURAL}.{GROUP}",
    )


@pytest.fixture(scope="session")
def ccs_crd(cluster: Cluster) -> None:
    install_crd(cluster)


@pytest.fixture(scope="session")
def operator_logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("operator-logs")


@pytest.fixture(scope="session")
def operator(cluster: Cluster, ccs_crd: None, operator_logs: Path) -> Iterator[OperatorProcess]:
    """The session's operator, for namespaces named op-*."""
    process = OperatorProcess(
        cluster,
        operator_logs,
        namespaces="op-*",
        lease="ccs-e2e-session",
        CCS_RESYNC_SECONDS="60",
    ).start()
    process.supervise()
    yield process
    process.stop()


@pytest.fixture
def start_operator(
    cluster: Cluster, ccs_crd: None, operator_logs: Path
) -> Iterator[Callable[..., OperatorProcess]]:
    """Start extra operators (for fault tests); all are stopped after the test."""
    started: list[OperatorProcess] = []

    def start(namespaces: str, lease: str | None = None, **env: str) -> OperatorProcess:
        process = OperatorProcess(
            cluster,
            operator_logs,
            namespaces=namespaces,
            lease=lease or f"ccs-e2e-{uuid.uuid4().hex[:6]}",
            **env,
        )
        started.append(process)
        return process.start()

    yield start
    for process in started:
        process.stop()


def _make_namespace(cluster: Cluster, prefix: str) -> Iterator[str]:
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    with cluster.api_client() as api_client:
        core = client.CoreV1Api(api_client)
        core.create_namespace({"metadata": {"name": name, "labels": {"ccs-e2e": "test"}}})
        deadline = time.monotonic() + 60
        while True:
            try:
                core.read_namespaced_service_account("default", name)
                break
            except ApiException as exc:
                if exc.status != 404 or time.monotonic() > deadline:
                    raise
            time.sleep(0.2)
        try:
            yield name
        finally:
            with contextlib.suppress(ApiException):
                core.delete_namespace(name)


@pytest.fixture
def op_namespace(cluster: Cluster, operator: OperatorProcess) -> Iterator[str]:
    """A fresh namespace watched by the session operator."""
    yield from _make_namespace(cluster, "op")


@pytest.fixture
def solo_namespace(cluster: Cluster, ccs_crd: None) -> Iterator[str]:
    """A fresh namespace that only operators started by the test watch."""
    yield from _make_namespace(cluster, "solo")


class Services:
    """Small helpers over the ClaudeCodeService API for tests."""

    def __init__(self, cluster: Cluster, logs: Path | None = None) -> None:
        self.cluster = cluster
        self.logs = logs
        self.api_client = cluster.api_client()
        self.custom = client.CustomObjectsApi(self.api_client)

    def apply(self, namespace: str, body: dict[str, Any]) -> None:
        self.cluster.kubectl(
            "apply", "--server-side", "-n", namespace, "-f", "-", input=yaml.safe_dump(body)
        )

    def get(self, namespace: str, name: str) -> dict[str, Any]:
        return dict(
            self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        )

    def patch(self, namespace: str, name: str, patch: dict[str, Any]) -> None:
        self.cluster.kubectl(
            "patch", "ccs", name, "-n", namespace, "--type=merge", "-p", yaml.safe_dump(patch)
        )

    def wait(
        self,
        namespace: str,
        name: str,
        predicate: Callable[[dict[str, Any]], bool],
        timeout: float = 60,
        what: str = "condition",
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        body: dict[str, Any] = {}
        while time.monotonic() < deadline:
            with contextlib.suppress(ApiException):
                body = self.get(namespace, name)
                if predicate(body):
                    return body
            time.sleep(0.5)
        raise AssertionError(
            f"{namespace}/{name}: {what} not reached in {timeout}s; status: "
            f"{yaml.safe_dump(body.get('status'))}{self._operator_logs()}"
        )

    def _operator_logs(self, lines: int = 40) -> str:
        """The tails of the operator logs written lately, so a failure says why."""
        if self.logs is None:
            return ""
        recent = sorted(self.logs.glob("*.log"), key=lambda p: p.stat().st_mtime)[-2:]
        parts = []
        for path in recent:
            tail = path.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"\n--- {path.name} (last {lines} lines) ---\n" + "\n".join(tail))
        return "".join(parts)

    def wait_ready(self, namespace: str, name: str, timeout: float = 90) -> dict[str, Any]:
        def ready(body: dict[str, Any]) -> bool:
            status = body.get("status") or {}
            return (
                status.get("phase") == "Ready"
                and status.get("observedGeneration") == body["metadata"]["generation"]
            )

        return self.wait(namespace, name, ready, timeout, what="phase Ready")


@pytest.fixture
def services(cluster: Cluster, operator_logs: Path) -> Iterator[Services]:
    helper = Services(cluster, operator_logs)
    yield helper
    helper.api_client.close()


def condition(body: dict[str, Any], type_: str) -> dict[str, Any] | None:
    for item in (body.get("status") or {}).get("conditions") or ():
        if item["type"] == type_:
            return dict(item)
    return None


def admins_network_policy(name: str, namespace: str) -> dict[str, Any]:
    """A NetworkPolicy the namespace's admin made: no owner, not the operator's label."""
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress"]},
    }


def sample(name: str, **spec: Any) -> dict[str, Any]:
    """The write-up's service, sized to fit the fake GPU nodes, with overrides."""
    body = yaml.safe_load((ROOT / "samples" / "claude-code.yaml").read_text())
    body["metadata"] = {"name": name}
    for key, value in spec.items():
        body["spec"][key] = value
    return dict(body)
