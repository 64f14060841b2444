"""Real Triton behind the pods: the harness's kubelet for pods on Triton-backed nodes.

kwok places pods, gives them addresses from the pod CIDR and marks them Running; for pods on
nodes labelled `e2e.ccs-operator.io/serving=triton` it leaves them unready (e2e.kwok). This
process, running inside the cluster's pod network (e2e.netns), does the rest for each such
pod of a ClaudeCodeService, as a kubelet would:

- assembles the model store with the project's own loader from the pod's ConfigMap volume
  (the config.pbtxt the operator rendered) and its loader init container's arguments, with
  the CPU substitutions `run-local` prints (KIND_GPU -> KIND_CPU, non-Python platforms
  served by the sample model);
- starts the real `tritonserver` with the pod's own container arguments, bound to the
  pod's IP and its container ports;
- probes the container's readinessProbe (path and port from the pod spec, more often than
  a kubelet would, so cold start measures the model load and not the probe period) and
  writes the pod's Ready / ContainersReady conditions and container status;
- when Triton exits, marks the pod unready, counts a restart and starts it again after a
  back-off; when the pod is deleted, stops Running or loses its address, stops its Triton.

At most `max_tritons` servers run at once (a few on a small machine); a pod past that stays
unready with reason NoServingCapacity, and an event says how to raise the limit.

    python -m e2e.podserving --podserving-state=<state dir>   # started by `python -m e2e up`

Settings are re-read every loop from <state>/podserving.json: {"max_tritons": N,
"env": {"CCS_SAMPLE_BATCH_COST_MS": "100", ...}} (extra environment for new Tritons),
"loader_env": {"AWS_ENDPOINT_URL_S3": ..., ...}} (an S3 server a test runs and bridges into
the pod network: s3:// repositories are then downloaded from it, as the init container
would, instead of being served by the sample model). A pod whose loader has --cache-dir
uses the node cache of its own node (<state>/nodes/<node>/model-cache, as the hostPath
would be), and the loader's report becomes the init container's termination message.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from google.protobuf import text_format
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from e2e.kwok import SERVING_LABEL, SERVING_VALUE
from e2e.netns import PodNetwork
from serving_image.loader import S3Settings, assemble, parse_config, termination_message
from serving_image.local import LocalTriton, cpu_model_config, local_source
from serving_image.modelcache import NodeCache

log = logging.getLogger("podserving")

POD_SELECTOR = "app.kubernetes.io/managed-by=ccs-operator"
CONTAINER = "triton"
LOADER = "model-loader"
CONFIG_KEY = "config.pbtxt"
LOOP_S = 0.5
RESTART_BACKOFF_S = (1.0, 2.0, 5.0, 10.0, 30.0)
STARTUP_TIMEOUT_S = 300.0
SETTINGS_FILE = "podserving.json"
HEARTBEAT_FILE = "podserving.alive"
DEFAULT_MAX_TRITONS = max(2, 2 * (os.cpu_count() or 1))
EVENT_SOURCE = "ccs-e2e-podserving"


class PodSetupError(RuntimeError):
    """The pod cannot be served (missing ConfigMap, unusable config); said in an event."""


@dataclass(frozen=True)
class Settings:
    max_tritons: int = DEFAULT_MAX_TRITONS
    env: Mapping[str, str] = field(default_factory=dict)
    loader_env: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def read(cls, path: Path) -> Settings:
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            return cls()
        except (OSError, ValueError) as exc:
            log.warning("ignoring %s: %s", path, exc)
            return cls()
        return cls(
            max_tritons=int(raw.get("max_tritons", DEFAULT_MAX_TRITONS)),
            env={str(k): str(v) for k, v in (raw.get("env") or {}).items()},
            loader_env={str(k): str(v) for k, v in (raw.get("loader_env") or {}).items()},
        )


def write_settings(
    state_dir: Path,
    max_tritons: int | None = None,
    env: Mapping[str, str] | None = None,
    loader_env: Mapping[str, str] | None = None,
) -> None:
    """Set the limit and extra environment for Tritons (and loaders) started from now on."""
    current = Settings.read(state_dir / SETTINGS_FILE)
    body = {
        "max_tritons": current.max_tritons if max_tritons is None else max_tritons,
        "env": dict(current.env if env is None else env),
        "loader_env": dict(current.loader_env if loader_env is None else loader_env),
    }
    path = state_dir / SETTINGS_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(body, indent=1) + "\n")
    tmp.replace(path)


def pod_tritons() -> list[int]:
    """pids of the tritonserver processes bound to pod addresses (read from /proc).

    Tests size `max_tritons` against what already runs (a demo left running, say)."""
    return list(pod_triton_addresses())


def pod_triton_addresses() -> dict[int, str]:
    """pid -> pod address of every tritonserver bound to a pod address (from /proc)."""
    found = {}
    prefix = b"--http-address="
    for entry in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = entry.read_bytes().split(b"\0")
        except OSError:
            continue
        if not argv or not argv[0].endswith(b"tritonserver"):
            continue
        for a in argv:
            if a.startswith(prefix + b"10.244."):
                found[int(entry.parent.name)] = a[len(prefix) :].decode()
    return found


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class PodPlan:
    """What serving one pod needs, read from the pod spec alone."""

    namespace: str
    name: str
    uid: str
    ip: str
    config_map: str
    repository: str
    model_name: str
    args: tuple[str, ...]
    ports: Mapping[str, int]
    probe_path: str
    probe_port: int
    image: str
    node: str = ""
    loader_args: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}/{self.uid}"


def _arg(args: Iterable[str], flag: str) -> str | None:
    items = list(args)
    for i, item in enumerate(items):
        if item == flag and i + 1 < len(items):
            return items[i + 1]
        if item.startswith(flag + "="):
            return item.split("=", 1)[1]
    return None


def plan_for(pod: Any) -> PodPlan:
    """Read a pod (kubernetes client V1Pod) into what serving it needs; raises PodSetupError."""
    spec = pod.spec
    containers = {c.name: c for c in spec.containers or []}
    inits = {c.name: c for c in spec.init_containers or []}
    if CONTAINER not in containers:
        raise PodSetupError(f"the pod has no container named {CONTAINER!r}")
    triton = containers[CONTAINER]
    ports = {p.name: int(p.container_port) for p in triton.ports or [] if p.name}
    config_maps = [v.config_map.name for v in spec.volumes or [] if v.config_map]
    if not config_maps:
        raise PodSetupError("the pod mounts no ConfigMap with the model's config.pbtxt")
    loader_args = list(inits[LOADER].args or []) if LOADER in inits else []
    repository = _arg(loader_args, "--repository") or ""
    model_name = _arg(loader_args, "--model-name") or ""
    if not model_name:
        raise PodSetupError(f"the {LOADER} init container names no --model-name")
    probe = triton.readiness_probe
    probe_path, probe_port = "/v2/health/ready", ports.get("http", 8000)
    if probe is not None and probe.http_get is not None:
        probe_path = probe.http_get.path or probe_path
        port = probe.http_get.port
        probe_port = ports[port] if isinstance(port, str) and port in ports else int(port)
    return PodPlan(
        namespace=pod.metadata.namespace,
        name=pod.metadata.name,
        uid=pod.metadata.uid,
        ip=pod.status.pod_ip,
        config_map=config_maps[0],
        repository=repository,
        model_name=model_name,
        args=tuple(triton.args or ()),
        ports=ports,
        probe_path=probe_path,
        probe_port=probe_port,
        image=triton.image or "",
        node=spec.node_name or "",
        loader_args=tuple(loader_args),
    )


def wants_serving(pod: Any, served_nodes: set[str]) -> bool:
    status = pod.status
    return bool(
        pod.metadata.deletion_timestamp is None
        and pod.spec.node_name in served_nodes
        and status is not None
        and status.phase == "Running"
        and status.pod_ip
    )


@dataclass
class Served:
    plan: PodPlan
    triton: LocalTriton | None = None
    workdir: Path | None = None
    ready: bool | None = None  # what was last written to the pod
    restarts: int = 0
    not_before: float = 0.0
    launched_at: float = 0.0
    blocked: str | None = None  # why it is not running (capacity, setup error)
    loader_report: str | None = None  # the init container's termination message


class PodServer:
    def __init__(self, state_dir: Path, api: client.ApiClient) -> None:
        self.state_dir = state_dir
        self.network = PodNetwork.for_state_dir(state_dir)
        self.core = client.CoreV1Api(api)
        self.pods: dict[str, Served] = {}
        self.served_nodes: set[str] = set()
        self._nodes_read = 0.0
        self.logs = state_dir / "logs" / "triton"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.stopping = threading.Event()
        # Addresses whose old Triton is still shutting down: a new pod given the same
        # address by kwok waits, so its probe never reaches the old server.
        self._draining: set[str] = set()
        self._draining_lock = threading.Lock()

    # -- the loop ------------------------------------------------------------------------
    def run(self) -> None:
        log.info("serving pods on nodes labelled %s=%s", SERVING_LABEL, SERVING_VALUE)
        heartbeat = self.state_dir / "run" / HEARTBEAT_FILE
        while not self.stopping.is_set():
            try:
                self.step()
                heartbeat.touch()
            except ApiException as exc:
                log.warning("API error (%s %s); retrying", exc.status, exc.reason)
            except Exception:  # one bad pass never ends the kubelet
                log.exception("serving pass failed; retrying")
            self.stopping.wait(LOOP_S)
        for served in list(self.pods.values()):
            self._stop(served, wait=True)

    def step(self) -> None:
        settings = Settings.read(self.state_dir / SETTINGS_FILE)
        if time.monotonic() - self._nodes_read > 10 or not self.served_nodes:
            nodes = self.core.list_node(label_selector=f"{SERVING_LABEL}={SERVING_VALUE}")
            self.served_nodes = {n.metadata.name for n in nodes.items}
            self._nodes_read = time.monotonic()
        pods = self.core.list_pod_for_all_namespaces(label_selector=POD_SELECTOR).items
        wanted = {}
        for pod in pods:
            if wants_serving(pod, self.served_nodes):
                key = f"{pod.metadata.namespace}/{pod.metadata.name}/{pod.metadata.uid}"
                wanted[key] = pod
        for key in list(self.pods):
            if key not in wanted:
                self._stop(self.pods.pop(key), wait=False)
        for key, pod in wanted.items():
            served = self.pods.get(key)
            if served is None:
                try:
                    served = Served(plan_for(pod))
                except PodSetupError as exc:
                    self._unservable(pod, str(exc))
                    continue
                self.pods[key] = served
            self._tend(served, settings)

    def running_count(self) -> int:
        with self._draining_lock:
            draining = len(self._draining)
        return draining + sum(1 for s in self.pods.values() if s.triton is not None)

    def _tend(self, served: Served, settings: Settings) -> None:
        plan = served.plan
        if served.triton is None:
            if time.monotonic() < served.not_before:
                return
            with self._draining_lock:
                if plan.ip in self._draining:
                    return
            if self.running_count() >= settings.max_tritons:
                why = (
                    f"no Triton slot on this machine ({settings.max_tritons} of "
                    f"{settings.max_tritons} running); raise max_tritons in "
                    f"{self.state_dir / SETTINGS_FILE} or lower the replicas"
                )
                if served.blocked != why:
                    served.blocked = why
                    self._set_ready(served, False, "NoServingCapacity", why)
                    self._event(plan, "Warning", "NoServingCapacity", why)
                return
            try:
                self._launch(served, settings)
            except PodSetupError as exc:
                served.blocked = str(exc)
                served.not_before = time.monotonic() + RESTART_BACKOFF_S[-1]
                self._set_ready(served, False, "ModelSetupFailed", str(exc))
                self._event(plan, "Warning", "ModelSetupFailed", str(exc))
            return
        triton = served.triton
        if not triton.running:
            code = triton.exit_code
            self._stop(served, wait=False)  # keeps its log
            served.restarts += 1
            delay = RESTART_BACKOFF_S[min(served.restarts - 1, len(RESTART_BACKOFF_S) - 1)]
            served.not_before = time.monotonic() + delay
            message = f"tritonserver exited with code {code}; restarting in {delay:.0f}s"
            self._set_ready(served, False, "TritonExited", message)
            self._event(plan, "Warning", "BackOff", message)
            return
        self.network.require_inside(f"{plan.ip}:{plan.probe_port}")
        ok = _probe(f"http://{plan.ip}:{plan.probe_port}{plan.probe_path}")
        if ok != served.ready:
            if ok:
                took = time.monotonic() - served.launched_at
                self._set_ready(served, True, None, None)
                self._event(
                    plan,
                    "Normal",
                    "TritonReady",
                    f"tritonserver ready on {plan.ip} after {took:.1f}s",
                )
                log.info("%s ready after %.1fs", plan.key, took)
            elif served.ready is not None or time.monotonic() - served.launched_at > 1:
                self._set_ready(
                    served,
                    False,
                    "ReadinessProbeFailed",
                    f"GET {plan.probe_path} on port {plan.probe_port} not ready",
                )
        if not ok and time.monotonic() - served.launched_at > STARTUP_TIMEOUT_S:
            self._event(
                plan,
                "Warning",
                "Unhealthy",
                f"tritonserver not ready after {STARTUP_TIMEOUT_S:.0f}s; restarting",
            )
            triton.stop(keep_files=True)

    # -- one Triton ----------------------------------------------------------------------
    def _launch(self, served: Served, settings: Settings) -> None:
        plan = served.plan
        self.network.require_inside(f"{plan.ip}:{plan.probe_port}")
        try:
            cm = self.core.read_namespaced_config_map(plan.config_map, plan.namespace)
        except ApiException as exc:
            if exc.status == 404:
                raise PodSetupError(f"ConfigMap {plan.config_map} not found") from None
            raise
        text = (cm.data or {}).get(CONFIG_KEY)
        if not text:
            raise PodSetupError(f"ConfigMap {plan.config_map} has no {CONFIG_KEY}")
        try:
            model_config, notes = cpu_model_config(parse_config(text, f"{plan.config_map}"))
        except Exception as exc:  # the loader's message names the field
            raise PodSetupError(f"{plan.config_map}/{CONFIG_KEY}: {exc}") from None
        s3: S3Settings | None = None
        cache: NodeCache | None = None
        if plan.repository.startswith("s3://") and settings.loader_env:
            source, source_notes = plan.repository, []
            s3 = S3Settings.from_env(settings.loader_env)
            if _arg(plan.loader_args, "--cache-dir"):
                limit = int(_arg(plan.loader_args, "--cache-limit-bytes") or 0)
                cache = NodeCache(self.node_cache_dir(plan.node), limit)
        else:
            source, source_notes = local_source(plan.repository, model_config.backend == "python")
        workdir = Path(tempfile.mkdtemp(prefix=f"pod-{plan.name}-", dir=self._serving_dir()))
        config_path = workdir / "config.pbtxt"
        config_path.write_text(text_format.MessageToString(model_config))
        store = workdir / "models"
        report: dict[str, object] = {}
        start = time.monotonic()
        try:
            assemble(
                source, plan.model_name, config_path, store, s3=s3, cache=cache, report=report
            )
        except Exception as exc:
            shutil.rmtree(workdir, ignore_errors=True)
            raise PodSetupError(f"model store: {exc}") from None
        served.loader_report = termination_message(report, start)
        triton = LocalTriton(
            store,
            server_args=list(plan.args),
            host=plan.ip,
            http_port=plan.ports.get("http", 8000),
            grpc_port=plan.ports.get("grpc", 8001),
            metrics_port=plan.ports.get("metrics", 8002),
            env=dict(settings.env),
            notes=notes + source_notes,
        )
        triton.launch()
        served.triton, served.workdir, served.blocked = triton, workdir, None
        served.launched_at = time.monotonic()
        local = "; ".join(triton.notes) or "none"
        self._event(
            plan,
            "Normal",
            "TritonStarted",
            f"tritonserver started on {plan.ip} (local substitutions: {local})",
        )
        log.info("%s: started tritonserver on %s (%s)", plan.key, plan.ip, local)

    def node_cache_dir(self, node: str) -> Path:
        """What the node's hostPath holds: one model cache per (fake) node."""
        return self.state_dir / "nodes" / (node or "unknown") / "model-cache"

    def _serving_dir(self) -> Path:
        path = self.state_dir / "serving"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _keep_log(self, plan: PodPlan, triton: LocalTriton) -> None:
        """The server's log under logs/triton/, before stop() removes its work dir."""
        if triton.log_path is not None and triton.log_path.exists():
            with contextlib.suppress(OSError):
                shutil.copy2(triton.log_path, self.logs / f"{plan.namespace}_{plan.name}.log")

    def _stop(self, served: Served, wait: bool) -> None:
        triton, workdir = served.triton, served.workdir
        served.triton = served.workdir = None
        if triton is None:
            return
        self._keep_log(served.plan, triton)
        log.info("%s: stopping tritonserver", served.plan.key)

        ip = served.plan.ip
        with self._draining_lock:
            self._draining.add(ip)

        def stop() -> None:
            try:
                triton.stop()
                if workdir is not None:
                    shutil.rmtree(workdir, ignore_errors=True)
            finally:
                with self._draining_lock:
                    self._draining.discard(ip)

        if wait:
            stop()
        else:
            threading.Thread(target=stop, name=f"stop-{served.plan.name}", daemon=True).start()

    # -- writing to the pod ----------------------------------------------------------------
    def _set_ready(
        self, served: Served, ready: bool, reason: str | None, message: str | None
    ) -> None:
        plan, now = served.plan, _now()
        value = "True" if ready else "False"
        conditions = [
            {
                "type": kind,
                "status": value,
                "lastTransitionTime": now,
                "reason": reason,
                "message": message,
            }
            for kind in ("Ready", "ContainersReady")
        ]
        state: dict[str, Any] = (
            {"running": {"startedAt": now}}
            if served.triton is not None
            else {"waiting": {"reason": reason or "Waiting", "message": message}}
        )
        body = {
            "status": {
                "conditions": conditions,
                "containerStatuses": [
                    {
                        "name": CONTAINER,
                        "image": plan.image,
                        "imageID": "",
                        "ready": ready,
                        "started": served.triton is not None,
                        "restartCount": served.restarts,
                        "state": state,
                    }
                ],
            }
        }
        if served.loader_report is not None:
            body["status"]["initContainerStatuses"] = [
                {
                    "name": LOADER,
                    "image": plan.image,
                    "imageID": "",
                    "ready": True,
                    "restartCount": 0,
                    "state": {
                        "terminated": {
                            "exitCode": 0,
                            "reason": "Completed",
                            "message": served.loader_report,
                        }
                    },
                }
            ]
        try:
            self.core.patch_namespaced_pod_status(plan.name, plan.namespace, body)
            served.ready = ready
        except ApiException as exc:
            if exc.status != 404:
                raise

    def _unservable(self, pod: Any, why: str) -> None:
        log.warning("%s/%s cannot be served: %s", pod.metadata.namespace, pod.metadata.name, why)

    def _event(self, plan: PodPlan, kind: str, reason: str, message: str) -> None:
        body = {
            "metadata": {"generateName": f"{plan.name}.", "namespace": plan.namespace},
            "involvedObject": {
                "kind": "Pod",
                "apiVersion": "v1",
                "namespace": plan.namespace,
                "name": plan.name,
                "uid": plan.uid,
                "fieldPath": f"spec.containers{{{CONTAINER}}}",
            },
            "reason": reason,
            "message": message[:1000],
            "type": kind,
            "source": {"component": EVENT_SOURCE},
            "firstTimestamp": _now(),
            "lastTimestamp": _now(),
            "count": 1,
        }
        try:
            self.core.create_namespaced_event(plan.namespace, body)
        except ApiException as exc:
            if exc.status not in (403, 404, 409):
                log.warning("event %s on %s not written: %s", reason, plan.key, exc.reason)


def _probe(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m e2e.podserving", description=__doc__)
    parser.add_argument(
        "--podserving-state", type=Path, required=True, help="the cluster state directory"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s"
    )
    state_dir = args.podserving_state.resolve()
    network = PodNetwork.for_state_dir(state_dir)
    if not network.inside():
        print(
            f"podserving: must run inside the pod network {network.name} "
            "(it dials pod addresses); `python -m e2e up` starts it there",
            file=sys.stderr,
        )
        return 2
    api = config.new_client_from_config(config_file=str(state_dir / "kubeconfig"))
    server = PodServer(state_dir, api)

    def _terminate(signum: int, frame: object) -> None:
        server.stopping.set()

    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, _terminate)
    server.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
