"""The `local` provider: a real control plane as plain processes on loopback.

etcd -> kube-apiserver -> kube-controller-manager -> kube-scheduler -> kwok, each started
detached with its log in <state>/logs/ and its pid in <state>/run/. Everything lives in one
state directory, so etcd data, certificates and ports survive `down`/`up`.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from e2e import crds, egress, kubeconfig, kwok, procs
from e2e.netns import PodNetwork, PodNetworkError
from e2e.paths import default_state_dir
from e2e.pki import SERVICE_CIDR, ClusterPKI, ensure_pki
from e2e.toolchain import CLUSTER_BINARIES, ensure_built

SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
# port name -> the component listening on it
_PORTS = {
    "etcd": "etcd",
    "etcd-peer": "etcd",
    "apiserver": "kube-apiserver",
    "controller-manager": "kube-controller-manager",
    "scheduler": "kube-scheduler",
    "kwok": "kwok",
}
# Start order; `down` goes in reverse.
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")
# Run inside the pod network when there is one (e2e.podserving, e2e.egress).
PODSERVING = "podserving"
EGRESS = "egress"


# The API server's audit policy: at Metadata level (who, verb, the request URI with its query,
# the response code; no bodies), what ServiceAccounts other than kube-system's controllers
# ask of pods, secrets and the operator's child kinds. e2e/tests/test_helm.py reads it to prove
# that the operator, running as the chart's ServiceAccount, lists and watches only through
# its label selector and never asks for a Secret.
AUDIT_POLICY = """\
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: None
    userGroups: ["system:serviceaccounts:kube-system"]
  - level: Metadata
    userGroups: ["system:serviceaccounts"]
    resources:
      - group: ""
        resources: [pods, secrets, configmaps, services]
      - group: apps
        resources: [deployments]
      - group: autoscaling
        resources: [horizontalpodautoscalers]
      - group: monitoring.coreos.com
        resources: [servicemonitors]
      - group: networking.k8s.io
        resources: [networkpolicies]
  - level: None
"""


class ClusterError(RuntimeError):
    """A component failed to start or become ready; the message points at its log."""


def _log(message: str) -> None:
    print(f"[e2e] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As the Go servers do: connections of a stopped server lingering in TIME_WAIT
        # must not make its port look taken, or a restart would move it.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@dataclass(frozen=True)
class Options:
    gpu_nodes: int = 4
    cpu_nodes: int = 1
    pod_ready_delay: kwok.PodReadyDelay | None = None
    servicemonitor_crd: bool = True
    # The HPA controller's period; upstream's 15s default makes tests slow for no gain.
    hpa_sync_period: str = "5s"
    # Nodes whose pods are answered by real Tritons inside the pod network (tainted, so
    # only services that ask land there: e2e.kwok.serving_placement()).
    served_nodes: int = 2


@dataclass
class ComponentStatus:
    name: str
    pid: int | None
    log: Path

    @property
    def running(self) -> bool:
        return self.pid is not None


class LocalCluster:
    def __init__(self, state_dir: Path | None = None, options: Options | None = None) -> None:
        self.state_dir = (state_dir or default_state_dir()).resolve()
        self.options = options or Options()
        self.bin_dir: Path | None = None
        self.network = PodNetwork.for_state_dir(self.state_dir)

    # --- layout -------------------------------------------------------------------------
    @property
    def kubeconfig(self) -> Path:
        return self.state_dir / "kubeconfig"

    @property
    def audit_log(self) -> Path:
        """The API server's audit log: what ServiceAccounts outside kube-system list, watch
        and write of pods, secrets and the operator's child kinds (see AUDIT_POLICY)."""
        return self.state_dir / "logs" / "audit.log"

    def log_file(self, component: str) -> Path:
        return self.state_dir / "logs" / f"{component}.log"

    def _pidfile(self, component: str) -> Path:
        return self.state_dir / "run" / f"{component}.pid"

    def _kubeconfig_for(self, client_name: str) -> Path:
        return self.state_dir / "kubeconfigs" / f"{client_name}.kubeconfig"

    def apply(self, objects: list[dict[str, Any]], field_manager: str) -> str | None:
        """`kubectl apply --server-side` of `objects` as `field_manager` (taking over its
        fields); None when it went through, else kubectl's error."""
        done = subprocess.run(
            [
                str(self.bin_path() / "kubectl"),
                f"--kubeconfig={self.kubeconfig}",
                "apply",
                "--server-side",
                "--force-conflicts",
                f"--field-manager={field_manager}",
                "-f",
                "-",
            ],
            input=yaml.safe_dump_all(objects),
            capture_output=True,
            text=True,
            timeout=120,
        )
        return None if done.returncode == 0 else done.stderr.strip()

    def bin_path(self) -> Path:
        """The directory of built binaries, building them on first use."""
        if self.bin_dir is None:
            self.bin_dir = ensure_built(CLUSTER_BINARIES)
        return self.bin_dir

    def _bin(self, program: str) -> str:
        return str(self.bin_path() / program)

    def _ports(self) -> dict[str, int]:
        """Ports are chosen once and kept, so kubeconfigs and etcd's peer URL stay valid."""
        path = self.state_dir / "ports.json"
        ports: dict[str, int] = json.loads(path.read_text()) if path.exists() else {}
        changed = False
        for name, component in _PORTS.items():
            running = procs.read_pid(self._pidfile(component), component) is not None
            if name not in ports or (not running and not port_free(ports[name])):
                ports[name] = free_port()
                changed = True
        if changed:
            path.write_text(json.dumps(ports, indent=1) + "\n")
        return ports

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self._ports()['apiserver']}"

    # --- status ---------------------------------------------------------------------------
    def status(self) -> list[ComponentStatus]:
        statuses = [
            ComponentStatus(name, procs.read_pid(self._pidfile(name), name), self.log_file(name))
            for name in COMPONENTS
        ]
        if self.egress_enabled():
            statuses.append(ComponentStatus(EGRESS, self._egress_pid(), self.log_file(EGRESS)))
        if self.serving_enabled():
            statuses.append(
                ComponentStatus(PODSERVING, self._podserving_pid(), self.log_file(PODSERVING))
            )
        return statuses

    def running(self) -> bool:
        return all(s.running for s in self.status())

    # --- the pod network and real serving ---------------------------------------------------
    def serving_enabled(self) -> bool:
        return self.options.served_nodes > 0 and PodNetwork.supported() is None

    def egress_enabled(self) -> bool:
        """The API server reaches pod addresses (aggregated APIs' endpoints) through
        e2e.egress, wherever there is a pod network."""
        return PodNetwork.supported() is None

    @property
    def egress_selector_file(self) -> Path:
        return self.state_dir / "egress-selector.yaml"

    def _egress_marker(self) -> str:
        return f"--egress-state={self.state_dir}"

    def _egress_pid(self) -> int | None:
        program = Path(sys.executable).name
        return procs.read_pid(self._pidfile(EGRESS), program, self._egress_marker())

    def _ensure_egress(self) -> None:
        if not self.egress_enabled():
            return
        self.network.ensure()
        socket = egress.socket_path(self.state_dir)
        pid = self._egress_pid()
        if pid is None:
            _log(f"starting {EGRESS} in {self.network.name} (log: {self.log_file(EGRESS)})")
            socket.unlink(missing_ok=True)
            argv = self.network.wrap([sys.executable, "-m", "e2e.egress", self._egress_marker()])
            env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
            pid = procs.start(
                argv, self._pidfile(EGRESS), self.log_file(EGRESS), self.state_dir, env
            ).pid
        self._wait_ready(EGRESS, pid, socket.exists)

    def _podserving_marker(self) -> str:
        return f"--podserving-state={self.state_dir}"

    def _podserving_pid(self) -> int | None:
        program = Path(sys.executable).name
        return procs.read_pid(self._pidfile(PODSERVING), program, self._podserving_marker())

    def _ensure_serving(self, ports: dict[str, int]) -> None:
        """The pod network, the API server bridged into it, and the pods' kubelet."""
        why = PodNetwork.supported()
        if self.options.served_nodes <= 0:
            return
        if why is not None:
            _log(f"no real serving: {why}; pods on Triton-backed nodes will not turn Ready")
            return
        self.network.ensure()
        self.network.bridge_in(ports["apiserver"])
        pid = self._podserving_pid()
        if pid is None:
            _log(f"starting {PODSERVING} in {self.network.name} (log: {self.log_file(PODSERVING)})")
            argv = self.network.wrap(
                [sys.executable, "-m", "e2e.podserving", self._podserving_marker()]
            )
            env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
            pid = procs.start(
                argv, self._pidfile(PODSERVING), self.log_file(PODSERVING), self.state_dir, env
            ).pid
        heartbeat = self.state_dir / "run" / "podserving.alive"
        started = time.time()

        def beating() -> bool:
            return heartbeat.exists() and heartbeat.stat().st_mtime >= started - 5

        self._wait_ready(PODSERVING, pid, beating)

    def _stop_serving(self) -> list[str]:
        stopped = []
        program = Path(sys.executable).name
        if procs.stop(self._pidfile(PODSERVING), program, marker=self._podserving_marker()):
            stopped.append(PODSERVING)
        if procs.stop(self._pidfile(EGRESS), program, marker=self._egress_marker()):
            stopped.append(EGRESS)
        for port in self.network.bridged_ports():
            if self.network.unbridge(port):
                stopped.append(f"bridge {port}")
        return stopped

    def exec_argv(self, argv: list[str]) -> list[str]:
        """`argv` run inside the pod network (for `python -m e2e exec -- CMD`)."""
        if not self.network.exists():
            raise PodNetworkError(
                f"the pod network {self.network.name} does not exist; run `python -m e2e up`"
            )
        return self.network.wrap(argv)

    # --- lifecycle ------------------------------------------------------------------------
    @contextmanager
    def _locked(self) -> Iterator[None]:
        """One `up`/`down` at a time per state dir (parallel test runs share a cluster)."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with open(self.state_dir / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def up(self, fresh: bool = False) -> Path:
        """Start whatever is not running, wait until all is ready; returns the kubeconfig."""
        self._bin("kube")  # build first: a cold build must not eat a component's deadline
        with self._locked():
            if fresh:
                self._down()
                _log(f"--fresh: removing {self.state_dir}")
                for child in self.state_dir.iterdir():
                    if child.name != ".lock":
                        shutil.rmtree(child) if child.is_dir() else child.unlink()
            started = time.monotonic()
            pki = ensure_pki(self.state_dir / "pki")
            ports = self._ports()
            self._write_kubeconfigs(pki, ports)
            kwok_config_changed = self._write_kwok_config()
            self._write_egress_selector()
            (self.state_dir / "audit-policy.yaml").write_text(AUDIT_POLICY)
            argv = self._argv(pki, ports)
            for name in COMPONENTS:
                if name == "kwok" and kwok_config_changed:
                    procs.stop(self._pidfile(name), name)
                self._ensure_component(name, argv[name], ports)
                if name == "kube-apiserver":
                    self._install_objects()
            self._ensure_egress()
            self._ensure_serving(ports)
            self._wait_nodes_ready()
            _log(f"cluster ready in {time.monotonic() - started:.1f}s; state: {self.state_dir}")
        return self.kubeconfig

    def down(self) -> list[str]:
        with self._locked():
            return self._down()

    def _down(self) -> list[str]:
        stopped = []
        for name in self._stop_serving():
            _log(f"stopped {name}")
            stopped.append(name)
        for name in reversed(COMPONENTS):
            if procs.stop(self._pidfile(name), name):
                _log(f"stopped {name}")
                stopped.append(name)
        return stopped

    def stop_component(self, name: str) -> bool:
        return procs.stop(self._pidfile(name), name)

    def restart_component(self, name: str) -> None:
        """Stop and start one component (for fault tests), waiting until it is ready again."""
        with self._locked():
            self.stop_component(name)
            pki = ensure_pki(self.state_dir / "pki")
            ports = self._ports()
            self._ensure_component(name, self._argv(pki, ports)[name], ports)

    # --- components -----------------------------------------------------------------------
    def _ensure_component(self, name: str, argv: list[str], ports: dict[str, int]) -> None:
        pidfile = self._pidfile(name)
        pid = procs.read_pid(pidfile, name)
        if pid is not None and procs.cmdline(pid) != argv:
            # Started by an older harness (different flags): what runs must be what `up`
            # would start, or a cluster found running lacks, say, the egress selector.
            _log(f"restarting {name}: its flags changed")
            procs.stop(pidfile, name)
            pid = None
        if pid is None:
            _log(f"starting {name} (log: {self.log_file(name)})")
            pid = procs.start(argv, pidfile, self.log_file(name), self.state_dir).pid
        self._wait_ready(name, pid, self._health_check(name, ports))

    def _wait_ready(self, name: str, pid: int, check: Callable[[], bool]) -> None:
        timeout = float(os.environ.get("CCS_E2E_READY_TIMEOUT", "120"))
        started = time.monotonic()
        while not check():
            if not procs.alive(pid):
                raise ClusterError(self._failure(name, "exited during startup"))
            if time.monotonic() - started > timeout:
                raise ClusterError(self._failure(name, f"not ready after {timeout:.0f}s"))
            time.sleep(0.25)
        _log(f"{name} ready ({time.monotonic() - started:.1f}s)")

    def _failure(self, name: str, what: str) -> str:
        log = self.log_file(name)
        lines = log.read_text(errors="replace").splitlines()[-30:] if log.exists() else []
        tail = "\n".join(f"    {line}" for line in lines)
        return f"{name} {what}; see its log {log}; last lines:\n{tail}"

    def _health_check(self, name: str, ports: dict[str, int]) -> Callable[[], bool]:
        pki_dir = self.state_dir / "pki"
        if name == "etcd":
            return lambda: _http_ok(f"http://127.0.0.1:{ports['etcd']}/health", None)
        if name == "kube-apiserver":
            ctx = ssl.create_default_context(cafile=str(pki_dir / "ca.crt"))
            ctx.load_cert_chain(pki_dir / "client-admin.crt", pki_dir / "client-admin.key")
            return lambda: _http_ok(f"https://127.0.0.1:{ports['apiserver']}/readyz", ctx)
        if name == "kwok":
            return lambda: _http_ok(f"http://127.0.0.1:{ports['kwok']}/healthz", None)
        # Controller-manager and scheduler serve /healthz with a self-signed certificate
        # they make at startup; there is nothing to verify it against.
        insecure = ssl.create_default_context()
        insecure.check_hostname = False
        insecure.verify_mode = ssl.CERT_NONE
        port = ports[name.removeprefix("kube-")]
        return lambda: _http_ok(f"https://127.0.0.1:{port}/healthz", insecure)

    def _write_kubeconfigs(self, pki: ClusterPKI, ports: dict[str, int]) -> None:
        server = f"https://127.0.0.1:{ports['apiserver']}"
        kubeconfig.write(self.kubeconfig, server, pki.ca.cert, pki.clients["admin"], "admin")
        for name in ("controller-manager", "scheduler", "kwok"):
            path = self._kubeconfig_for(name)
            kubeconfig.write(path, server, pki.ca.cert, pki.clients[name], name)

    def _write_kwok_config(self) -> bool:
        path = self.state_dir / "kwok.yaml"
        served = kwok.served_node_names(self.options.served_nodes)
        text = kwok.config_yaml(self.options.pod_ready_delay, served_nodes=served)
        if path.exists() and path.read_text() == text:
            return False
        path.write_text(text)
        return True

    def _write_egress_selector(self) -> None:
        if self.egress_enabled():
            config = egress.selector_config(egress.socket_path(self.state_dir))
            self.egress_selector_file.write_text(json.dumps(config, indent=1) + "\n")

    def _argv(self, pki: ClusterPKI, ports: dict[str, int]) -> dict[str, list[str]]:
        run = self.state_dir / "run"
        etcd_url = f"http://127.0.0.1:{ports['etcd']}"
        peer_url = f"http://127.0.0.1:{ports['etcd-peer']}"
        kcm_config = str(self._kubeconfig_for("controller-manager"))
        scheduler_config = str(self._kubeconfig_for("scheduler"))
        return {
            "etcd": [
                self._bin("etcd"),
                "--name=ccs-e2e",
                f"--data-dir={self.state_dir / 'etcd'}",
                f"--listen-client-urls={etcd_url}",
                f"--advertise-client-urls={etcd_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=ccs-e2e={peer_url}",
                # A throwaway test store: fsync on every write only slows small CI disks.
                "--unsafe-no-fsync=true",
                "--log-level=warn",
            ],
            "kube-apiserver": [
                self._bin("kube-apiserver"),
                f"--etcd-servers={etcd_url}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={ports['apiserver']}",
                f"--cert-dir={run / 'kube-apiserver'}",
                f"--tls-cert-file={pki.apiserver.cert}",
                f"--tls-private-key-file={pki.apiserver.key}",
                f"--client-ca-file={pki.ca.cert}",
                "--authorization-mode=Node,RBAC",
                f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
                f"--service-account-key-file={pki.service_account.cert}",
                f"--service-account-signing-key-file={pki.service_account.key}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--allow-privileged=true",
                # The `kubernetes` Service would point at 127.0.0.1, which Endpoints refuse;
                # nothing in a kwok cluster dials it.
                "--endpoint-reconciler-type=none",
                # Aggregated APIs (a metrics adapter) are reached through their endpoints:
                # there is no kube-proxy to route Service IPs. Endpoints are pod addresses,
                # which exist only in the pod network: the API server dials them through
                # e2e.egress (its `cluster` egress selection), as a control plane outside
                # the cluster network does through Konnectivity.
                "--enable-aggregator-routing=true",
                *(
                    [f"--egress-selector-config-file={self.egress_selector_file}"]
                    if self.egress_enabled()
                    else []
                ),
                f"--requestheader-client-ca-file={pki.front_proxy_ca.cert}",
                "--requestheader-allowed-names=front-proxy-client",
                "--requestheader-extra-headers-prefix=X-Remote-Extra-",
                "--requestheader-group-headers=X-Remote-Group",
                "--requestheader-username-headers=X-Remote-User",
                f"--proxy-client-cert-file={pki.front_proxy_client.cert}",
                f"--proxy-client-key-file={pki.front_proxy_client.key}",
                f"--audit-policy-file={self.state_dir / 'audit-policy.yaml'}",
                f"--audit-log-path={self.audit_log}",
                "--audit-log-maxsize=100",
                "--audit-log-maxbackup=1",
                "--profiling=false",
            ],
            "kube-controller-manager": [
                self._bin("kube-controller-manager"),
                f"--kubeconfig={kcm_config}",
                f"--authentication-kubeconfig={kcm_config}",
                f"--authorization-kubeconfig={kcm_config}",
                "--bind-address=127.0.0.1",
                f"--secure-port={ports['controller-manager']}",
                f"--cert-dir={run / 'kube-controller-manager'}",
                "--leader-elect=false",
                "--controllers=*",
                "--use-service-account-credentials=true",
                f"--service-account-private-key-file={pki.service_account.key}",
                f"--root-ca-file={pki.ca.cert}",
                f"--cluster-signing-cert-file={pki.ca.cert}",
                f"--cluster-signing-key-file={pki.ca.key}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                f"--horizontal-pod-autoscaler-sync-period={self.options.hpa_sync_period}",
                "--profiling=false",
            ],
            "kube-scheduler": [
                self._bin("kube-scheduler"),
                f"--kubeconfig={scheduler_config}",
                f"--authentication-kubeconfig={scheduler_config}",
                f"--authorization-kubeconfig={scheduler_config}",
                "--bind-address=127.0.0.1",
                f"--secure-port={ports['scheduler']}",
                f"--cert-dir={run / 'kube-scheduler'}",
                "--leader-elect=false",
                "--profiling=false",
            ],
            "kwok": [
                self._bin("kwok"),
                f"--kubeconfig={self._kubeconfig_for('kwok')}",
                f"--config={self.state_dir / 'kwok.yaml'}",
                f"--server-address=127.0.0.1:{ports['kwok']}",
                "--cidr=10.244.0.0/16",
                *kwok.flags(),
            ],
        }

    # --- objects --------------------------------------------------------------------------
    def api_client(self) -> client.ApiClient:
        return config.new_client_from_config(config_file=str(self.kubeconfig))

    def _install_objects(self) -> None:
        with self.api_client() as api_client:
            core = client.CoreV1Api(api_client)
            nodes = kwok.nodes(
                self.options.gpu_nodes, self.options.cpu_nodes, self.options.served_nodes
            )
            for node in nodes:
                try:
                    core.create_node(node)
                except ApiException as exc:
                    if exc.status != 409:
                        raise
            if self.options.servicemonitor_crd:
                for crd in (crds.SERVICEMONITOR, crds.PROMETHEUSRULE):
                    crds.install(api_client, crd)

    def _wait_nodes_ready(self, timeout: float = 60) -> None:
        fake_nodes = kwok.nodes(
            self.options.gpu_nodes, self.options.cpu_nodes, self.options.served_nodes
        )
        wanted = {node["metadata"]["name"] for node in fake_nodes}
        deadline = time.monotonic() + timeout
        with self.api_client() as api_client:
            core = client.CoreV1Api(api_client)
            while True:
                ready = {
                    node.metadata.name
                    for node in core.list_node().items
                    if any(
                        c.type == "Ready" and c.status == "True"
                        for c in (node.status.conditions or [])
                    )
                }
                if wanted <= ready:
                    _log(f"{len(wanted)} fake nodes Ready")
                    return
                if time.monotonic() > deadline:
                    missing = ", ".join(sorted(wanted - ready))
                    raise ClusterError(
                        f"nodes not Ready after {timeout:.0f}s: {missing}; "
                        f"see kwok's log {self.log_file('kwok')}"
                    )
                time.sleep(0.5)


def _http_ok(url: str, context: ssl.SSLContext | None) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2, context=context) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError, ssl.SSLError):
        return False
