"""kwok configuration: the published stages, and the fake GPU nodes it keeps alive.

Stages are read from the kwok module's own `kustomize/stage/` files (the same ones its
release manifests ship), so nodes and pods behave as upstream intends. Only the pod-ready
stage may get a delay, which stands in for a replica's cold start.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from e2e.toolchain import module_dir

# Nodes carrying this annotation are the ones kwok manages; anything else is left alone.
MANAGED_ANNOTATION = ("kwok.x-k8s.io/node", "fake")
GPU_RESOURCE = "nvidia.com/gpu"
GPU_PRODUCT = "NVIDIA-H100-80GB-HBM3"
GPUS_PER_NODE = 8

# (directory under kustomize/stage, file) for each stage the cluster needs.
_STAGES = (
    ("node/fast", "node-initialize.yaml"),
    ("node/heartbeat-with-lease", "node-heartbeat-with-lease.yaml"),
    ("pod/fast", "pod-ready.yaml"),
    ("pod/fast", "pod-complete.yaml"),
    ("pod/fast", "pod-delete.yaml"),
)


@dataclass(frozen=True)
class PodReadyDelay:
    """How long kwok waits before a scheduled pod turns Running and Ready.

    kwok picks uniformly between `milliseconds` and `jitter_milliseconds` (when larger).
    """

    milliseconds: int
    jitter_milliseconds: int | None = None


def published_stages(source: Path | None = None) -> list[dict[str, Any]]:
    root = (source or module_dir("kwok", "sigs.k8s.io/kwok")) / "kustomize" / "stage"
    return [yaml.safe_load((root / folder / name).read_text()) for folder, name in _STAGES]


# A pod template annotation that sets one workload's cold start (a Go duration, e.g. "6s"),
# as kwok's own general stages do; it wins over the cluster-wide --pod-ready-delay.
POD_READY_DELAY_ANNOTATION = "pod-ready.stage.kwok.x-k8s.io/delay"


# Nodes whose pods are served by a real Triton (e2e.podserving), not made Ready by kwok.
SERVING_LABEL = "e2e.ccs-operator.io/serving"
SERVING_VALUE = "triton"
# Only workloads that ask for real serving land there (a nodeSelector and a toleration).
SERVING_TAINT = {"key": SERVING_LABEL, "value": SERVING_VALUE, "effect": "NoSchedule"}
SERVED_STAGE = "pod-running-unready"


def served_node_names(count: int) -> list[str]:
    return [f"triton-node-{i}" for i in range(count)]


def _served_stage(ready_stage: dict[str, Any], served: list[str]) -> dict[str, Any]:
    """kwok's pod-ready stage for pods on Triton-backed nodes, minus readiness.

    The pod gets its address and turns Running with its containers started but not ready;
    e2e.podserving starts its Triton and sets Ready when that Triton answers its probe,
    as a kubelet would.
    """
    doc = copy.deepcopy(ready_stage)
    doc["metadata"]["name"] = SERVED_STAGE
    doc["spec"]["selector"]["matchExpressions"].append(
        {"key": ".spec.nodeName", "operator": "In", "values": served}
    )
    doc["spec"].pop("delay", None)
    template = doc["spec"]["next"]["statusTemplate"]
    for kind in ("Ready", "ContainersReady"):
        template, count = re.subn(
            rf'status: "True"(\n\s*)type: {kind}\n', rf'status: "False"\1type: {kind}\n', template
        )
        if count != 1:
            raise ValueError(f"kwok's pod-ready stage changed: no {kind} condition to replace")
    # Main containers (not init containers) run but are not ready.
    head, sep, tail = template.partition("initContainerStatuses:")
    head, count = re.subn(r"(\n(\s*))ready: true", r"\1ready: false\1started: true", head)
    if count != 1:
        raise ValueError("kwok's pod-ready stage changed: no container `ready: true` to replace")
    doc["spec"]["next"]["statusTemplate"] = head + sep + tail
    return doc


def stages(
    delay: PodReadyDelay | None = None,
    source: Path | None = None,
    served_nodes: list[str] | None = None,
) -> list[dict]:
    docs = published_stages(source)
    for doc in list(docs):
        if doc["metadata"]["name"] != "pod-ready":
            continue
        if served_nodes:
            docs.append(_served_stage(doc, served_nodes))
            doc["spec"]["selector"]["matchExpressions"].append(
                {"key": ".spec.nodeName", "operator": "NotIn", "values": served_nodes}
            )
        spec_delay: dict[str, Any] = {
            "durationMilliseconds": delay.milliseconds if delay else 0,
            "durationFrom": {
                "expressionFrom": f'.metadata.annotations["{POD_READY_DELAY_ANNOTATION}"]'
            },
        }
        if delay is not None and delay.jitter_milliseconds is not None:
            spec_delay["jitterDurationMilliseconds"] = delay.jitter_milliseconds
        doc["spec"]["delay"] = spec_delay
    return docs


def config_yaml(
    delay: PodReadyDelay | None = None,
    source: Path | None = None,
    served_nodes: list[str] | None = None,
) -> str:
    """The multi-document file given to `kwok --config`: only Stage objects.

    kwok's options go on its command line (`flags()`): a KwokConfiguration in this file
    replaces kwok's defaults wholesale rather than merging with them.
    """
    return yaml.safe_dump_all(stages(delay, source, served_nodes), sort_keys=False)


def flags() -> list[str]:
    key, value = MANAGED_ANNOTATION
    return [
        "--manage-all-nodes=false",
        f"--manage-nodes-with-annotation-selector={key}={value}",
        # kwok renews each node's Lease, so the node-lifecycle controller sees it alive
        # without a status write every few seconds.
        "--node-lease-duration-seconds=40",
    ]


def _node(name: str, labels: dict[str, str], capacity: dict[str, str], taints: list) -> dict:
    key, value = MANAGED_ANNOTATION
    base_labels = {
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        "type": "kwok",
    }
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {**base_labels, **labels},
            "annotations": {key: value, "node.alpha.kubernetes.io/ttl": "0"},
        },
        "spec": {"taints": taints},
        # kwok's node-initialize stage keeps a capacity that is already set.
        "status": {"capacity": capacity, "allocatable": capacity},
    }


def gpu_node(name: str, served: bool = False) -> dict:
    """A node as the NVIDIA GPU operator labels an 8x H100 machine.

    `served`: its pods are answered by real Tritons (label and taint SERVING_LABEL).
    """
    labels = {
        "nvidia.com/gpu.present": "true",
        "nvidia.com/gpu.product": GPU_PRODUCT,
        "nvidia.com/gpu.count": str(GPUS_PER_NODE),
        "nvidia.com/gpu.memory": "81559",
        "node.kubernetes.io/instance-type": "gpu-h100x8",
    }
    capacity = {
        "cpu": "96",
        "memory": "1024Gi",
        "pods": "110",
        "ephemeral-storage": "1Ti",
        GPU_RESOURCE: str(GPUS_PER_NODE),
    }
    taints: list[dict[str, str]] = [{"key": GPU_RESOURCE, "effect": "NoSchedule"}]
    if served:
        labels[SERVING_LABEL] = SERVING_VALUE
        taints.append(dict(SERVING_TAINT))
    return _node(name, labels, capacity, taints)


def cpu_node(name: str) -> dict:
    """An untainted node for pods that need no GPU (controllers, Prometheus, ...)."""
    capacity = {"cpu": "16", "memory": "64Gi", "pods": "110", "ephemeral-storage": "200Gi"}
    return _node(name, {"node.kubernetes.io/instance-type": "cpu-16"}, capacity, [])


def nodes(gpu_nodes: int, cpu_nodes: int, served_nodes: int = 0) -> list[dict]:
    return (
        [gpu_node(f"gpu-node-{i}") for i in range(gpu_nodes)]
        + [cpu_node(f"cpu-node-{i}") for i in range(cpu_nodes)]
        + [gpu_node(name, served=True) for name in served_node_names(served_nodes)]
    )


def serving_placement() -> dict[str, Any]:
    """What a ClaudeCodeService spec adds to run its pods on Triton-backed nodes."""
    return {
        "nodeSelector": {SERVING_LABEL: SERVING_VALUE},
        "tolerations": [
            {
                "key": SERVING_LABEL,
                "operator": "Equal",
                "value": SERVING_VALUE,
                "effect": "NoSchedule",
            }
        ],
    }
