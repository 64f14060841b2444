"""Pure: (service, floor, settings) -> the child manifests of a ClaudeCodeService.

No I/O beyond reading the packaged templates once, no clock, no environment. Every value
enters a template through `tojson`, which stands in a placeholder for it: the YAML parser
sees only the templates' own text, so no user string can inject structure (see `_render`).
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

import jinja2
import yaml

from ccs_operator import __version__
from ccs_operator.core.api import (
    API_GROUP,
    API_VERSION,
    KIND,
    ClaudeCodeService,
    LabelSelector,
    NetworkPeer,
    ServiceSpec,
)
from ccs_operator.core.promql import (
    DEFAULT_WINDOW,
    REQUEST_FAILURE_METRIC,
    REQUEST_SUCCESS_METRIC,
    p99_queue_latency_query,
    quote_label_value,
    validate_window,
)
from ccs_operator.core.tritonconfig import config_hash, render_config_pbtxt

TEMPLATES_DIR = Path(__file__).resolve().parents[1] / "templates"
MODEL_CONFIG_MOUNT = "/etc/ccs/model-config"
MODEL_STORE_MOUNT = "/models"
PVC_MOUNT_ROOT = "/mnt/pvc"
MODEL_CACHE_MOUNT = "/var/cache/ccs-models"
CONFIG_HASH_ANNOTATION = f"{API_GROUP}/config-hash"
SERVICE_LABEL = f"{API_GROUP}/service"
# On every child and serving pod: the operator lists and watches only objects carrying it.
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY_VALUE = "ccs-operator"
GPU_RESOURCE = "nvidia.com/gpu"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
DEFAULT_LOADER_IMAGE = f"ghcr.io/claudecode/ccs-model-loader:{__version__}"
DEFAULT_PROMETHEUS_URL = "http://prometheus-operated.monitoring.svc:9090"
# Prometheus runs in the `monitoring` namespace (as DEFAULT_PROMETHEUS_URL says).
DEFAULT_METRICS_FROM = (
    NetworkPeer(
        namespace_selector=LabelSelector(match_labels={"kubernetes.io/metadata.name": "monitoring"})
    ),
)
HPA_KIND = "HorizontalPodAutoscaler"
SCALED_OBJECT_KIND = "ScaledObject"
KEDA_API_VERSION = "keda.sh/v1alpha1"
# The two autoscaler kinds; a service has exactly one of them, the one its engine names.
AUTOSCALER_KINDS = {"HPA": HPA_KIND, "KEDA": SCALED_OBJECT_KIND}
# KEDA copies a ScaledObject's labels to the HPA it creates, unless this annotation lists
# them: the HPA KEDA makes and owns must not say it is managed by ccs-operator.
KEDA_EXCLUDED_LABELS_ANNOTATION = "scaledobject.keda.sh/hpa-excluded-labels"


@dataclass(frozen=True)
class RenderSettings:
    """Operator-level inputs to rendering (from the operator's config, not the ccs)."""

    loader_image: str = DEFAULT_LOADER_IMAGE
    # Whether the monitoring.coreos.com ServiceMonitor CRD is served by the cluster.
    service_monitor_crd: bool = True
    # KEDA mode: the Prometheus server the ScaledObject's triggers query (the operator's own
    # Prometheus URL), the rate window of their queries (the floor's), and an optional
    # ClusterTriggerAuthentication the triggers authenticate with (e.g. a bearer token).
    prometheus_url: str = DEFAULT_PROMETHEUS_URL
    rate_window: str = DEFAULT_WINDOW
    keda_authentication: str | None = None
    # Where Prometheus scrapes from (NetworkPolicy peers): admitted to the serving pods'
    # metrics port when spec.networkPolicy is on (the chart's networkPolicy.metricsFrom).
    metrics_from: tuple[NetworkPeer, ...] = DEFAULT_METRICS_FROM


@dataclass(frozen=True)
class ChildNames:
    deployment: str
    config_map: str
    service: str
    hpa: str
    service_monitor: str
    scaled_object: str
    network_policy: str
    # The HPA KEDA creates for the ScaledObject (KEDA's, never applied or deleted by us).
    keda_hpa: str

    @classmethod
    def of(cls, name: str) -> ChildNames:
        return cls(
            deployment=name,
            config_map=f"{name}-model-config",
            service=name,
            hpa=name,
            service_monitor=name,
            scaled_object=name,
            network_policy=name,
            keda_hpa=f"keda-hpa-{name}",
        )

    def autoscaler(self, engine: str) -> tuple[str, str]:
        """(kind, name) of the autoscaler `engine` renders."""
        kind = AUTOSCALER_KINDS[engine]
        return kind, self.hpa if kind == HPA_KIND else self.scaled_object


def selector_labels(name: str) -> dict[str, str]:
    """Labels that select the service's pods; immutable once the Deployment exists."""
    return {SERVICE_LABEL: name}


def common_labels(ccs: ClaudeCodeService) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "triton-inference-server",
        "app.kubernetes.io/instance": ccs.name,
        "app.kubernetes.io/component": "inference",
        "app.kubernetes.io/part-of": ccs.name,
        MANAGED_BY_LABEL: MANAGED_BY_VALUE,
        **selector_labels(ccs.name),
    }


def owner_references(ccs: ClaudeCodeService) -> list[dict[str, Any]]:
    if not ccs.uid:
        # Rendering a file offline: there is no owner yet.
        return []
    return [
        {
            "apiVersion": f"{API_GROUP}/{API_VERSION}",
            "kind": KIND,
            "name": ccs.name,
            "uid": ccs.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]


def autoscaler_min_replicas(spec: ServiceSpec, floor: int | None) -> int:
    """The autoscaler's minimum (the HPA's minReplicas, the ScaledObject's minReplicaCount):
    the floor when the floor controller runs, clamped to the spec bounds.

    0 only where spec.replicas.min is 0, which the CRD allows only with the requests-per-second
    metric (an External metric for the HPA: Kubernetes' HPAScaleToZero needs one).
    """
    wanted = spec.replicas.min
    if spec.autoscaling.floor.enabled and floor is not None:
        wanted = max(wanted, floor)
    return max(0, min(wanted, spec.replicas.max))


def _pvc_claim(repository: str) -> str | None:
    if not repository.startswith("pvc://"):
        return None
    return repository.removeprefix("pvc://").split("/", 1)[0]


def _volumes_and_mounts(ccs: ClaudeCodeService) -> tuple[list[Any], list[Any], list[Any]]:
    names = ChildNames.of(ccs.name)
    volumes: list[dict[str, Any]] = [
        {"name": "model-config", "configMap": {"name": names.config_map}},
        {"name": "model-store", "emptyDir": {}},
        {
            "name": "dshm",
            "emptyDir": {"medium": "Memory", "sizeLimit": ccs.spec.resources.shm_size},
        },
        # The root filesystems are read-only; scratch space for both containers.
        {"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}},
    ]
    tmp = {"name": "tmp", "mountPath": "/tmp"}
    store = {"name": "model-store", "mountPath": MODEL_STORE_MOUNT}
    loader_mounts: list[dict[str, Any]] = [
        {"name": "model-config", "mountPath": MODEL_CONFIG_MOUNT, "readOnly": True},
        store,
        tmp,
    ]
    triton_mounts: list[dict[str, Any]] = [
        {**store, "readOnly": True},
        {"name": "dshm", "mountPath": "/dev/shm"},
        tmp,
    ]
    claim = _pvc_claim(ccs.spec.model.repository)
    if claim is not None:
        volumes.append(
            {"name": "model-pvc", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}
        )
        # Mounted in both containers: the loader links version directories into the store
        # and the links must resolve inside Triton's container too.
        pvc_mount = {
            "name": "model-pvc",
            "mountPath": f"{PVC_MOUNT_ROOT}/{claim}",
            "readOnly": True,
        }
        loader_mounts.append(pvc_mount)
        triton_mounts.append(pvc_mount)
    cache = ccs.spec.model.cache
    if cache.enabled:
        # The node's cache: only the loader sees it; Triton reads the pod's own copy, so an
        # eviction or a Triton restart never finds a model gone.
        volumes.append(
            {
                "name": "model-cache",
                "hostPath": {"path": cache.host_path, "type": "DirectoryOrCreate"},
            }
        )
        loader_mounts.append({"name": "model-cache", "mountPath": MODEL_CACHE_MOUNT})
    return volumes, loader_mounts, triton_mounts


# A node that runs one of the service's replicas holds its model in the node cache.
WARM_NODE_WEIGHT = 100


def _affinity(ccs: ClaudeCodeService) -> dict[str, Any] | None:
    """The user's affinity; with the node cache, plus a preference for warm nodes.

    The preference is a pod affinity to the service's own replicas per node, so the pod
    template stays the same whatever nodes are warm (no rollout when a node fills); the
    scheduler weighs it against spreading and still decides."""
    spec_affinity = ccs.spec.affinity
    if not ccs.spec.model.cache.enabled:
        return spec_affinity
    affinity = copy.deepcopy(spec_affinity or {})
    pod_affinity = affinity.setdefault("podAffinity", {})
    preferred = pod_affinity.setdefault("preferredDuringSchedulingIgnoredDuringExecution", [])
    preferred.append(
        {
            "weight": WARM_NODE_WEIGHT,
            "podAffinityTerm": {
                "labelSelector": {"matchLabels": selector_labels(ccs.name)},
                "topologyKey": "kubernetes.io/hostname",
            },
        }
    )
    return affinity


def _resources(spec: ServiceSpec) -> dict[str, Any]:
    res = spec.resources
    limits: dict[str, Any] = {"cpu": str(res.cpu), "memory": str(res.memory)}
    if res.gpus > 0:
        limits[GPU_RESOURCE] = str(res.gpus)
    return {"requests": {"cpu": str(res.cpu), "memory": str(res.memory)}, "limits": limits}


def _tolerations(spec: ServiceSpec) -> list[dict[str, Any]]:
    tolerations = [t.model_dump(by_alias=True, exclude_none=True) for t in spec.tolerations]
    if spec.resources.gpus > 0 and not any(t.get("key") == GPU_RESOURCE for t in tolerations):
        tolerations.insert(0, {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"})
    return tolerations


def _node_selector(spec: ServiceSpec) -> dict[str, str]:
    selector = dict(spec.node_selector)
    if spec.resources.gpu_product:
        selector[GPU_PRODUCT_LABEL] = spec.resources.gpu_product
    return selector


def triton_args(spec: ServiceSpec) -> list[str]:
    return [
        f"--model-repository={MODEL_STORE_MOUNT}",
        f"--http-port={spec.ports.http}",
        f"--grpc-port={spec.ports.grpc}",
        f"--metrics-port={spec.ports.metrics}",
        "--allow-metrics=true",
        # Queue-time quantiles (nv_inference_queue_summary_us) feed the floor's p99 signal.
        "--metrics-config=summary_latencies=true",
        "--strict-readiness=true",
        "--exit-on-error=true",
    ]


def loader_args(spec: ServiceSpec) -> list[str]:
    args = [
        "--repository",
        spec.model.repository,
        "--model-name",
        spec.model.name,
        "--config",
        f"{MODEL_CONFIG_MOUNT}/config.pbtxt",
        "--model-store",
        MODEL_STORE_MOUNT,
    ]
    if spec.model.cache.enabled:
        args += [
            "--cache-dir",
            MODEL_CACHE_MOUNT,
            "--cache-limit-bytes",
            str(spec.model.cache.size_limit_bytes),
        ]
    # What the loader did (cache hit or miss, seconds) reaches the pod's status.
    return [*args, "--report", "/dev/termination-log"]


def _hpa_metrics(ccs: ClaudeCodeService) -> list[dict[str, Any]]:
    autoscaling = ccs.spec.autoscaling
    metrics: list[dict[str, Any]] = []
    if autoscaling.cpu_utilization > 0:
        metrics.append(
            {
                "type": "Resource",
                "resource": {
                    "name": "cpu",
                    "target": {
                        "type": "Utilization",
                        "averageUtilization": autoscaling.cpu_utilization,
                    },
                },
            }
        )
    if autoscaling.requests_per_second > 0:
        metrics.append(
            {
                "type": "External",
                "external": {
                    "metric": {
                        "name": "requests_per_second",
                        "selector": {"matchLabels": {"service": ccs.name}},
                    },
                    "target": {
                        "type": "AverageValue",
                        "averageValue": str(autoscaling.requests_per_second),
                    },
                },
            }
        )
    return metrics


def autoscaling_behavior(spec: ServiceSpec) -> dict[str, Any]:
    """The HPA's scaling behaviour, the same for our HPA and for the one KEDA creates."""
    return {
        "scaleDown": {
            "stabilizationWindowSeconds": spec.autoscaling.scale_down_stabilization_seconds,
            "selectPolicy": "Max",
            "policies": [{"type": "Pods", "value": 1, "periodSeconds": 60}],
        },
        "scaleUp": {
            "stabilizationWindowSeconds": 0,
            "selectPolicy": "Max",
            "policies": [
                {"type": "Percent", "value": 100, "periodSeconds": 30},
                {"type": "Pods", "value": 4, "periodSeconds": 30},
            ],
        },
    }


def requests_per_second_query(ccs: ClaudeCodeService, window: str = DEFAULT_WINDOW) -> str:
    """Triton's successful + failed inference requests per second, summed over the service's
    pods (one series, as KEDA's Prometheus scaler needs): the quantity the HPA's External
    requests_per_second metric carries. A service that never failed has no failure series:
    it counts 0 failures. No pod scraped: no series at all (KEDA reads 0)."""
    w = validate_window(window)
    selector = (
        f"{{namespace={quote_label_value(ccs.namespace)}, "
        f"service={quote_label_value(ccs.name)}}}"
    )
    return (
        f"sum(rate({REQUEST_SUCCESS_METRIC}{selector}[{w}]))"
        f" + (sum(rate({REQUEST_FAILURE_METRIC}{selector}[{w}])) or vector(0))"
    )


def keda_triggers(ccs: ClaudeCodeService, settings: RenderSettings) -> list[dict[str, Any]]:
    """The ScaledObject's triggers: requests per second (AverageValue, like the HPA's External
    metric, with KEDA's activation threshold), CPU where set, and queue latency only where
    the floor is off.

    Why queue latency only then: the floor already raises the minimum in proportion to a
    queue-wait breach, and holds while replicas are still starting. A Value-type latency
    trigger would answer the same breach a second time, inside the HPA, which cannot tell
    a replica still loading its model from one that is not enough, so the two together
    would stack cold starts. Without the floor it is the only latency feedback there is.
    """
    autoscaling = ccs.spec.autoscaling
    auth = (
        {
            "authenticationRef": {
                "name": settings.keda_authentication,
                "kind": "ClusterTriggerAuthentication",
            }
        }
        if settings.keda_authentication
        else {}
    )
    triggers: list[dict[str, Any]] = []
    if autoscaling.requests_per_second > 0:
        triggers.append(
            {
                "type": "prometheus",
                "name": "requests-per-second",
                "metricType": "AverageValue",
                "metadata": {
                    "serverAddress": settings.prometheus_url,
                    "query": requests_per_second_query(ccs, settings.rate_window),
                    "threshold": str(autoscaling.requests_per_second),
                    "activationThreshold": str(autoscaling.activation_requests_per_second),
                    # No series (no pod scraped yet, or none left) reads as 0 requests.
                    "ignoreNullValues": "true",
                },
                **auth,
            }
        )
    if autoscaling.cpu_utilization > 0:
        triggers.append(
            {
                "type": "cpu",
                "name": "cpu",
                "metricType": "Utilization",
                "metadata": {"value": str(autoscaling.cpu_utilization)},
            }
        )
    if not autoscaling.floor.enabled:
        triggers.append(
            {
                "type": "prometheus",
                "name": "queue-latency",
                "metricType": "Value",
                "metadata": {
                    "serverAddress": settings.prometheus_url,
                    "query": p99_queue_latency_query(
                        {"namespace": ccs.namespace, "service": ccs.name}
                    ),
                    "threshold": str(autoscaling.floor.queue_latency_target_ms),
                    # Queue latency never wakes a service from zero (there is none at zero).
                    "activationThreshold": str(autoscaling.floor.queue_latency_target_ms),
                    "ignoreNullValues": "true",
                },
                **auth,
            }
        )
    return triggers


# Every reconcile renders every child, and parsing YAML was most of a render (the libyaml
# parser included: PyYAML builds the objects in Python). So the templates are parsed as
# skeletons: `tojson` emits a placeholder for its value, and the text with placeholders
# depends only on which `{% if %}` branches a template took; each such text is parsed once,
# and a render fills the skeleton's placeholders with plain-JSON copies of its values. The
# result is what parsing the filled text would give (json.dumps with sorted keys, as Jinja's
# own tojson), and no value ever reaches the YAML parser, so no user string can inject
# structure.
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_VALUES = "_ccs_values"
_PLACEHOLDER = re.compile(r"\x00ccs:(\d+)\x00")


@jinja2.pass_context
def _placeholder(context: jinja2.runtime.Context, value: Any) -> str:
    values: list[Any] = context[_VALUES]
    values.append(value)
    return json.dumps(f"\x00ccs:{len(values) - 1}\x00")


@cache
def _environment() -> jinja2.Environment:
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES_DIR)),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        auto_reload=False,  # templates ship with the package; no stat() per render
    )
    environment.filters["tojson"] = _placeholder
    return environment


@lru_cache(maxsize=256)
def _skeleton(text: str) -> Any:
    return yaml.load(text, Loader=_YAML_LOADER)  # a safe loader, C or Python


def _fill(node: Any, values: list[Any]) -> Any:
    if isinstance(node, dict):
        return {key: _fill(item, values) for key, item in node.items()}
    if isinstance(node, list):
        return [_fill(item, values) for item in node]
    if isinstance(node, str):
        placeholder = _PLACEHOLDER.fullmatch(node)
        if placeholder is not None:
            return json.loads(json.dumps(values[int(placeholder[1])], sort_keys=True))
    return node


def _render(template: str, context: dict[str, Any]) -> dict[str, Any]:
    values: list[Any] = []
    text = _environment().get_template(template).render(**context, **{_VALUES: values})
    manifest: dict[str, Any] = _fill(_skeleton(text), values)
    if not manifest["metadata"]["ownerReferences"]:
        del manifest["metadata"]["ownerReferences"]
    return manifest


# Policy checks (checkov's Kubernetes checks) the serving Deployment does not meet, each with
# the reason, as `checkov.io/skipN: <check>=<reason>` annotations a reviewer can read.
CHECK_EXCEPTIONS = {
    "CKV_K8S_11": (
        "no CPU limit on GPU pods: CFS throttling stalls the threads that feed the GPU and "
        "inflates tail latency; CPU is requested, so the pod keeps its share"
    ),
    "CKV_K8S_40": (
        "UID 1000 is the Triton image's own user (it owns the image's files); the pod runs "
        "non-root with no privilege escalation and no capabilities"
    ),
}
NETWORK_POLICY_EXCEPTION = (
    "CKV2_K8S_6",
    "spec.networkPolicy is off (the default: it needs a CNI that enforces policies, and the "
    "operator does not know the callers); turn it on, or the namespace's own policy applies",
)
TAG_EXCEPTION = (
    "CKV_K8S_43",
    "images named by tag (spec.image, the operator's CCS_LOADER_IMAGE); give both as "
    "name@sha256:<digest> to pin them and this exception goes away",
)
PULL_EXCEPTION = (
    "CKV_K8S_15",
    "IfNotPresent: pulling a multi-GB Triton image again at every cold start adds minutes "
    "(spec.imagePullPolicy: Always re-checks it; the loader image is named per version)",
)


def check_exceptions(spec: ServiceSpec, loader_image: str) -> dict[str, str]:
    """The serving Deployment's checkov skip annotations, only for checks it fails."""
    exceptions = dict(CHECK_EXCEPTIONS)
    if not spec.network_policy.enabled:
        exceptions[NETWORK_POLICY_EXCEPTION[0]] = NETWORK_POLICY_EXCEPTION[1]
    if not all("@sha256:" in image for image in (spec.image, loader_image)):
        exceptions[TAG_EXCEPTION[0]] = TAG_EXCEPTION[1]
    # The loader image is pulled IfNotPresent always (it is small and named per version).
    exceptions[PULL_EXCEPTION[0]] = PULL_EXCEPTION[1]
    return {
        f"checkov.io/skip{i}": f"{check}={reason}"
        for i, (check, reason) in enumerate(sorted(exceptions.items()), start=1)
    }


def render_children(
    ccs: ClaudeCodeService, floor: int | None = None, settings: RenderSettings | None = None
) -> list[dict[str, Any]]:
    """Every child manifest of the service, in apply order."""
    settings = settings or RenderSettings()
    spec = ccs.spec
    config_pbtxt = render_config_pbtxt(spec)
    volumes, loader_mounts, triton_mounts = _volumes_and_mounts(ccs)
    labels = common_labels(ccs)
    context: dict[str, Any] = {
        "spec": spec,
        "names": ChildNames.of(ccs.name),
        "namespace": ccs.namespace,
        "labels": labels,
        "service_labels": labels,
        "service_monitor_labels": {**spec.monitoring.labels, **labels},
        "selector": selector_labels(ccs.name),
        "owner_references": owner_references(ccs),
        "check_exceptions": check_exceptions(spec, settings.loader_image),
        "config_pbtxt": config_pbtxt,
        "pod_annotations": {
            CONFIG_HASH_ANNOTATION: config_hash(config_pbtxt),
            "prometheus.io/scrape": "true",
            "prometheus.io/port": str(spec.ports.metrics),
            "prometheus.io/path": "/metrics",
        },
        "node_selector": _node_selector(spec),
        "tolerations": _tolerations(spec),
        "affinity": _affinity(ccs),
        # Replicas spread over hosts; with the node cache over zones, so that within a zone
        # they may gather on the nodes that hold the model (see _affinity).
        "spread_topology_key": (
            "topology.kubernetes.io/zone" if spec.model.cache.enabled else "kubernetes.io/hostname"
        ),
        "priority_class_name": spec.priority_class_name,
        # Pod Security "restricted" (with the pod's runAsNonRoot and RuntimeDefault seccomp),
        # and a read-only root: Triton writes only /tmp, /dev/shm and nothing in the store.
        "container_security": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "resources": _resources(spec),
        "loader_image": settings.loader_image,
        "loader_args": loader_args(spec),
        "loader_mounts": loader_mounts,
        "triton_args": triton_args(spec),
        "triton_mounts": triton_mounts,
        "volumes": volumes,
        "min_replicas": autoscaler_min_replicas(spec, floor),
        "behavior": autoscaling_behavior(spec),
    }
    if spec.autoscaling.engine == "KEDA":
        context["scaled_object_annotations"] = {
            KEDA_EXCLUDED_LABELS_ANNOTATION: "app.kubernetes.io/managed-by"
        }
        context["keda_triggers"] = keda_triggers(ccs, settings)
        autoscaler = _render("scaledobject.yaml.j2", context)
    else:
        context["hpa_metrics"] = _hpa_metrics(ccs)
        autoscaler = _render("hpa.yaml.j2", context)
    children = [
        _render("configmap.yaml.j2", context),
        _render("deployment.yaml.j2", context),
        _render("service.yaml.j2", context),
        autoscaler,
    ]
    if spec.monitoring.service_monitor and settings.service_monitor_crd:
        children.append(_render("servicemonitor.yaml.j2", context))
    if spec.network_policy.enabled:
        context["ingress"] = network_policy_ingress(spec, settings)
        children.append(_render("networkpolicy.yaml.j2", context))
    return children


def network_policy_ingress(spec: ServiceSpec, settings: RenderSettings) -> list[dict[str, Any]]:
    """The serving pods' ingress rules: pods of the service's own namespace on every port,
    `spec.networkPolicy.allowFrom` on the inference ports, Prometheus on the metrics port.
    (Kubelet probes come from the node, which NetworkPolicies always admit.)"""

    def ports(*numbers: int) -> list[dict[str, Any]]:
        return [{"port": n, "protocol": "TCP"} for n in numbers]

    rules: list[dict[str, Any]] = [{"from": [{"podSelector": {}}]}]
    if spec.network_policy.allow_from:
        rules.append(
            {
                "from": [peer.manifest() for peer in spec.network_policy.allow_from],
                "ports": ports(spec.ports.http, spec.ports.grpc),
            }
        )
    if settings.metrics_from:
        rules.append(
            {
                "from": [peer.manifest() for peer in settings.metrics_from],
                "ports": ports(spec.ports.metrics),
            }
        )
    return rules


class _ReadableDumper(yaml.SafeDumper):
    """Writes multi-line strings (config.pbtxt) as literal blocks, as a person would."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_ReadableDumper.add_representer(str, _represent_str)


def to_yaml(manifests: list[dict[str, Any]]) -> str:
    """Multi-document YAML, as `kubectl apply -f` reads it."""
    return yaml.dump_all(
        manifests, Dumper=_ReadableDumper, sort_keys=False, default_flow_style=False
    )
