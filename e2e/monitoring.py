"""The monitoring stack of the local cluster: prometheus-operator and the real Prometheus.

prometheus-operator (built from its Go module, e2e/toolchain/promoperator) watches the
cluster's ServiceMonitors, PodMonitors and PrometheusRules and writes the scrape
configuration of a `Prometheus` resource into the Secret `prometheus-<name>`, exactly as it
does in a production cluster. There, a StatefulSet pod mounts that Secret and its
config-reloader sidecar hands it to Prometheus. Here a real Prometheus plays the pod, built
from its Go module (e2e/toolchain/prometheus; Debian's package has no Kubernetes service
discovery, removed there for its dependencies), and a small sync process (this module's
`sync`, detached) plays the mount and the sidecar: it watches the Secret and the rule
ConfigMaps, writes them to files and reloads Prometheus on every change. So scrape targets
reach Prometheus only through what the operator rendered: selector, port name, path,
interval and the relabelling that attaches `namespace`, `service`, `pod` and `job`.

What the pod would get from its environment, and only that, is supplied locally
(`localize`, a pure function):
- each `kubernetes_sd_configs` entry that relies on the in-cluster service account gets
  `kubeconfig_file:` pointing at a client certificate of its own (user `prometheus`, bound
  to upstream's `prometheus` ClusterRole);
- `$(POD_NAME)` and `$(SHARD)`, which the config-reloader expands from the pod's env, get
  the values pod 0 of shard 0 would have;
- rule files, mounted in a pod from the operator's `prometheus-<name>-rulefiles-N`
  ConfigMaps under /etc/prometheus/rules/, are written from those ConfigMaps;
- a scrape job that needs any other in-pod file (a TLS asset under /etc/prometheus/certs/,
  a mounted secret, a service-account token) is left out and named in the sync's log,
  since nothing here would provide that file.

The StatefulSet the operator makes is kept at zero replicas (`spec.replicas: 0`): kwok
would only fake a pod that serves nothing, and the real Prometheus runs outside.

Network: Prometheus dials pod addresses (POD_CIDR), so it runs only inside the cluster's
pod network (e2e.netns), reaches the API server there through the cluster's bridge, and
its UI/API is bridged out to the root namespace's 127.0.0.1:<port>. prometheus-operator
and the sync talk only to the API server and run in the root namespace.

    stack = MonitoringStack(cluster)      # a LocalCluster
    stack.up()                            # idempotent; `python -m e2e monitoring up`
    stack.url                             # http://127.0.0.1:<port>, for CCS_PROMETHEUS_URL
    stack.down()

Logs: <state>/logs/{prometheus-operator,prometheus,monitoring-sync}.log; pid files in
<state>/run/; files in <state>/monitoring/.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import copy
import fnmatch
import gzip
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from e2e import crds, kubeconfig, procs
from e2e.localcluster import ComponentStatus, LocalCluster, free_port, port_free
from e2e.netns import PodNetwork
from e2e.pki import ensure_leaf, ensure_pki
from e2e.toolchain import ensure_built, prometheus_operator_source

NAMESPACE = "monitoring"
NAME = "ccs"
FIELD_MANAGER = "ccs-e2e-monitoring"
CONFIG_KEY = "prometheus.yaml.gz"
# The CRDs the Prometheus controller reads; Alertmanager's and Thanos' controllers stay off.
CRD_FILES = tuple(
    f"monitoring.coreos.com_{plural}.yaml"
    for plural in (
        "prometheuses",
        "servicemonitors",
        "podmonitors",
        "probes",
        "scrapeconfigs",
        "prometheusrules",
    )
)
# Where a Prometheus pod of prometheus-operator's StatefulSet finds its mounted files.
IN_POD_RULES = "/etc/prometheus/rules/"
IN_POD_PREFIXES = ("/etc/prometheus/", "/var/run/secrets/")
# Client certificates: (file stem, user); RBAC binds upstream's roles to these users.
OPERATOR_USER = "prometheus-operator"
PROMETHEUS_USER = "prometheus"
READY_TIMEOUT_S = 120.0
_VAR = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


class MonitoringError(RuntimeError):
    """The monitoring stack cannot start or sync; the message names the log to read."""


def _log(message: str) -> None:
    print(f"[e2e monitoring] {message}", file=sys.stderr, flush=True)


# --- pure parts ---------------------------------------------------------------------------


def prometheus_version(version_output: str) -> str:
    """`prometheus --version`'s first line -> the `spec.version` the operator expects."""
    match = re.search(r"version (\d+\.\d+\.\d+)", version_output)
    if not match:
        raise MonitoringError(f"cannot read a version from {version_output[:200]!r}")
    return f"v{match.group(1)}"


def prometheus_resource(
    version: str, scrape_interval: str, name: str = NAME, namespace: str = NAMESPACE
) -> dict[str, Any]:
    """A `Prometheus` that selects every ServiceMonitor, PodMonitor and rule, everywhere."""
    everything: dict[str, Any] = {}
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "Prometheus",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            # The generated configuration suits this version of the binary that runs it.
            "version": version,
            # Prometheus itself runs outside; a kwok pod would only pretend to.
            "replicas": 0,
            "scrapeInterval": scrape_interval,
            "evaluationInterval": scrape_interval,
            "serviceDiscoveryRole": "EndpointSlice",
            "serviceMonitorSelector": everything,
            "serviceMonitorNamespaceSelector": everything,
            "podMonitorSelector": everything,
            "podMonitorNamespaceSelector": everything,
            "ruleSelector": everything,
            "ruleNamespaceSelector": everything,
        },
    }


def decode_generated(data: Mapping[str, Any]) -> dict[str, Any]:
    """The configuration in the operator's Secret (`.data`: base64 of gzipped YAML)."""
    if CONFIG_KEY not in data:
        raise MonitoringError(f"the Secret has no {CONFIG_KEY} (keys: {sorted(data)})")
    text = gzip.decompress(base64.b64decode(data[CONFIG_KEY])).decode()
    loaded = yaml.safe_load(text) or {}
    if not isinstance(loaded, dict):
        raise MonitoringError(f"{CONFIG_KEY} is not a mapping")
    return loaded


@dataclass(frozen=True)
class PodEnvironment:
    """What a Prometheus pod of the operator's StatefulSet would find around it."""

    kubeconfig: str  # instead of the in-cluster service account
    rules_dir: str  # where the rulefiles ConfigMaps are written, instead of their mount
    variables: Mapping[str, str] = field(default_factory=dict)  # $(VAR) from the pod's env


def pod_variables(name: str = NAME) -> dict[str, str]:
    """The env of pod 0 of shard 0, which the config-reloader expands."""
    return {"POD_NAME": f"prometheus-{name}-0", "SHARD": "0"}


@dataclass(frozen=True)
class LocalConfig:
    config: dict[str, Any]
    rule_configmaps: tuple[str, ...]  # ConfigMaps whose keys belong in rules_dir/<name>/
    dropped_jobs: tuple[str, ...]  # scrape jobs that need in-pod files nothing provides


def _expand(value: Any, variables: Mapping[str, str]) -> Any:
    if isinstance(value, str):

        def substitute(match: re.Match[str]) -> str:
            if match.group(1) not in variables:
                # As the config-reloader does: an unset variable is an error, not "".
                raise MonitoringError(f"the configuration refers to unset $({match.group(1)})")
            return variables[match.group(1)]

        return _VAR.sub(substitute, value)
    if isinstance(value, dict):
        return {k: _expand(v, variables) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, variables) for v in value]
    return value


def _in_pod_paths(value: Any, where: str = "") -> list[str]:
    if isinstance(value, str):
        return [f"{where}: {value}"] if value.startswith(IN_POD_PREFIXES) else []
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _in_pod_paths(v, f"{where}.{k}")]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _in_pod_paths(v, f"{where}[{i}]")]
    return []


def _point_sd_at_kubeconfig(value: Any, kubeconfig_file: str) -> None:
    """Every in-cluster `kubernetes_sd_configs` entry reads the API through a kubeconfig."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "kubernetes_sd_configs" and isinstance(item, list):
                for sd in item:
                    # An explicit api_server is the user's choice, not the pod's environment.
                    if isinstance(sd, dict) and "api_server" not in sd:
                        sd["kubeconfig_file"] = kubeconfig_file
            else:
                _point_sd_at_kubeconfig(item, kubeconfig_file)
    elif isinstance(value, list):
        for item in value:
            _point_sd_at_kubeconfig(item, kubeconfig_file)


def localize(generated: Mapping[str, Any], env: PodEnvironment) -> LocalConfig:
    """The operator's configuration as this machine can run it; `generated` is not changed.

    Only what comes from the pod's environment is replaced (see the module docstring);
    every scrape job, selector and relabelling rule is kept as the operator wrote it.
    """
    config: dict[str, Any] = _expand(copy.deepcopy(dict(generated)), env.variables)
    _point_sd_at_kubeconfig(config, env.kubeconfig)

    rule_configmaps: list[str] = []
    rule_files = []
    for pattern in config.get("rule_files") or []:
        if isinstance(pattern, str) and pattern.startswith(IN_POD_RULES):
            rest = pattern[len(IN_POD_RULES) :]
            configmap = rest.split("/", 1)[0]
            if configmap and configmap not in rule_configmaps:
                rule_configmaps.append(configmap)
            pattern = f"{env.rules_dir.rstrip('/')}/{rest}"
        rule_files.append(pattern)
    if "rule_files" in config:
        config["rule_files"] = rule_files

    kept, dropped = [], []
    for job in config.get("scrape_configs") or []:
        if _in_pod_paths(job):
            dropped.append(str(job.get("job_name", "?")))
        else:
            kept.append(job)
    if "scrape_configs" in config:
        config["scrape_configs"] = kept
    rest_of_it = {k: v for k, v in config.items() if k != "scrape_configs"}
    unsupported = _in_pod_paths(rest_of_it)
    if unsupported:
        raise MonitoringError(
            "the configuration needs files of a Prometheus pod that do not exist here: "
            + "; ".join(unsupported)
        )
    return LocalConfig(config, tuple(rule_configmaps), tuple(dropped))


def rule_file_names(data: Mapping[str, str]) -> dict[str, str]:
    """A rulefiles ConfigMap's keys that are safe file names -> their contents."""
    return {k: v for k, v in data.items() if "/" not in k and k not in {"", ".", ".."}}


# --- files --------------------------------------------------------------------------------


def _write_if_changed(path: Path, text: str) -> bool:
    if path.exists() and path.read_text() == text:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)  # a reload never reads half a file
    return True


@dataclass(frozen=True)
class Layout:
    """Where the stack keeps its files in a cluster's state dir."""

    state_dir: Path
    name: str = NAME
    namespace: str = NAMESPACE

    @property
    def dir(self) -> Path:
        return self.state_dir / "monitoring"

    @property
    def config(self) -> Path:
        return self.dir / "prometheus.yaml"

    @property
    def generated(self) -> Path:
        """The operator's configuration as it was read, for a person comparing."""
        return self.dir / "generated.yaml"

    @property
    def rules_dir(self) -> Path:
        return self.dir / "rules"

    @property
    def data_dir(self) -> Path:
        return self.dir / "data"

    @property
    def prometheus_kubeconfig(self) -> Path:
        return self.dir / "prometheus.kubeconfig"

    @property
    def ports_file(self) -> Path:
        return self.dir / "ports.json"

    @property
    def sync_marker(self) -> str:
        return f"--monitoring-state={self.state_dir}"

    def pidfile(self, component: str) -> Path:
        return self.state_dir / "run" / f"{component}.pid"

    def log(self, component: str) -> Path:
        return self.state_dir / "logs" / f"{component}.log"

    @property
    def secret(self) -> str:
        return f"prometheus-{self.name}"

    def environment(self) -> PodEnvironment:
        return PodEnvironment(
            kubeconfig=str(self.prometheus_kubeconfig),
            rules_dir=str(self.rules_dir),
            variables=pod_variables(self.name),
        )


# --- the sync: the pod's volume mounts and config-reloader ----------------------------------


def _reload(url: str) -> None:
    request = urllib.request.Request(f"{url}/-/reload", method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30):
            return
    except urllib.error.HTTPError as exc:
        body = exc.read().decode(errors="replace").strip()
        raise MonitoringError(f"Prometheus refused the configuration: {body}") from exc


class ConfigSync:
    """Writes the operator's Secret and rule ConfigMaps to files; reloads on change.

    `resync()` does one pass; `run(stop)` watches both kinds until `stop` is set (the
    detached `sync` process runs it; a test may run it on a thread).
    """

    def __init__(
        self,
        layout: Layout,
        api_client: client.ApiClient,
        reload: Callable[[], None] | None = None,
    ) -> None:
        self.layout = layout
        self.core = client.CoreV1Api(api_client)
        self.reload = reload
        self._lock = threading.Lock()
        self._reload_pending = False
        self._last_error = ""
        self.last: LocalConfig | None = None

    def resync(self) -> bool:
        """One pass; True when the files changed (and Prometheus was reloaded)."""
        with self._lock:
            try:
                secret = self.core.read_namespaced_secret(self.layout.secret, self.layout.namespace)
            except ApiException as exc:
                if exc.status == 404:
                    return False
                raise
            generated = decode_generated(secret.data or {})
            local = localize(generated, self.layout.environment())
            changed = self._write_rules(local.rule_configmaps)
            _write_if_changed(self.layout.generated, yaml.safe_dump(generated, sort_keys=False))
            text = yaml.safe_dump(local.config, sort_keys=False)
            changed |= _write_if_changed(self.layout.config, text)
            if self.last is None or local.dropped_jobs != self.last.dropped_jobs:
                for job in local.dropped_jobs:
                    _log(f"left out scrape job {job}: it needs files only a pod would have")
            self.last = local
            if changed:
                jobs = [j.get("job_name") for j in local.config.get("scrape_configs") or []]
                rules = sum(
                    len(list((self.layout.rules_dir / c).iterdir())) for c in local.rule_configmaps
                )
                _log(
                    f"configuration or rules changed: {len(jobs)} scrape jobs {jobs}, "
                    f"{rules} rule files"
                )
            if (changed or self._reload_pending) and self.reload is not None:
                self._reload_pending = True  # until a reload succeeds, every pass retries
                self.reload()
                self._reload_pending = False
            return changed

    def _write_rules(self, configmaps: tuple[str, ...]) -> bool:
        changed = False
        root = self.layout.rules_dir
        root.mkdir(parents=True, exist_ok=True)
        for configmap in configmaps:
            try:
                body = self.core.read_namespaced_config_map(configmap, self.layout.namespace)
                files = rule_file_names(body.data or {})
            except ApiException as exc:
                if exc.status != 404:
                    raise
                files = {}
            target = root / configmap
            target.mkdir(exist_ok=True)
            for name, text in files.items():
                changed |= _write_if_changed(target / name, text)
            for stale in target.iterdir():
                if stale.name not in files:
                    stale.unlink()
                    changed = True
        for stale_dir in root.iterdir():
            if stale_dir.name not in configmaps:
                shutil.rmtree(stale_dir)
                changed = True
        return changed

    def _watch(self, stop: threading.Event, list_fn: Callable[..., Any], **kwargs: Any) -> None:
        while not stop.is_set():
            try:
                for _event in watch.Watch().stream(
                    list_fn, self.layout.namespace, timeout_seconds=30, **kwargs
                ):
                    self._resync_logged()
                    if stop.is_set():
                        return
            except Exception as exc:  # the API server restarts in fault tests: retry
                _log(f"watch interrupted ({type(exc).__name__}: {exc}); retrying")
                stop.wait(1.0)

    def _resync_logged(self) -> None:
        try:
            self.resync()
        except Exception as exc:  # keep the last good configuration, say why (once)
            if str(exc) != self._last_error:
                _log(f"sync failed (retried on every change and every 30 s): {exc}")
            self._last_error = str(exc)
        else:
            if self._last_error:
                _log("sync recovered")
            self._last_error = ""

    def run(self, stop: threading.Event) -> None:
        """Until `stop`: each watch re-lists every 30 s, so a missed event costs 30 s."""
        secret_selector = f"metadata.name={self.layout.secret}"
        rules_selector = f"prometheus-name={self.layout.name}"
        threads = [
            threading.Thread(
                target=self._watch,
                args=(stop, self.core.list_namespaced_secret),
                kwargs={"field_selector": secret_selector},
                daemon=True,
            ),
            threading.Thread(
                target=self._watch,
                args=(stop, self.core.list_namespaced_config_map),
                kwargs={"label_selector": rules_selector},
                daemon=True,
            ),
        ]
        for thread in threads:
            thread.start()
        stop.wait()


# --- the stack ----------------------------------------------------------------------------


class MonitoringStack:
    """prometheus-operator + Prometheus + the sync for one local cluster; idempotent."""

    COMPONENTS = ("prometheus-operator", "prometheus", "monitoring-sync")

    def __init__(
        self,
        cluster: LocalCluster,
        *,
        name: str = NAME,
        namespace: str = NAMESPACE,
        scrape_interval: str = "5s",
    ) -> None:
        self.cluster = cluster
        self.layout = Layout(cluster.state_dir, name, namespace)
        self.scrape_interval = scrape_interval
        self.network = PodNetwork.for_state_dir(cluster.state_dir)
        self._started_here = False
        self._port_cache: dict[str, int] | None = None

    # --- where ----------------------------------------------------------------------------
    def _ports(self) -> dict[str, int]:
        path = self.layout.ports_file
        ports: dict[str, int] = json.loads(path.read_text()) if path.exists() else {}
        changed = False
        for name in ("prometheus", "prometheus-operator"):
            running = self._pid(name) is not None
            if name not in ports or (not running and not port_free(ports[name])):
                ports[name] = free_port()
                changed = True
        if changed:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(ports, indent=1) + "\n")
        return ports

    @property
    def port(self) -> int:
        if self._port_cache is None:
            path = self.layout.ports_file
            # Read as recorded: checking liveness here could race a process that is
            # still exec'ing (`ip netns exec`) and remove its pid file.
            self._port_cache = json.loads(path.read_text()) if path.exists() else self._ports()
        return self._port_cache["prometheus"]

    @property
    def url(self) -> str:
        """Prometheus' web UI and HTTP API on the root namespace's loopback (bridged out)."""
        return f"http://127.0.0.1:{self.port}"

    def _pid(self, component: str) -> int | None:
        pidfile = self.layout.pidfile(component)
        if component == "prometheus-operator":
            return procs.read_pid(pidfile, component)
        if component == "prometheus":
            return procs.read_pid(pidfile, "prometheus", marker=str(self.layout.config))
        return procs.read_pid(pidfile, Path(sys.executable).name, marker=self.layout.sync_marker)

    def status(self) -> list[ComponentStatus]:
        return [ComponentStatus(c, self._pid(c), self.layout.log(c)) for c in self.COMPONENTS]

    def running(self) -> bool:
        return all(s.pid is not None for s in self.status())

    # --- lifecycle ------------------------------------------------------------------------
    def up(self, timeout: float = READY_TIMEOUT_S) -> MonitoringStack:
        why = PodNetwork.supported()
        if why is not None:
            # Prometheus dials pod addresses: nowhere but the pod network may it run.
            raise MonitoringError(f"Prometheus needs the cluster's pod network: {why}")
        started = time.monotonic()
        self._started_here = not self.running()
        operator_bin = ensure_built(("prometheus-operator",)) / "prometheus-operator"
        prometheus_bin = str(ensure_built(("prometheus",)) / "prometheus")
        version = prometheus_version(
            subprocess.run(
                [prometheus_bin, "--version"], capture_output=True, text=True, check=True
            ).stdout
        )
        ports = self._port_cache = self._ports()
        server = self.cluster.server
        with self.cluster.api_client() as api_client:
            for crd in CRD_FILES:
                crds.install(api_client, crd)
            self._write_credentials(server)
            self._apply(self._rbac() + self._resources(version))
            self._ensure_operator(operator_bin, server, ports["prometheus-operator"], timeout)
            sync = ConfigSync(self.layout, api_client)

            def generated() -> bool:
                sync.resync()  # writes the files Prometheus starts from
                return sync.last is not None

            secret = f"Secret {self.layout.namespace}/{self.layout.secret}"
            self._wait(generated, timeout, secret, "prometheus-operator")
        self.network.ensure()
        self.network.bridge_in(int(server.rsplit(":", 1)[1]))
        self._ensure_prometheus(prometheus_bin, ports["prometheus"], timeout)
        # Its first pass catches whatever changed since the one above.
        self._ensure_sync()
        _log(
            f"monitoring ready in {time.monotonic() - started:.1f}s: Prometheus {version} at "
            f"{self.url} (inside {self.network.name}), Prometheus "
            f"{self.layout.namespace}/{self.layout.name}"
        )
        return self

    def down(self) -> list[str]:
        stopped = []
        for component in reversed(self.COMPONENTS):
            if self._stop(component):
                stopped.append(component)
                _log(f"stopped {component}")
        if self.layout.ports_file.exists() and self.network.unbridge(self.port):
            stopped.append("prometheus bridge")
        return stopped

    def _stop(self, component: str) -> bool:
        pidfile = self.layout.pidfile(component)
        if component == "prometheus-operator":
            return procs.stop(pidfile, component)
        if component == "prometheus":
            return procs.stop(pidfile, "prometheus", marker=str(self.layout.config))
        return procs.stop(pidfile, Path(sys.executable).name, marker=self.layout.sync_marker)

    def __enter__(self) -> MonitoringStack:
        return self.up()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._started_here:  # a stack found running is left to whoever started it
            self.down()

    # --- pieces ---------------------------------------------------------------------------
    def _write_credentials(self, server: str) -> None:
        pki_dir = self.cluster.state_dir / "pki"
        pki = ensure_pki(pki_dir)
        prometheus = ensure_leaf(pki_dir, f"client-{PROMETHEUS_USER}", pki.ca, PROMETHEUS_USER)
        kubeconfig.write(
            self.layout.prometheus_kubeconfig, server, pki.ca.cert, prometheus, PROMETHEUS_USER
        )
        ensure_leaf(pki_dir, f"client-{OPERATOR_USER}", pki.ca, OPERATOR_USER)

    def _rbac(self) -> list[dict[str, Any]]:
        """Upstream's ClusterRoles, bound to our certificates' users (no service accounts:
        neither process runs in a pod)."""
        rbac = prometheus_operator_source() / "example" / "rbac"
        objects = []
        for user, path in (
            (OPERATOR_USER, rbac / "prometheus-operator" / "prometheus-operator-cluster-role.yaml"),
            (PROMETHEUS_USER, rbac / "prometheus" / "prometheus-cluster-role.yaml"),
        ):
            role = yaml.safe_load(path.read_text())
            objects.append(role)
            objects.append(
                {
                    "apiVersion": "rbac.authorization.k8s.io/v1",
                    "kind": "ClusterRoleBinding",
                    "metadata": {"name": f"ccs-e2e-{user}"},
                    "roleRef": {
                        "apiGroup": "rbac.authorization.k8s.io",
                        "kind": "ClusterRole",
                        "name": role["metadata"]["name"],
                    },
                    "subjects": [
                        {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}
                    ],
                }
            )
        return objects

    def _resources(self, version: str) -> list[dict[str, Any]]:
        return [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": self.layout.namespace}},
            prometheus_resource(
                version, self.scrape_interval, self.layout.name, self.layout.namespace
            ),
        ]

    def _apply(self, objects: list[dict[str, Any]]) -> None:
        problem = self.cluster.apply(objects, FIELD_MANAGER)
        if problem is not None:
            raise MonitoringError(f"kubectl apply failed: {problem}")

    def _ensure_operator(self, binary: Path, server: str, port: int, timeout: float) -> None:
        component = "prometheus-operator"
        pid = self._pid(component)
        if pid is None:
            pki_dir = self.cluster.state_dir / "pki"
            argv = [
                str(binary),
                f"--apiserver={server}",
                f"--ca-file={pki_dir / 'ca.crt'}",
                f"--cert-file={pki_dir / f'client-{OPERATOR_USER}.crt'}",
                f"--key-file={pki_dir / f'client-{OPERATOR_USER}.key'}",
                f"--web.listen-address=127.0.0.1:{port}",
                # Prometheus resources live in one namespace; monitors are read everywhere.
                f"--prometheus-instance-namespaces={self.layout.namespace}",
                "--log-level=info",
            ]
            _log(f"starting {component} (log: {self.layout.log(component)})")
            pid = procs.start(
                argv, self.layout.pidfile(component), self.layout.log(component), self.layout.dir
            ).pid
        self._wait(
            lambda: _http_ok(f"http://127.0.0.1:{port}/healthz"),
            timeout,
            component,
            component,
            pid,
        )

    def _ensure_prometheus(self, binary: str, port: int, timeout: float) -> None:
        component = "prometheus"
        self.network.bridge_out(port)
        pid = self._pid(component)
        if pid is None:
            self.layout.data_dir.mkdir(parents=True, exist_ok=True)
            argv = self.network.wrap(
                [
                    binary,
                    f"--config.file={self.layout.config}",
                    f"--web.listen-address=127.0.0.1:{port}",
                    f"--storage.tsdb.path={self.layout.data_dir}",
                    "--storage.tsdb.retention.time=6h",
                    "--web.enable-lifecycle",
                    "--log.level=info",
                ]
            )
            _log(f"starting {component} in {self.network.name} (log: {self.layout.log(component)})")
            pid = procs.start(
                argv, self.layout.pidfile(component), self.layout.log(component), self.layout.dir
            ).pid
        self._wait(lambda: _http_ok(f"{self.url}/-/ready"), timeout, component, component, pid)

    def _ensure_sync(self) -> None:
        component = "monitoring-sync"
        if self._pid(component) is not None:
            return
        root = str(Path(__file__).resolve().parent.parent)
        argv = [
            sys.executable,
            "-m",
            "e2e.monitoring",
            "sync",
            self.layout.sync_marker,
            f"--name={self.layout.name}",
            f"--namespace={self.layout.namespace}",
        ]
        _log(f"starting {component} (log: {self.layout.log(component)})")
        env = {**os.environ, "PYTHONPATH": root, "PYTHONUNBUFFERED": "1"}
        procs.start(
            argv, self.layout.pidfile(component), self.layout.log(component), self.layout.dir, env
        )

    def _wait(
        self,
        check: Callable[[], bool],
        timeout: float,
        what: str,
        component: str,
        pid: int | None = None,
    ) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            if pid is not None and not procs.alive(pid):
                raise MonitoringError(self._failure(component, f"exited while waiting for {what}"))
            if time.monotonic() > deadline:
                raise MonitoringError(self._failure(component, f"no {what} after {timeout:.0f}s"))
            time.sleep(0.25)

    def _failure(self, component: str, what: str) -> str:
        log = self.layout.log(component)
        lines = log.read_text(errors="replace").splitlines()[-25:] if log.exists() else []
        tail = "\n".join(f"    {line}" for line in lines)
        return f"{component}: {what}; see {log}; last lines:\n{tail}"

    # --- queries (root namespace, through the bridge) -----------------------------------------
    def api(self, path: str, params: Mapping[str, str] | None = None) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}{path}{query}", timeout=10) as response:
            body = json.load(response)
        if body.get("status") != "success":
            raise MonitoringError(f"{path}: {body}")
        return body["data"]

    def loaded_jobs(self) -> list[str]:
        """The scrape jobs of the configuration Prometheus runs now."""
        loaded = yaml.safe_load(self.api("/api/v1/status/config")["yaml"]) or {}
        return [str(job["job_name"]) for job in loaded.get("scrape_configs") or []]

    def active_targets(self) -> list[dict[str, Any]]:
        return list(self.api("/api/v1/targets", {"state": "active"})["activeTargets"])

    def targets_of(self, job_glob: str) -> list[dict[str, Any]]:
        """Active targets whose scrape pool (job_name) matches `job_glob`."""
        return [t for t in self.active_targets() if fnmatch.fnmatch(t["scrapePool"], job_glob)]

    def wait_until(
        self, predicate: Callable[[], bool], timeout: float, describe: Callable[[], str]
    ) -> None:
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(OSError, MonitoringError):
                if predicate():
                    return
            if time.monotonic() > deadline:
                raise TimeoutError(f"after {timeout:.0f}s: {describe()}")
            time.sleep(0.5)


def servicemonitor_job(namespace: str, name: str, endpoint: int = 0) -> str:
    """The job_name prometheus-operator gives a ServiceMonitor's endpoint."""
    return f"serviceMonitor/{namespace}/{name}/{endpoint}"


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


# --- command line: `python -m e2e.monitoring up|down|status` (and the detached `sync`) ----


def _sync_main(state_dir: Path, name: str, namespace: str) -> int:
    cluster = LocalCluster(state_dir)
    stack = MonitoringStack(cluster, name=name, namespace=namespace)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with cluster.api_client() as api_client:
        sync = ConfigSync(stack.layout, api_client, reload=lambda: _reload(stack.url))
        _log(f"syncing Secret {namespace}/{stack.layout.secret} to {stack.layout.config}")
        sync._resync_logged()
        sync.run(stop)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m e2e.monitoring",
        description="prometheus-operator and Prometheus for the running local cluster.",
    )
    parser.add_argument("--state-dir", type=Path, help="the cluster's state dir")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("up", help="start (or reuse) the stack; prints `export CCS_PROMETHEUS_URL=...`")
    sub.add_parser("down", help="stop the stack (its data and the Prometheus resource stay)")
    sub.add_parser("status", help="say which parts run")
    sync = sub.add_parser("sync", help="(internal) the detached Secret-to-file sync")
    sync.add_argument("--monitoring-state", type=Path, required=True)
    sync.add_argument("--name", default=NAME)
    sync.add_argument("--namespace", default=NAMESPACE)
    args = parser.parse_args(argv)
    if args.command == "sync":
        return _sync_main(args.monitoring_state, args.name, args.namespace)
    cluster = LocalCluster(args.state_dir)
    stack = MonitoringStack(cluster)
    try:
        if args.command == "up":
            if not any(s.running for s in cluster.status() if s.name == "kube-apiserver"):
                raise MonitoringError("the cluster is not running; start it: python -m e2e up")
            stack.up()
            print(f"export CCS_PROMETHEUS_URL={stack.url}")
        elif args.command == "down":
            if not stack.down():
                _log("nothing was running")
        else:
            states = stack.status()
            for state in states:
                what = f"running (pid {state.pid})" if state.running else "stopped"
                print(f"{state.name:<24} {what:<22} log: {state.log}")
            print(f"prometheus: {stack.url}")
            return 0 if all(s.running for s in states) else 3
    except MonitoringError as exc:
        _log(f"error: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
