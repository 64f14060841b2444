"""The node model cache on the local cluster: real S3 (moto, bridged into the pod network),
the project's loader per pod, real Triton behind the pods.

The first replica on a node downloads the repository into the node's cache (a miss); a
second replica on the same node takes it from there (a hit). What each did comes from the pods'
own status (the loader's termination message) into status.coldStart.modelCache.
"""

from __future__ import annotations

import io
import json
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kubernetes import client

from e2e import kwok, podserving
from e2e.fixtures import Cluster
from e2e.localcluster import LocalCluster
from e2e.operator_fixtures import Services, sample
from s3server import S3Server, S3ServerUnavailable, moto_server
from serving_image import SAMPLE_MODEL_DIR
from serving_image.loader import S3Settings

pytestmark = [pytest.mark.cluster, pytest.mark.triton, pytest.mark.s3]

NAME = "cached"
BUCKET = "models"
PREFIX = "claude-code"
# Large enough that downloading it is a visible part of a replica's start on this machine.
WEIGHTS_BYTES = 48 * 2**20


@pytest.fixture
def s3_in_pod_network(
    served_cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[S3Server]:
    """moto on the host's loopback, seeded with the sample model plus weights, reachable from
    the pod network at the same 127.0.0.1 port; the harness's loaders use it."""
    log = tmp_path_factory.mktemp("moto") / "moto_server.log"
    try:
        server_cm = moto_server(log, auth=True)
        server = server_cm.__enter__()
    except S3ServerUnavailable as exc:
        pytest.fail(f"S3 SERVER UNAVAILABLE: the model-cache test did NOT run: {exc}")
    try:
        s3 = S3Settings(
            endpoint=server.endpoint,
            access_key=server.reader[0],
            secret_key=server.reader[1],
            region=server.region,
        ).client()
        s3.make_bucket(BUCKET)
        for path in sorted(SAMPLE_MODEL_DIR.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                key = f"{PREFIX}/{path.relative_to(SAMPLE_MODEL_DIR)}"
                s3.fput_object(BUCKET, key, str(path))
        weights = os.urandom(WEIGHTS_BYTES)
        s3.put_object(BUCKET, f"{PREFIX}/1/weights.bin", io.BytesIO(weights), len(weights))
        port = int(server.endpoint.rsplit(":", 1)[1])
        served_cluster.network.bridge_in(port)
        before = podserving.Settings.read(served_cluster.state_dir / podserving.SETTINGS_FILE)
        podserving.write_settings(
            served_cluster.state_dir,
            loader_env={
                "AWS_ENDPOINT_URL_S3": server.endpoint,
                "AWS_ACCESS_KEY_ID": server.reader[0],
                "AWS_SECRET_ACCESS_KEY": server.reader[1],
                "AWS_REGION": server.region,
            },
        )
        try:
            yield server
        finally:
            podserving.write_settings(served_cluster.state_dir, loader_env=before.loader_env)
            served_cluster.network.unbridge(port)
    finally:
        server_cm.__exit__(None, None, None)


def _wait(what: str, check: Callable[[], Any], timeout: float = 180) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.5)
    raise AssertionError(f"{what} not reached in {timeout}s")


def _ready_pods(core: client.CoreV1Api, namespace: str) -> list[Any]:
    pods = core.list_namespaced_pod(
        namespace, label_selector=f"serving.claudecode.io/service={NAME}"
    ).items
    return [
        p
        for p in pods
        if p.metadata.deletion_timestamp is None
        and any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])
    ]


def _loader_report(pod: Any) -> dict[str, Any]:
    (loader,) = [s for s in pod.status.init_container_statuses or [] if s.name == "model-loader"]
    return dict(json.loads(loader.state.terminated.message)["ccsModelLoader"])


def _cold_start(pod: Any) -> float:
    ready = next(c for c in pod.status.conditions if c.type == "Ready")
    return float((ready.last_transition_time - pod.metadata.creation_timestamp).total_seconds())


def test_a_second_replica_on_a_node_takes_the_model_from_the_node_cache(
    served_cluster: LocalCluster,
    s3_in_pod_network: S3Server,
    cluster: Cluster,
    op_namespace: str,
    services: Services,
) -> None:
    ns = op_namespace
    node = kwok.served_node_names(served_cluster.options.served_nodes)[0]
    placement = kwok.serving_placement()
    spec = {
        "model": {
            **sample(NAME)["spec"]["model"],
            "repository": f"s3://{BUCKET}/{PREFIX}",
            "cache": {"enabled": True, "sizeLimit": "1Gi"},
        },
        "resources": {"gpus": 1, "cpu": "1", "memory": "1Gi"},
        "instanceGroups": [{"count": 1, "kind": "KIND_GPU"}],
        "replicas": {"min": 1, "max": 1},
        "autoscaling": {"cpuUtilization": 60, "requestsPerSecond": 0, "floor": {"enabled": False}},
        "monitoring": {"serviceMonitor": False},
        # One node, so the second replica lands where the first filled the cache.
        "nodeSelector": {**placement["nodeSelector"], "kubernetes.io/hostname": node},
        "tolerations": placement["tolerations"],
    }
    services.apply(ns, sample(NAME, **spec))
    with cluster.api_client() as api_client:
        core = client.CoreV1Api(api_client)
        (first,) = _wait("the first replica Ready", lambda: _ready_pods(core, ns))
        miss = _loader_report(first)
        assert miss["cache"]["outcome"] == "miss", miss
        assert miss["cache"]["bytes"] >= WEIGHTS_BYTES
        entry = served_cluster.state_dir / "nodes" / node / "model-cache" / "entries"
        assert (entry / miss["cache"]["key"] / "1" / "weights.bin").stat().st_size == WEIGHTS_BYTES

        # A second replica on the same node (a scale-up, so no Triton stops meanwhile).
        services.patch(ns, NAME, {"spec": {"replicas": {"min": 2, "max": 2}}})
        (second,) = _wait(
            "the second replica Ready",
            lambda: [p for p in _ready_pods(core, ns) if p.metadata.uid != first.metadata.uid],
        )
        hit = _loader_report(second)
        assert hit["cache"]["outcome"] == "hit", hit
        assert hit["cache"]["key"] == miss["cache"]["key"]
        assert hit["seconds"] < miss["seconds"], (hit, miss)

    def counted(body: dict[str, Any]) -> bool:
        cache = ((body.get("status") or {}).get("coldStart") or {}).get("modelCache") or {}
        return bool(cache.get("hits", 0) >= 1 and cache.get("misses", 0) >= 1)

    body = services.wait(ns, NAME, counted, timeout=60, what="modelCache hits and misses")
    cache = body["status"]["coldStart"]["modelCache"]
    assert cache["hitLoaderP50Seconds"] < cache["missLoaderP50Seconds"], cache
    row = {
        "bytes": miss["cache"]["bytes"],
        "miss_loader_s": miss["seconds"],
        "hit_loader_s": hit["seconds"],
        "miss_ready_s": _cold_start(first),
        "hit_ready_s": _cold_start(second),
    }
    print(f"\n[model cache] {row}")
    out = os.environ.get("CCS_BENCH_MODEL_CACHE_OUT")  # bench/cache_bench.py collects these
    if out:
        with open(out, "a") as handle:
            handle.write(json.dumps(row) + "\n")


def _placements(core: client.CoreV1Api, namespace: str, name: str) -> list[str]:
    pods = core.list_namespaced_pod(
        namespace, label_selector=f"serving.claudecode.io/service={name}"
    ).items
    return [p.spec.node_name for p in pods if p.metadata.deletion_timestamp is None]


def _scale_up_lands_on(
    core: client.CoreV1Api, services: Services, ns: str, name: str, cache: bool
) -> tuple[str, list[str]]:
    """One replica, then five more: where the first went and where the new ones went."""
    spec = {
        "model": {**sample(name)["spec"]["model"], "cache": {"enabled": cache}},
        "resources": {"gpus": 1, "cpu": "1", "memory": "1Gi"},
        "instanceGroups": [{"count": 1, "kind": "KIND_GPU"}],
        "replicas": {"min": 1, "max": 6},
        "autoscaling": {"cpuUtilization": 60, "requestsPerSecond": 0, "floor": {"enabled": False}},
        "monitoring": {"serviceMonitor": False},
    }
    services.apply(ns, sample(name, **spec))
    (first,) = _wait(
        "the first replica placed", lambda: [n for n in _placements(core, ns, name) if n]
    )
    services.patch(ns, name, {"spec": {"replicas": {"min": 6}}})
    placed = _wait(
        "six replicas placed",
        lambda: (
            (nodes := [n for n in _placements(core, ns, name) if n]) and len(nodes) == 6 and nodes
        ),
    )
    placed.remove(first)
    return first, placed


def test_with_the_node_cache_a_scale_up_lands_on_the_warm_node(
    cluster: Cluster, op_namespace: str, services: Services
) -> None:
    with cluster.api_client() as api_client:
        core = client.CoreV1Api(api_client)
        warm, new = _scale_up_lands_on(core, services, op_namespace, "warm", cache=True)
        assert new.count(warm) / len(new) >= 0.9, (warm, new)
        # Positive control: without the cache the scheduler spreads the same scale-up.
        first, spread = _scale_up_lands_on(core, services, op_namespace, "spread", cache=False)
        assert len(set(spread) | {first}) > 1, (first, spread)
