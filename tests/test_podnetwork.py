"""The pod network's pure parts: kwok stages for Triton-backed nodes, address checks, and
what the pods' kubelet (e2e.podserving) reads from a pod. No cluster, no namespace."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from ccs_operator.core.api import parse_service
from ccs_operator.core.render import render_children
from e2e import kwok
from e2e.netns import PodNetwork, PodNetworkError, is_pod_address
from e2e.podserving import PodSetupError, Settings, plan_for, wants_serving, write_settings
from serving_image.local import cpu_model_config, local_source

from helpers import ROOT

SERVED = ["triton-node-0", "triton-node-1"]


def _stage(docs: list[dict[str, Any]], name: str) -> dict[str, Any]:
    return next(d for d in docs if d["metadata"]["name"] == name)


def test_pods_on_served_nodes_run_unready_and_others_keep_kwoks_ready_stage() -> None:
    docs = kwok.stages(served_nodes=SERVED)
    ready = _stage(docs, "pod-ready")
    served = _stage(docs, kwok.SERVED_STAGE)
    assert {"key": ".spec.nodeName", "operator": "NotIn", "values": SERVED} in ready["spec"][
        "selector"
    ]["matchExpressions"]
    assert {"key": ".spec.nodeName", "operator": "In", "values": SERVED} in served["spec"][
        "selector"
    ]["matchExpressions"]
    # The served stage renders a Running pod with an address whose Ready is False.
    template = served["spec"]["next"]["statusTemplate"]
    kinds = dict(
        (kind, status)
        for status, kind in re.findall(r'status: "(\w+)"\s*\n\s*type: (\w+)', template)
    )
    assert kinds["Ready"] == "False" and kinds["ContainersReady"] == "False"
    assert "phase: Running" in template and "podIP:" in template
    containers = template.split("containerStatuses:")[1].split("initContainerStatuses:")[0]
    assert "ready: false" in containers and "ready: true" not in containers
    # The original stage still makes every other pod Ready.
    assert 'status: "True"\n  type: Ready' in ready["spec"]["next"]["statusTemplate"]


def test_without_served_nodes_the_stages_are_kwoks_own() -> None:
    assert kwok.stages() == kwok.stages(served_nodes=[])
    assert all(d["metadata"]["name"] != kwok.SERVED_STAGE for d in kwok.stages())


def test_served_nodes_carry_the_label_and_a_taint_that_only_asking_services_tolerate() -> None:
    nodes = {n["metadata"]["name"]: n for n in kwok.nodes(1, 0, 2)}
    assert set(nodes) == {"gpu-node-0", *SERVED}
    served = nodes["triton-node-0"]
    assert served["metadata"]["labels"][kwok.SERVING_LABEL] == kwok.SERVING_VALUE
    assert kwok.SERVING_TAINT in served["spec"]["taints"]
    assert kwok.SERVING_TAINT not in nodes["gpu-node-0"]["spec"]["taints"]
    placement = kwok.serving_placement()
    assert placement["nodeSelector"] == {kwok.SERVING_LABEL: kwok.SERVING_VALUE}
    assert placement["tolerations"][0]["key"] == kwok.SERVING_LABEL


@pytest.mark.parametrize(
    ("address", "pod"),
    [
        ("10.244.3.7", True),
        ("10.244.3.7:8000", True),
        ("127.0.0.1:8000", False),
        ("10.245.0.1", False),
        ("example.com:80", False),
        ("::1", False),
    ],
)
def test_pod_addresses_are_those_of_the_pod_cidr(address: str, pod: bool) -> None:
    assert is_pod_address(address) is pod


def test_dialling_a_pod_address_from_outside_the_pod_network_is_refused(tmp_path: Path) -> None:
    network = PodNetwork.for_state_dir(tmp_path)
    assert not network.inside()
    with pytest.raises(PodNetworkError, match="refusing to connect to pod address"):
        network.require_inside("10.244.0.5:8002")
    network.require_inside("127.0.0.1:9090")  # loopback is always allowed
    assert network.wrap(["true"])[:3] == ["ip", "netns", "exec"]


def test_each_state_dir_gets_its_own_namespace(tmp_path: Path) -> None:
    a = PodNetwork.for_state_dir(tmp_path / "a")
    b = PodNetwork.for_state_dir(tmp_path / "b")
    assert a.name != b.name and a.name.startswith("ccs-") and len(a.name) <= 15


def _sample() -> dict[str, Any]:
    manifest: dict[str, Any] = yaml.safe_load((ROOT / "samples" / "claude-code.yaml").read_text())
    return manifest


def _pod(**status: Any) -> client.V1Pod:
    """The pod the operator's Deployment makes for the sample, as the API returns it."""
    manifest = _sample()
    manifest["metadata"] = {"name": "svc", "namespace": "ns", "uid": "u-1"}
    deployment = next(
        o for o in render_children(parse_service(manifest)) if o["kind"] == "Deployment"
    )
    template = deployment["spec"]["template"]
    api = client.ApiClient()

    body = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {**template["metadata"], "name": "svc-abc", "namespace": "ns", "uid": "p-1"},
        "spec": {**template["spec"], "nodeName": "triton-node-0"},
        "status": {"phase": "Running", "podIP": "10.244.0.9", **status},
    }
    pod: client.V1Pod = api.deserialize(json.dumps(body), "V1Pod", "application/json")
    return pod


def test_the_plan_comes_from_the_pod_spec_the_operator_rendered() -> None:
    plan = plan_for(_pod())
    assert plan.ip == "10.244.0.9"
    assert plan.ports == {"http": 8000, "grpc": 8001, "metrics": 8002}
    assert plan.config_map == "svc-model-config"
    assert plan.model_name == "claude_code"
    assert plan.repository.startswith("s3://")
    assert (plan.probe_path, plan.probe_port) == ("/v2/health/ready", 8000)
    assert "--strict-readiness=true" in plan.args


def test_only_running_pods_with_an_address_on_served_nodes_are_served() -> None:
    served = {"triton-node-0"}
    assert wants_serving(_pod(), served)
    assert not wants_serving(_pod(), {"gpu-node-0"})
    assert not wants_serving(_pod(phase="Pending"), served)
    assert not wants_serving(_pod(podIP=None), served)
    deleting = _pod()
    deleting.metadata.deletion_timestamp = "2026-01-01T00:00:00Z"
    assert not wants_serving(deleting, served)


def test_a_pod_without_the_triton_container_cannot_be_served() -> None:
    pod = _pod()
    pod.spec.containers[0].name = "other"
    with pytest.raises(PodSetupError, match="no container named 'triton'"):
        plan_for(pod)


def test_settings_round_trip_and_default_when_missing(tmp_path: Path) -> None:
    assert Settings.read(tmp_path / "podserving.json").max_tritons >= 2
    write_settings(tmp_path, max_tritons=3, env={"CCS_SAMPLE_BATCH_COST_MS": "100"})
    got = Settings.read(tmp_path / "podserving.json")
    assert got.max_tritons == 3 and got.env == {"CCS_SAMPLE_BATCH_COST_MS": "100"}
    write_settings(tmp_path, max_tritons=5)
    assert Settings.read(tmp_path / "podserving.json").env == {"CCS_SAMPLE_BATCH_COST_MS": "100"}


def test_the_rendered_config_is_adapted_to_cpu_with_notes() -> None:
    from ccs_operator.core.tritonconfig import build_model_config

    ccs = parse_service(_sample())
    config, notes = cpu_model_config(build_model_config(ccs.spec))
    assert all(g.kind == g.KIND_CPU for g in config.instance_group)
    assert config.backend == "python" and not config.platform
    assert any("KIND_CPU" in n for n in notes) and any("sample model" in n for n in notes)
    source, source_notes = local_source("s3://models/x", python_model=True)
    assert source.endswith("claude_code") and "s3://models/x" in source_notes[0]


def test_a_load_profile_is_linear_between_points_and_zero_outside() -> None:
    from e2e.loadgen import Profile

    profile = Profile.parse("0:2,10:22,20:22,25:0")
    assert profile.duration == 25
    assert profile.rate(0) == 2 and profile.rate(5) == 12 and profile.rate(15) == 22
    assert profile.rate(30) == 0 and profile.rate(-1) == 0
    for bad in ("10:1,5:2", "0:-1", ""):
        with pytest.raises(ValueError, match="--profile"):
            Profile.parse(bad)


def test_load_goes_round_robin_to_ready_endpoints_only() -> None:
    from e2e.loadgen import Endpoints

    def slice_(*endpoints: tuple[str, bool | None]) -> client.V1EndpointSlice:
        return client.V1EndpointSlice(
            address_type="IPv4",
            ports=[client.DiscoveryV1EndpointPort(name="grpc", port=8001)],
            endpoints=[
                client.V1Endpoint(addresses=[a], conditions=client.V1EndpointConditions(ready=r))
                for a, r in endpoints
            ],
        )

    class Discovery:
        def list_namespaced_endpoint_slice(self, namespace: str, label_selector: str) -> Any:
            assert label_selector == "kubernetes.io/service-name=svc"
            return client.V1EndpointSliceList(
                items=[slice_(("10.244.0.2", True), ("10.244.0.3", False), ("10.244.1.4", None))]
            )

    endpoints = Endpoints(client.ApiClient(), "ns", "svc", "grpc")
    endpoints.discovery = Discovery()  # type: ignore[assignment]
    endpoints.refresh()
    assert endpoints.addresses == ["10.244.0.2:8001", "10.244.1.4:8001"]
    picks = [endpoints.pick() for _ in range(4)]
    assert sorted(picks[:2]) == sorted(endpoints.addresses) and picks[:2] == picks[2:]
