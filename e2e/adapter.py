"""prometheus-adapter on the local cluster: `external.metrics.k8s.io` served from the real
Prometheus, with the chart's own rules.

The adapter is built from its Go module (e2e/toolchain/adapter) and runs as a cluster's
aggregated API server does, with the pieces a production install has:

- a Pod `monitoring/prometheus-adapter` on a CPU node: kwok gives it an address in the pod
  network and the Service `monitoring/prometheus-adapter` (port 443 -> https 6443) selects
  it, so its EndpointSlice is written by the real controller; the adapter process runs
  inside the pod network bound to that address (as e2e.podserving does for Tritons);
- the APIService `v1beta1.external.metrics.k8s.io` pointing at that Service, with the
  cluster CA as caBundle (the adapter serves a certificate for
  prometheus-adapter.monitoring.svc signed by it). The API server reaches the endpoint
  through its egress selector (e2e.egress), the aggregation layer's front-proxy client
  certificate identifies it, and the adapter checks that against the requestheader CA the
  API server publishes in kube-system/extension-apiserver-authentication;
- the adapter's own identity, a client certificate of user `prometheus-adapter`, bound to
  upstream's ClusterRole from the module's deploy/manifests, to system:auth-delegator and to
  extension-apiserver-authentication-reader (as upstream's manifests bind them);
- `--config` is the chart's chart/ccs-operator/adapter/prometheus-adapter-rules.yaml, the
  one file users install; `--prometheus-url` is the monitoring stack's Prometheus.

Only one component may own external.metrics.k8s.io: `up` refuses an APIService it did not
make, and `down` deletes the APIService first, then the rest.

    stack = AdapterStack(cluster, monitoring)   # a LocalCluster, an e2e.monitoring stack
    stack.up(); ...; stack.down()

Log: <state>/logs/prometheus-adapter.log; files in <state>/adapter/.
"""

from __future__ import annotations

import base64
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from e2e import kubeconfig, kwok, procs
from e2e.localcluster import LocalCluster
from e2e.monitoring import MonitoringStack
from e2e.netns import PodNetwork
from e2e.paths import REPO_ROOT
from e2e.pki import ensure_leaf, ensure_pki
from e2e.toolchain import PROMETHEUS_ADAPTER, ensure_built, module_dir

NAMESPACE = "monitoring"
NAME = "prometheus-adapter"
USER = "prometheus-adapter"
PORT = 6443
GROUP = "external.metrics.k8s.io"
VERSION = "v1beta1"
API_SERVICE = f"{VERSION}.{GROUP}"
FIELD_MANAGER = "ccs-e2e-adapter"
MANAGED_BY = ("app.kubernetes.io/managed-by", FIELD_MANAGER)
RULES = REPO_ROOT / "chart" / "ccs-operator" / "adapter" / "prometheus-adapter-rules.yaml"
READY_TIMEOUT_S = 120.0
LABELS = {"app.kubernetes.io/name": NAME, MANAGED_BY[0]: MANAGED_BY[1]}


class AdapterError(RuntimeError):
    """The adapter cannot be set up; the message names its log or the object in the way."""


def _log(message: str) -> None:
    print(f"[e2e adapter] {message}", file=sys.stderr, flush=True)


def api_service(ca_bundle: bytes) -> dict[str, Any]:
    return {
        "apiVersion": "apiregistration.k8s.io/v1",
        "kind": "APIService",
        "metadata": {"name": API_SERVICE, "labels": LABELS},
        "spec": {
            "group": GROUP,
            "version": VERSION,
            "service": {"name": NAME, "namespace": NAMESPACE, "port": 443},
            "caBundle": base64.b64encode(ca_bundle).decode(),
            "groupPriorityMinimum": 100,
            "versionPriority": 100,
        },
    }


def _binding(
    kind: str, name: str, role_kind: str, role: str, namespace: str | None = None
) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "labels": LABELS}
    if namespace:
        metadata["namespace"] = namespace
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": kind,
        "metadata": metadata,
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": role},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": USER}],
    }


class AdapterStack:
    def __init__(
        self,
        cluster: LocalCluster,
        monitoring: MonitoringStack,
        *,
        rules: Path = RULES,
        relist_interval: str = "5s",
    ) -> None:
        self.cluster = cluster
        self.monitoring = monitoring
        self.rules = rules
        self.relist_interval = relist_interval
        self.network = PodNetwork.for_state_dir(cluster.state_dir)
        self.dir = cluster.state_dir / "adapter"
        self.pidfile = cluster.state_dir / "run" / f"{NAME}.pid"
        self.log = cluster.state_dir / "logs" / f"{NAME}.log"

    @property
    def kubeconfig(self) -> Path:
        return self.dir / "adapter.kubeconfig"

    # --- objects ----------------------------------------------------------------------------
    def _rbac(self) -> list[dict[str, Any]]:
        manifests = module_dir("adapter", PROMETHEUS_ADAPTER) / "deploy" / "manifests"
        role = yaml.safe_load((manifests / "cluster-role.yaml").read_text())
        role["metadata"]["labels"] = {**role["metadata"].get("labels", {}), **LABELS}
        return [
            role,
            _binding(
                "ClusterRoleBinding", f"ccs-e2e-{USER}", "ClusterRole", role["metadata"]["name"]
            ),
            _binding(
                "ClusterRoleBinding",
                f"ccs-e2e-{USER}:auth-delegator",
                "ClusterRole",
                "system:auth-delegator",
            ),
            _binding(
                "RoleBinding",
                f"ccs-e2e-{USER}-auth-reader",
                "Role",
                "extension-apiserver-authentication-reader",
                "kube-system",
            ),
        ]

    def _workload(self) -> list[dict[str, Any]]:
        """The Pod kwok gives an address to and the Service the APIService points at."""
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": NAME,
                "namespace": NAMESPACE,
                "labels": LABELS,
                # Ready as soon as it runs, whatever cold start the cluster simulates.
                "annotations": {kwok.POD_READY_DELAY_ANNOTATION: "0s"},
            },
            "spec": {
                "nodeName": "cpu-node-0",
                "containers": [
                    {
                        "name": NAME,
                        "image": "registry.k8s.io/prometheus-adapter/prometheus-adapter:v0.12.0",
                        "ports": [{"name": "https", "containerPort": PORT}],
                    }
                ],
            },
        }
        service = {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": NAME, "namespace": NAMESPACE, "labels": LABELS},
            "spec": {
                "selector": LABELS,
                "ports": [{"name": "https", "port": 443, "targetPort": "https"}],
            },
        }
        return [pod, service]

    def _apply(self, objects: list[dict[str, Any]]) -> None:
        problem = self.cluster.apply(objects, FIELD_MANAGER)
        if problem is not None:
            raise AdapterError(f"kubectl apply failed: {problem}")

    def _check_owner(self, api: client.ApiregistrationV1Api) -> None:
        try:
            found = api.read_api_service(API_SERVICE)
        except ApiException as exc:
            if exc.status == 404:
                return
            raise
        labels = found.metadata.labels or {}
        if labels.get(MANAGED_BY[0]) != MANAGED_BY[1]:
            service = found.spec.service
            where = f"{service.namespace}/{service.name}" if service else "the API server"
            raise AdapterError(
                f"APIService {API_SERVICE} already exists and points at {where}: another "
                "component owns external.metrics.k8s.io; remove it first"
            )

    # --- lifecycle ----------------------------------------------------------------------------
    def up(self, timeout: float = READY_TIMEOUT_S) -> AdapterStack:
        why = PodNetwork.supported()
        if why is not None:
            raise AdapterError(f"the adapter runs in the cluster's pod network: {why}")
        binary = ensure_built((NAME,)) / NAME
        self.dir.mkdir(parents=True, exist_ok=True)
        pki_dir = self.cluster.state_dir / "pki"
        pki = ensure_pki(pki_dir)
        serving = ensure_leaf(
            pki_dir,
            "adapter-serving",
            pki.ca,
            f"{NAME}.{NAMESPACE}.svc",
            server=True,
            dns_names=(f"{NAME}.{NAMESPACE}.svc", f"{NAME}.{NAMESPACE}.svc.cluster.local"),
        )
        identity = ensure_leaf(pki_dir, f"client-{USER}", pki.ca, USER)
        server = self.cluster.server
        kubeconfig.write(self.kubeconfig, server, pki.ca.cert, identity, USER)
        self.network.ensure()
        self.network.bridge_in(int(server.rsplit(":", 1)[1]))
        with self.cluster.api_client() as api_client:
            registration = client.ApiregistrationV1Api(api_client)
            self._check_owner(registration)
            self._apply(
                [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}]
            )
            self._apply(self._rbac() + self._workload())
            ip = self._wait_pod_ip(client.CoreV1Api(api_client), timeout)
            pid = self._ensure_process(binary, ip, serving.cert, serving.key)
            self._apply([api_service(pki.ca.cert.read_bytes())])
            self._wait(lambda: self._available(registration), timeout, "APIService Available", pid)
        _log(f"{API_SERVICE} served by prometheus-adapter on {ip}:{PORT} (rules: {self.rules})")
        return self

    def down(self) -> list[str]:
        stopped = []
        with self.cluster.api_client() as api_client:
            registration = client.ApiregistrationV1Api(api_client)
            try:
                found = registration.read_api_service(API_SERVICE)
                if (found.metadata.labels or {}).get(MANAGED_BY[0]) == MANAGED_BY[1]:
                    registration.delete_api_service(API_SERVICE)
                    stopped.append(f"APIService {API_SERVICE}")
            except ApiException as exc:
                if exc.status != 404:
                    raise
            core = client.CoreV1Api(api_client)
            for delete in (core.delete_namespaced_pod, core.delete_namespaced_service):
                try:
                    delete(NAME, NAMESPACE, grace_period_seconds=0)
                except ApiException as exc:
                    if exc.status != 404:
                        raise
        if procs.stop(self.pidfile, NAME):
            stopped.append(NAME)
        for what in stopped:
            _log(f"removed {what}")
        return stopped

    def __enter__(self) -> AdapterStack:
        try:
            return self.up()
        except BaseException:
            self.down()  # a half-made APIService must not outlive the failure
            raise

    def __exit__(self, *_: object) -> None:
        self.down()

    # --- pieces -------------------------------------------------------------------------------
    def _wait_pod_ip(self, core: client.CoreV1Api, timeout: float) -> str:
        found: list[str] = []

        def assigned() -> bool:
            pod = core.read_namespaced_pod(NAME, NAMESPACE)
            ready = any(
                c.type == "Ready" and c.status == "True" for c in pod.status.conditions or ()
            )
            if pod.status.pod_ip and ready:
                found.append(pod.status.pod_ip)
            return bool(found)

        self._wait(assigned, timeout, f"an address for Pod {NAMESPACE}/{NAME} (kwok)")
        return found[0]

    def _ensure_process(self, binary: Path, ip: str, cert: Path, key: Path) -> int:
        pid = procs.read_pid(self.pidfile, NAME)
        argv = self.network.wrap(
            [
                str(binary),
                f"--bind-address={ip}",
                f"--secure-port={PORT}",
                f"--cert-dir={self.dir / 'certs'}",
                f"--tls-cert-file={cert}",
                f"--tls-private-key-file={key}",
                f"--lister-kubeconfig={self.kubeconfig}",
                f"--authentication-kubeconfig={self.kubeconfig}",
                f"--authorization-kubeconfig={self.kubeconfig}",
                # Inside the pod network Prometheus listens on the same loopback port.
                f"--prometheus-url=http://127.0.0.1:{self.monitoring.port}/",
                f"--config={self.rules}",
                f"--metrics-relist-interval={self.relist_interval}",
                "--v=2",
            ]
        )
        if pid is not None and f"--bind-address={ip}" in procs.cmdline(pid):
            return pid
        if pid is not None:
            procs.stop(self.pidfile, NAME)
        _log(f"starting {NAME} in {self.network.name} on {ip}:{PORT} (log: {self.log})")
        return procs.start(argv, self.pidfile, self.log, self.dir).pid

    @staticmethod
    def _available(registration: client.ApiregistrationV1Api) -> bool:
        found = registration.read_api_service(API_SERVICE)
        return any(
            c.type == "Available" and c.status == "True" for c in (found.status.conditions or ())
        )

    def _wait(
        self, check: Callable[[], bool], timeout: float, what: str, pid: int | None = None
    ) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if check():
                    return
            except ApiException:
                pass
            if pid is not None and not procs.alive(pid):
                raise AdapterError(self._failure(f"exited while waiting for {what}"))
            if time.monotonic() > deadline:
                raise AdapterError(self._failure(f"no {what} after {timeout:.0f}s"))
            time.sleep(0.5)

    def _failure(self, what: str) -> str:
        lines = self.log.read_text(errors="replace").splitlines()[-25:] if self.log.exists() else []
        tail = "\n".join(f"    {line}" for line in lines)
        return f"{NAME}: {what}; see {self.log}; last lines:\n{tail}"


def main(argv: list[str] | None = None) -> int:
    """`python -m e2e.adapter up|down` for the running local cluster and monitoring stack."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m e2e.adapter",
        description="prometheus-adapter serving external.metrics.k8s.io on the local cluster.",
    )
    parser.add_argument("--state-dir", type=Path, help="the cluster's state dir")
    parser.add_argument("command", choices=("up", "down"))
    args = parser.parse_args(argv)
    cluster = LocalCluster(args.state_dir)
    monitoring = MonitoringStack(cluster)
    stack = AdapterStack(cluster, monitoring)
    try:
        if args.command == "up":
            if not monitoring.running():
                raise AdapterError(
                    "the monitoring stack is not running: python -m e2e.monitoring up"
                )
            stack.up()
        elif not stack.down():
            _log("nothing was running")
    except AdapterError as exc:
        _log(f"error: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
