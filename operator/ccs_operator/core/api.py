"""Typed view of a ClaudeCodeService, parsed once at the boundary.

The defaults here are the CRD's defaults (a test applies the CRD's structural defaults and
checks both agree), so an object that skipped admission defaulting (for example a file given
to `ccs-operator render`) renders the same children as one read back from the API server.
Cross-field rules repeat the CRD's CEL rules for the same reason; errors name the field path.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal

from kubernetes.utils import parse_quantity
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.alias_generators import to_camel

API_GROUP = "serving.claudecode.io"
API_VERSION = "v1alpha1"
KIND = "ClaudeCodeService"
PLURAL = "claudecodeservices"

DEFAULT_IMAGE = "nvcr.io/nvidia/tritonserver:25.01-py3"
MAX_NAME_LENGTH = 50
_NAME_RE = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")

DataType = Literal[
    "TYPE_BOOL",
    "TYPE_UINT8",
    "TYPE_UINT16",
    "TYPE_UINT32",
    "TYPE_UINT64",
    "TYPE_INT8",
    "TYPE_INT16",
    "TYPE_INT32",
    "TYPE_INT64",
    "TYPE_FP16",
    "TYPE_FP32",
    "TYPE_FP64",
    "TYPE_STRING",
    "TYPE_BF16",
]
Platform = Literal[
    "pytorch_libtorch",
    "python",
    "onnxruntime_onnx",
    "tensorrt_plan",
    "tensorflow_savedmodel",
    "tensorflow_graphdef",
    "openvino",
]
Quantity = str | int


_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def duration_seconds(duration: str) -> float:
    """Seconds in a Prometheus-style duration of one unit: 500ms, 15s, 1m, 2h."""
    for unit in ("ms", "s", "m", "h"):
        number = duration.removesuffix(unit)
        if number != duration and number.isdigit():
            return int(number) * _DURATION_UNITS[unit]
    raise ValueError(f"not a duration such as 15s or 1m: {duration!r}")


class SpecError(ValueError):
    """An invalid ClaudeCodeService; `path` is the offending field, e.g. spec.replicas.min."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


class _Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )


class Tensor(_Model):
    name: str = Field(min_length=1, max_length=128, pattern=r"^[a-zA-Z0-9_.:-]+$")
    data_type: DataType
    dims: tuple[int, ...] = Field(min_length=1, max_length=8)

    @model_validator(mode="after")
    def _dims_valid(self) -> Tensor:
        if any(d == 0 or d < -1 for d in self.dims):
            raise ValueError("dims must be positive or -1 (variable)")
        return self


class VersionPolicy(_Model):
    policy: Literal["Latest", "All", "Specific"] = "Latest"
    num_versions: int = Field(default=1, ge=1, le=64)
    versions: tuple[int, ...] = ()

    @model_validator(mode="after")
    def _specific_has_versions(self) -> VersionPolicy:
        if self.policy == "Specific" and not self.versions:
            raise ValueError("versions must list at least one version when policy is Specific")
        return self


class Warmup(_Model):
    enabled: bool = False
    batch_size: int = Field(default=1, ge=1)
    count: int = Field(default=1, ge=1, le=100)


# Same language as the CRD's CEL rule (RE2: '.' does not match a newline).
_REPOSITORY_RE = re.compile(r"(s3|gs|az|file)://.+|pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?(/.*)?")


class ModelCache(_Model):
    enabled: bool = False
    host_path: str = Field(
        default="/var/cache/ccs-models", max_length=512, pattern=r"^/[A-Za-z0-9_./-]*[A-Za-z0-9_-]$"
    )
    size_limit: Quantity = "50Gi"

    @property
    def size_limit_bytes(self) -> int:
        return int(parse_quantity(str(self.size_limit)))

    @model_validator(mode="after")
    def _check(self) -> ModelCache:
        parts = self.host_path.split("/")
        if "." in parts or ".." in parts:
            raise ValueError("cache.hostPath must be a plain absolute directory (no . or .. parts)")
        try:
            size = self.size_limit_bytes
        except ValueError:
            raise ValueError(f"cache.sizeLimit {self.size_limit!r} is not a quantity") from None
        if size <= 0:
            raise ValueError("cache.sizeLimit must be positive")
        return self


class Model(_Model):
    name: str = Field(min_length=1, max_length=128, pattern=r"^[a-zA-Z0-9_.-]+$")
    repository: str = Field(min_length=2, max_length=1024)
    platform: Platform = "pytorch_libtorch"
    inputs: tuple[Tensor, ...] = Field(
        default=(Tensor(name="input_ids", data_type="TYPE_INT32", dims=(-1,)),),
        min_length=1,
        max_length=16,
    )
    outputs: tuple[Tensor, ...] = Field(
        default=(Tensor(name="output", data_type="TYPE_FP32", dims=(-1, 50257)),),
        min_length=1,
        max_length=16,
    )
    version_policy: VersionPolicy = VersionPolicy()
    warmup: Warmup = Warmup()
    cache: ModelCache = ModelCache()
    # A Secret whose keys become the model loader's environment (object-store credentials).
    credentials_secret: str | None = Field(
        default=None, max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
    )

    @model_validator(mode="after")
    def _check(self) -> Model:
        if self.name in (".", ".."):
            raise ValueError("name cannot be '.' or '..'")
        if not (self.repository.startswith("/") or _REPOSITORY_RE.fullmatch(self.repository)):
            raise ValueError(
                "repository must be s3://, gs://, az://, pvc://<claim>/<path>, file:///<path> "
                "or an absolute path"
            )
        if self.cache.enabled and not self.repository.startswith("s3://"):
            raise ValueError("cache applies to s3:// repositories; set cache.enabled to false")
        for kind, tensors in (("inputs", self.inputs), ("outputs", self.outputs)):
            names = [t.name for t in tensors]
            if len(names) != len(set(names)):
                raise ValueError(f"{kind} names must be unique")
        return self


class Resources(_Model):
    gpus: int = Field(default=1, ge=0, le=16)
    cpu: Quantity = "4"
    memory: Quantity = "16Gi"
    shm_size: Quantity = "1Gi"
    gpu_product: str | None = Field(default=None, max_length=63)


class QueuePolicy(_Model):
    max_queue_size: int = Field(default=0, ge=0, le=1_000_000)
    timeout_microseconds: int = Field(default=0, ge=0)
    timeout_action: Literal["REJECT", "DELAY"] = "REJECT"
    allow_timeout_override: bool = False

    @model_validator(mode="after")
    def _delay_needs_timeout(self) -> QueuePolicy:
        if self.timeout_action == "DELAY" and self.timeout_microseconds <= 0:
            raise ValueError("timeoutAction DELAY needs timeoutMicroseconds > 0")
        return self


class Batching(_Model):
    enabled: bool = True
    max_batch_size: int = Field(default=32, ge=1, le=4096)
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay_microseconds: int = Field(default=2000, ge=0, le=10_000_000)
    preserve_ordering: bool = False
    queue_policy: QueuePolicy | None = None

    @model_validator(mode="after")
    def _check(self) -> Batching:
        too_big = [s for s in self.preferred_batch_sizes if s > self.max_batch_size or s < 1]
        if too_big:
            raise ValueError(
                f"preferredBatchSizes {too_big} must be between 1 and maxBatchSize "
                f"({self.max_batch_size})"
            )
        if self.queue_policy is not None and not self.enabled:
            raise ValueError("queuePolicy needs enabled: true")
        return self


class InstanceGroup(_Model):
    count: int = Field(default=1, ge=1, le=64)
    kind: Literal["KIND_GPU", "KIND_CPU", "KIND_AUTO"] = "KIND_GPU"
    gpus: tuple[int, ...] = ()


class Replicas(_Model):
    min: int = Field(default=2, ge=0, le=1000)
    max: int = Field(default=10, ge=1, le=1000)

    @model_validator(mode="after")
    def _ordered(self) -> Replicas:
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) must be <= max ({self.max})")
        return self


class Prewarm(_Model):
    enabled: bool = False
    period: Literal["Day", "Week"] = "Day"
    lead_time_seconds: int | None = Field(default=None, ge=1, le=7200)

    @property
    def period_seconds(self) -> int:
        return 86_400 if self.period == "Day" else 7 * 86_400


class Floor(_Model):
    enabled: bool = True
    queue_latency_target_ms: int = Field(default=100, ge=1, le=600_000)
    lower_watermark_percent: int = Field(default=50, ge=1, le=99)
    query: str | None = Field(default=None, max_length=4096)
    evaluation_interval_seconds: int = Field(default=30, ge=5, le=3600)
    scale_up_step: int = Field(default=1, ge=1, le=100)
    cooldown_seconds: int = Field(default=300, ge=0, le=86_400)
    burst_cover_percent: int = Field(default=75, ge=0, le=99)
    prewarm: Prewarm = Prewarm()

    @model_validator(mode="after")
    def _cooldown_covers_interval(self) -> Floor:
        if 0 < self.cooldown_seconds < self.evaluation_interval_seconds:
            raise ValueError("cooldownSeconds must be 0 or at least evaluationIntervalSeconds")
        lead = self.prewarm.lead_time_seconds
        if lead is not None and lead < self.evaluation_interval_seconds:
            raise ValueError(
                "prewarm.leadTimeSeconds must be at least evaluationIntervalSeconds; raise it "
                "or leave it unset to look ahead by the measured cold start"
            )
        return self


Engine = Literal["HPA", "KEDA"]


class Autoscaling(_Model):
    # Which autoscaler is rendered: an autoscaling/v2 HPA, or KEDA's ScaledObject.
    engine: Engine = "HPA"
    cpu_utilization: int = Field(default=60, ge=0, le=100)
    requests_per_second: int = Field(default=1000, ge=0)
    # KEDA's activationThreshold on the requests-per-second trigger (KEDA mode only).
    activation_requests_per_second: int = Field(default=0, ge=0)
    scale_down_stabilization_seconds: int = Field(default=300, ge=0, le=3600)
    floor: Floor = Floor()

    @model_validator(mode="after")
    def _keda_has_a_trigger(self) -> Autoscaling:
        if (
            self.engine == "KEDA"
            and self.requests_per_second <= 0
            and self.cpu_utilization <= 0
            and self.floor.enabled
        ):
            raise ValueError(
                "engine KEDA needs at least one trigger: set requestsPerSecond or "
                "cpuUtilization above 0"
            )
        return self


class Monitoring(_Model):
    service_monitor: bool = True
    interval: str = Field(default="15s", pattern=r"^[0-9]+(ms|s|m)$")
    labels: dict[str, str] = Field(default_factory=dict, max_length=16)

    @property
    def interval_seconds(self) -> float:
        return duration_seconds(self.interval)


class SelectorRequirement(_Model):
    key: str = Field(min_length=1, max_length=316)
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: tuple[str, ...] = Field(default=(), max_length=64)


class LabelSelector(_Model):
    """A Kubernetes label selector; empty selects everything (as in a NetworkPolicy peer)."""

    match_labels: dict[str, str] = Field(default_factory=dict, max_length=32)
    match_expressions: tuple[SelectorRequirement, ...] = Field(default=(), max_length=16)


class IPBlock(_Model):
    cidr: str = Field(min_length=1, max_length=64)
    except_: tuple[str, ...] = Field(default=(), max_length=32, alias="except")


class NetworkPeer(_Model):
    """A NetworkPolicy peer: pods by namespace and/or pod labels, or an IP block."""

    pod_selector: LabelSelector | None = None
    namespace_selector: LabelSelector | None = None
    ip_block: IPBlock | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> NetworkPeer:
        selectors = self.pod_selector is not None or self.namespace_selector is not None
        if not selectors and self.ip_block is None:
            raise ValueError("set podSelector, namespaceSelector or ipBlock")
        if selectors and self.ip_block is not None:
            raise ValueError("ipBlock cannot be combined with podSelector or namespaceSelector")
        return self

    def manifest(self) -> dict[str, Any]:
        """The peer as a NetworkPolicy carries it (an empty selector as `{}`)."""
        return self.model_dump(by_alias=True, exclude_defaults=True)


class NetworkPolicy(_Model):
    """An optional NetworkPolicy for the serving pods: ingress only from the service's own
    namespace, from Prometheus (the operator's setting) to the metrics port, and from
    `allow_from` to the inference ports."""

    enabled: bool = False
    allow_from: tuple[NetworkPeer, ...] = Field(default=(), max_length=16)


class Toleration(_Model):
    key: str | None = None
    operator: Literal["Exists", "Equal"] | None = None
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = None


class Ports(_Model):
    http: int = Field(default=8000, ge=1, le=65535)
    grpc: int = Field(default=8001, ge=1, le=65535)
    metrics: int = Field(default=8002, ge=1, le=65535)

    @model_validator(mode="after")
    def _distinct(self) -> Ports:
        if len({self.http, self.grpc, self.metrics}) != 3:
            raise ValueError("http, grpc and metrics must be three different ports")
        return self


class ServiceSpec(_Model):
    model: Model
    image: str = Field(default=DEFAULT_IMAGE, min_length=1, max_length=512)
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    resources: Resources = Resources()
    batching: Batching = Batching()
    instance_groups: tuple[InstanceGroup, ...] = Field(
        default=(InstanceGroup(count=2, kind="KIND_GPU"),), min_length=1, max_length=8
    )
    replicas: Replicas = Replicas()
    autoscaling: Autoscaling = Autoscaling()
    monitoring: Monitoring = Monitoring()
    network_policy: NetworkPolicy = NetworkPolicy()
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: tuple[Toleration, ...] = ()
    # Free-form like a Pod's affinity; passed through to the pod template untouched.
    affinity: dict[str, Any] | None = None
    priority_class_name: str | None = None
    service_account_name: str | None = Field(
        default=None, max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
    )
    ports: Ports = Ports()

    @model_validator(mode="after")
    def _check(self) -> ServiceSpec:
        if self.resources.gpus < 1 and any(g.kind == "KIND_GPU" for g in self.instance_groups):
            raise ValueError(
                "instanceGroups has a KIND_GPU group but resources.gpus is 0; "
                "set resources.gpus >= 1 or use kind KIND_CPU"
            )
        if (
            self.model.warmup.enabled
            and self.model.warmup.batch_size > self.batching.max_batch_size
        ):
            raise ValueError("model.warmup.batchSize must not exceed batching.maxBatchSize")
        if self.replicas.min == 0 and self.autoscaling.requests_per_second <= 0:
            # Kubernetes refuses an HPA with minReplicas 0 and no External or Object metric,
            # and KEDA a ScaledObject that scales to zero on CPU alone; the requests-per-second
            # metric is the only such metric this spec renders.
            raise ValueError(
                "replicas.min 0 (scale to zero) needs the requests-per-second metric: set "
                "autoscaling.requestsPerSecond above 0, or raise replicas.min to 1"
            )
        return self


class ClaudeCodeService(_Model):
    """The parts of a ClaudeCodeService object the operator acts on."""

    name: str
    namespace: str
    uid: str | None = None
    generation: int | None = None
    spec: ServiceSpec


def _field_path(loc: tuple[int | str, ...]) -> str:
    path = "spec"
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part.startswith(("function-", "tagged-union")):
            # pydantic's internal validator names are not user-facing fields.
            continue
        else:
            path += f".{to_camel(part) if '_' in part else part}"
    return path


def parse_spec(spec: Mapping[str, Any] | None) -> ServiceSpec:
    """Parse `.spec` of a ClaudeCodeService; raise SpecError naming the first bad field."""
    if not isinstance(spec, Mapping):
        raise SpecError("spec", "must be an object with at least spec.model")
    try:
        return ServiceSpec.model_validate(dict(spec))
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        message = first["msg"].removeprefix("Value error, ")
        if first["type"] == "extra_forbidden":
            message = "unknown field; check the spelling against `kubectl explain ccs.spec`"
        raise SpecError(_field_path(first["loc"]), message) from None


def parse_service(body: Mapping[str, Any]) -> ClaudeCodeService:
    """Parse a whole ClaudeCodeService object (apiVersion, kind, metadata, spec)."""
    api_version = body.get("apiVersion")
    if api_version not in (None, f"{API_GROUP}/{API_VERSION}"):
        raise SpecError("apiVersion", f"must be {API_GROUP}/{API_VERSION}, got {api_version!r}")
    if body.get("kind") not in (None, KIND):
        raise SpecError("kind", f"must be {KIND}, got {body.get('kind')!r}")
    metadata = body.get("metadata") or {}
    name = metadata.get("name")
    if not isinstance(name, str) or not name:
        raise SpecError("metadata.name", "is required")
    if len(name) > MAX_NAME_LENGTH:
        raise SpecError(
            "metadata.name",
            f"must be at most {MAX_NAME_LENGTH} characters so child names stay valid",
        )
    if not _NAME_RE.match(name):
        raise SpecError(
            "metadata.name",
            "must start with a lowercase letter and contain only lowercase letters, digits, '-'",
        )
    return ClaudeCodeService(
        name=name,
        namespace=metadata.get("namespace") or "default",
        uid=metadata.get("uid"),
        generation=metadata.get("generation"),
        spec=parse_spec(body.get("spec")),
    )
