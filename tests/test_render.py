"""Rendering: the write-up's values, valid Kubernetes objects, and inert hostile strings."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ccs_operator.core.api import ClaudeCodeService, NetworkPeer, SpecError, parse_service
from ccs_operator.core.render import (
    CONFIG_HASH_ANNOTATION,
    RenderSettings,
    autoscaler_min_replicas,
    render_children,
)
from ccs_operator.core.tritonconfig import parse_config_pbtxt

from helpers import SAMPLES, minimal_service

K8S_VERSION = "1.34.0"


def _by_kind(ccs: ClaudeCodeService, **kwargs: Any) -> dict[str, dict[str, Any]]:
    return {m["kind"]: m for m in render_children(ccs, **kwargs)}


def _sample(name: str) -> ClaudeCodeService:
    import yaml

    (path,) = [p for p in SAMPLES if p.stem == name]
    return parse_service(yaml.safe_load(path.read_text()))


def test_write_up_service_renders_the_write_up_values() -> None:
    children = _by_kind(_sample("claude-code"))
    assert sorted(children) == [
        "ConfigMap", "Deployment", "HorizontalPodAutoscaler", "Service", "ServiceMonitor",
    ]
    hpa = children["HorizontalPodAutoscaler"]["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (2, 10)
    cpu, rps = hpa["metrics"]
    assert cpu["resource"]["target"] == {"type": "Utilization", "averageUtilization": 60}
    assert rps["external"]["metric"] == {
        "name": "requests_per_second", "selector": {"matchLabels": {"service": "claude-code"}},
    }
    assert rps["external"]["target"] == {"type": "AverageValue", "averageValue": "1000"}
    config = parse_config_pbtxt(children["ConfigMap"]["data"]["config.pbtxt"])
    assert config.max_batch_size == 32
    assert [(g.count, g.kind) for g in config.instance_group] == [(2, 1)]  # KIND_GPU
    assert config.HasField("dynamic_batching")
    monitor = children["ServiceMonitor"]["spec"]["endpoints"][0]
    assert monitor["port"] == "metrics"  # Triton serves /metrics on 8002, not 8000


def test_deployment_leaves_replicas_to_the_hpa_and_targets_gpus() -> None:
    deployment = _by_kind(_sample("claude-code"))["Deployment"]
    assert "replicas" not in deployment["spec"]
    pod = deployment["spec"]["template"]["spec"]
    (triton,) = pod["containers"]
    assert triton["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
        "tolerations"
    ]
    assert {p["name"]: p["containerPort"] for p in triton["ports"]} == {
        "http": 8000, "grpc": 8001, "metrics": 8002,
    }
    assert triton["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert triton["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert "--metrics-config=summary_latencies=true" in triton["args"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert {"name": "dshm", "mountPath": "/dev/shm"} in triton["volumeMounts"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    for key in ("name", "instance", "component", "managed-by"):
        assert f"app.kubernetes.io/{key}" in labels


def test_config_change_changes_the_pod_template_hash() -> None:
    def pod_hash(**spec: Any) -> str:
        deployment = _by_kind(parse_service(minimal_service(**spec)))["Deployment"]
        return deployment["spec"]["template"]["metadata"]["annotations"][CONFIG_HASH_ANNOTATION]

    assert pod_hash() == pod_hash()
    assert pod_hash() != pod_hash(batching={"maxBatchSize": 16})


def test_hpa_minimum_follows_the_floor_within_bounds() -> None:
    spec = parse_service(minimal_service(replicas={"min": 2, "max": 6})).spec
    assert autoscaler_min_replicas(spec, None) == 2
    assert autoscaler_min_replicas(spec, 4) == 4
    assert autoscaler_min_replicas(spec, 9) == 6
    assert autoscaler_min_replicas(spec, 1) == 2
    disabled = parse_service(
        minimal_service(replicas={"min": 2, "max": 6}, autoscaling={"floor": {"enabled": False}})
    ).spec
    assert autoscaler_min_replicas(disabled, 5) == 2


def test_min_zero_is_rendered_as_zero_not_one() -> None:
    """Defect: replicas.min 0 was rendered as minReplicas 1 while status said floor 0."""
    ccs = parse_service(minimal_service(replicas={"min": 0, "max": 3}))
    assert autoscaler_min_replicas(ccs.spec, None) == 0
    assert autoscaler_min_replicas(ccs.spec, 0) == 0
    assert autoscaler_min_replicas(ccs.spec, 2) == 2  # the floor wakes it
    hpa = _by_kind(ccs, floor=0)["HorizontalPodAutoscaler"]["spec"]
    assert hpa["minReplicas"] == 0
    # HPAScaleToZero's rule: minReplicas 0 needs an External (or Object) metric.
    assert any(m["type"] == "External" for m in hpa["metrics"])


def test_no_service_monitor_without_its_crd() -> None:
    children = _by_kind(
        parse_service(minimal_service()), settings=RenderSettings(service_monitor_crd=False)
    )
    assert "ServiceMonitor" not in children
    off = _by_kind(parse_service(minimal_service(monitoring={"serviceMonitor": False})))
    assert "ServiceMonitor" not in off


def test_owner_reference_points_at_the_service() -> None:
    body = minimal_service()
    body["metadata"]["uid"] = "1234"
    for child in render_children(parse_service(body)):
        (owner,) = child["metadata"]["ownerReferences"]
        assert owner["uid"] == "1234" and owner["controller"] is True
        assert owner["kind"] == "ClaudeCodeService"


def test_pvc_repository_is_mounted_in_both_containers() -> None:
    ccs = parse_service(minimal_service(model={"name": "m", "repository": "pvc://weights/llm"}))
    pod = _by_kind(ccs)["Deployment"]["spec"]["template"]["spec"]
    assert {"name": "model-pvc", "persistentVolumeClaim": {"claimName": "weights",
                                                           "readOnly": True}} in pod["volumes"]
    for container in pod["initContainers"] + pod["containers"]:
        assert any(m["mountPath"] == "/mnt/pvc/weights" for m in container["volumeMounts"])


def test_object_store_credentials_reach_only_the_loader() -> None:
    model = {"name": "m", "repository": "s3://bucket/m", "credentialsSecret": "model-store"}
    pod = _by_kind(parse_service(minimal_service(model=model)))["Deployment"]["spec"]["template"]
    (loader,) = pod["spec"]["initContainers"]
    assert loader["envFrom"] == [{"secretRef": {"name": "model-store"}}]
    assert all("envFrom" not in c for c in pod["spec"]["containers"])
    plain = _by_kind(parse_service(minimal_service()))["Deployment"]["spec"]["template"]
    assert "envFrom" not in plain["spec"]["initContainers"][0]


def test_service_account_is_passed_to_the_pods() -> None:
    ccs = parse_service(minimal_service(serviceAccountName="model-reader"))
    pod = _by_kind(ccs)["Deployment"]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "model-reader"
    default = _by_kind(parse_service(minimal_service()))["Deployment"]["spec"]["template"]
    assert "serviceAccountName" not in default["spec"]


def test_cpu_only_service_has_no_gpu_limit_or_toleration() -> None:
    ccs = parse_service(minimal_service(
        resources={"gpus": 0}, instanceGroups=[{"count": 1, "kind": "KIND_CPU"}]
    ))
    pod = _by_kind(ccs)["Deployment"]["spec"]["template"]["spec"]
    assert "nvidia.com/gpu" not in pod["containers"][0]["resources"]["limits"]
    assert pod["tolerations"] == []


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda p: p.stem)
def test_every_sample_renders_valid_kubernetes_objects(sample: Any) -> None:
    import yaml

    ccs = parse_service(yaml.safe_load(sample.read_text()))
    for manifest in render_children(ccs, floor=3):
        if manifest["apiVersion"].startswith(("monitoring.coreos.com", "keda.sh")):
            continue  # not in the core schema; checked against its CRD on the API server
        kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)


HOSTILE = st.lists(
    st.sampled_from([*list("ab\"'{}#:\n\t-|>&*!%@`[] \\$\u2028"), "{{", "}}", "{%", "---"]),
    min_size=1,
    max_size=15,
).map(lambda parts: "a" + "".join(parts))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(image=HOSTILE, path=HOSTILE, label=HOSTILE, selector=HOSTILE, priority=HOSTILE)
def test_hostile_strings_come_out_inert(
    image: str, path: str, label: str, selector: str, priority: str
) -> None:
    ccs = parse_service(minimal_service(
        image=image,
        model={"name": "m", "repository": "/" + path},
        monitoring={"labels": {"team": label}},
        nodeSelector={"pool": selector},
        priorityClassName=priority,
    ))
    benign = parse_service(minimal_service(
        image="x", model={"name": "m", "repository": "/x"}, monitoring={"labels": {"team": "x"}},
        nodeSelector={"pool": "x"}, priorityClassName="x",
    ))
    children = _by_kind(ccs)
    # Same structure as a benign object: no key was injected anywhere.
    assert _shape(children) == _shape(_by_kind(benign))
    pod = children["Deployment"]["spec"]["template"]["spec"]
    assert pod["containers"][0]["image"] == image
    assert pod["nodeSelector"] == {"pool": selector}
    assert pod["priorityClassName"] == priority
    assert pod["initContainers"][0]["args"][1] == "/" + path
    assert children["ServiceMonitor"]["metadata"]["labels"]["team"] == label


def _shape(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_shape(v) for v in value]
    return type(value).__name__


def test_node_cache_mounts_the_host_directory_for_the_loader_only() -> None:
    from ccs_operator.core.render import MODEL_CACHE_MOUNT

    body = minimal_service()
    body["spec"]["model"]["cache"] = {
        "enabled": True,
        "hostPath": "/mnt/nvme/ccs",
        "sizeLimit": "20Gi",
    }
    pod = _by_kind(parse_service(body))["Deployment"]["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["model-cache"]["hostPath"] == {
        "path": "/mnt/nvme/ccs",
        "type": "DirectoryOrCreate",
    }
    loader = pod["initContainers"][0]
    assert {"name": "model-cache", "mountPath": MODEL_CACHE_MOUNT} in loader["volumeMounts"]
    args = loader["args"]
    assert args[args.index("--cache-dir") + 1] == MODEL_CACHE_MOUNT
    assert args[args.index("--cache-limit-bytes") + 1] == str(20 * 2**30)
    triton = pod["containers"][0]
    assert all(m["name"] != "model-cache" for m in triton["volumeMounts"]), "Triton reads its copy"


def test_without_the_cache_no_host_directory_is_mounted() -> None:
    pod = _by_kind(parse_service(minimal_service()))["Deployment"]["spec"]["template"]["spec"]
    assert all("hostPath" not in v for v in pod["volumes"])
    assert "--cache-dir" not in pod["initContainers"][0]["args"]
    assert pod["initContainers"][0]["args"][-2:] == ["--report", "/dev/termination-log"]


@pytest.mark.parametrize(
    ("cache", "repository", "message"),
    [
        ({"enabled": True}, "pvc://weights/m", "cache applies to s3:// repositories"),
        ({"hostPath": "/data/../etc"}, "s3://m/x", "no . or .. parts"),
        ({"sizeLimit": "0"}, "s3://m/x", "sizeLimit must be positive"),
    ],
)
def test_bad_cache_settings_name_the_field(
    cache: dict[str, Any], repository: str, message: str
) -> None:
    from ccs_operator.core.api import SpecError

    body = minimal_service()
    body["spec"]["model"].update(repository=repository, cache=cache)
    with pytest.raises(SpecError, match=message) as raised:
        parse_service(body)
    assert "model" in str(raised.value)


def test_with_the_node_cache_replicas_prefer_nodes_running_the_service() -> None:
    body = minimal_service(
        affinity={"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": [
                {"key": "zone", "operator": "In", "values": ["a"]}]}]}}},
    )  # fmt: skip
    body["spec"]["model"]["cache"] = {"enabled": True}
    ccs = parse_service(body)
    affinity = _by_kind(ccs)["Deployment"]["spec"]["template"]["spec"]["affinity"]
    assert affinity["nodeAffinity"] == body["spec"]["affinity"]["nodeAffinity"], "user's kept"
    (term,) = affinity["podAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"] == {
        "labelSelector": {"matchLabels": {"serving.claudecode.io/service": "svc"}},
        "topologyKey": "kubernetes.io/hostname",
    }
    assert ccs.spec.affinity == body["spec"]["affinity"], "the parsed spec is not mutated"
    pod = _by_kind(ccs)["Deployment"]["spec"]["template"]["spec"]
    # Spread over zones, not hosts, or the spread would undo the preference.
    assert [c["topologyKey"] for c in pod["topologySpreadConstraints"]] == [
        "topology.kubernetes.io/zone"
    ]
    plain = _by_kind(parse_service(minimal_service()))["Deployment"]["spec"]["template"]["spec"]
    assert "affinity" not in plain
    assert [c["topologyKey"] for c in plain["topologySpreadConstraints"]] == [
        "kubernetes.io/hostname"
    ]
def test_serving_pods_meet_restricted_pod_security_with_a_read_only_root() -> None:
    pod = _by_kind(parse_service(minimal_service()))["Deployment"]["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes["tmp"]
    for container in [*pod["initContainers"], *pod["containers"]]:
        security = container["securityContext"]
        assert security["allowPrivilegeEscalation"] is False
        assert security["capabilities"] == {"drop": ["ALL"]}
        assert security["readOnlyRootFilesystem"] is True
        assert security["seccompProfile"] == {"type": "RuntimeDefault"}
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        assert mounts["/tmp"]["name"] == "tmp"  # writable scratch
    (triton,) = pod["containers"]
    store = next(m for m in triton["volumeMounts"] if m["name"] == "model-store")
    assert store["readOnly"] is True  # the loader writes the store, Triton only reads it
def test_every_child_and_pod_carries_the_label_the_operator_watches_by() -> None:
    """The operator lists and watches children and pods only through this label (filtered by
    the API server): a child without it would be invisible to its own watches. A user's
    ServiceMonitor labels cannot override it."""
    from ccs_operator.controllers.handlers import MANAGED_BY_SELECTOR

    key, value = MANAGED_BY_SELECTOR.split("=")
    body = minimal_service(monitoring={"labels": {key: "somebody-else", "release": "kps"}})
    children = _by_kind(parse_service(body))
    assert set(children) == {
        "ConfigMap",
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "ServiceMonitor",
    }
    for kind, child in children.items():
        assert child["metadata"]["labels"][key] == value, kind
    pod = children["Deployment"]["spec"]["template"]["metadata"]
    assert pod["labels"][key] == value
    assert children["ServiceMonitor"]["metadata"]["labels"]["release"] == "kps"


def test_no_network_policy_unless_asked() -> None:
    children = _by_kind(parse_service(minimal_service()))
    assert "NetworkPolicy" not in children
    annotations = children["Deployment"]["metadata"]["annotations"].values()
    assert any(v.startswith("CKV2_K8S_6=spec.networkPolicy is off") for v in annotations)


def test_network_policy_admits_the_namespace_the_allowed_peers_and_prometheus() -> None:
    ccs = parse_service(
        minimal_service(
            ports={"http": 9000, "grpc": 9001, "metrics": 9002},
            networkPolicy={
                "enabled": True,
                "allowFrom": [
                    {"namespaceSelector": {"matchLabels": {"team": "gateway"}}},
                    {"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": "ui"}}},
                    {"ipBlock": {"cidr": "192.0.2.0/24", "except": ["192.0.2.1/32"]}},
                ],
            },
        )
    )
    prometheus = {"namespaceSelector": {"matchLabels": {"name": "obs"}}}
    settings = RenderSettings(metrics_from=(NetworkPeer.model_validate(prometheus),))
    children = _by_kind(ccs, settings=settings)
    policy = children["NetworkPolicy"]
    kubernetes_validate.validate(policy, K8S_VERSION, strict=True)
    assert policy["metadata"]["name"] == "svc" and policy["metadata"]["namespace"] == "ns"
    # It selects exactly the serving pods (the Deployment's selector).
    deployment = children["Deployment"]
    assert policy["spec"]["podSelector"] == deployment["spec"]["selector"]
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    assert policy["spec"]["ingress"] == [
        {"from": [{"podSelector": {}}]},
        {
            "from": [
                {"namespaceSelector": {"matchLabels": {"team": "gateway"}}},
                {"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": "ui"}}},
                {"ipBlock": {"cidr": "192.0.2.0/24", "except": ["192.0.2.1/32"]}},
            ],
            "ports": [{"port": 9000, "protocol": "TCP"}, {"port": 9001, "protocol": "TCP"}],
        },
        {"from": [prometheus], "ports": [{"port": 9002, "protocol": "TCP"}]},
    ]
    # With the policy rendered, the "no NetworkPolicy" exception is gone.
    annotations = deployment["metadata"]["annotations"].values()
    assert not any(v.startswith("CKV2_K8S_6") for v in annotations)


def test_network_policy_without_peers_admits_the_namespace_and_prometheus_only() -> None:
    ccs = parse_service(minimal_service(networkPolicy={"enabled": True}))
    ingress = _by_kind(ccs)["NetworkPolicy"]["spec"]["ingress"]
    assert ingress == [
        {"from": [{"podSelector": {}}]},
        {
            "from": [
                {
                    "namespaceSelector": {
                        "matchLabels": {"kubernetes.io/metadata.name": "monitoring"}
                    }
                }
            ],
            "ports": [{"port": 8002, "protocol": "TCP"}],
        },
    ]


@pytest.mark.parametrize(
    ("peer", "words"),
    [
        ({}, "set podSelector, namespaceSelector or ipBlock"),
        ({"ipBlock": {"cidr": "192.0.2.0/24"}, "podSelector": {}}, "ipBlock cannot be combined"),
        ({"podSelector": {"matchExpressions": [{"key": "a", "operator": "Is"}]}}, "'NotIn'"),
        ({"namespaceSelector": {"labels": {}}}, "unknown field"),
    ],
)
def test_bad_network_policy_peers_name_the_field(peer: dict[str, Any], words: str) -> None:
    with pytest.raises(SpecError) as err:
        parse_service(minimal_service(networkPolicy={"enabled": True, "allowFrom": [peer]}))
    assert err.value.path.startswith("spec.networkPolicy.allowFrom[0]"), err.value.path
    assert words in err.value.message, err.value.message


def test_a_value_that_looks_like_a_placeholder_stays_a_value() -> None:
    """Values never reach the YAML parser (each template is parsed as a skeleton with
    placeholders, then filled): one spelled like a placeholder is still only itself."""
    lookalike = "\x00ccs:0\x00"
    ccs = parse_service(
        minimal_service(image=lookalike, monitoring={"labels": {"team": "\x00ccs:1\x00"}})
    )
    children = _by_kind(ccs)
    (triton,) = children["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert triton["image"] == lookalike
    assert children["ServiceMonitor"]["metadata"]["labels"]["team"] == "\x00ccs:1\x00"
    # And two renders of different services share a skeleton but never their values.
    other = _by_kind(parse_service(minimal_service("other")))
    assert other["Deployment"]["metadata"]["name"] == "other"
    assert children["Deployment"]["metadata"]["name"] == "svc"


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda p: p.stem)
def test_skeleton_rendering_equals_parsing_the_filled_text(
    sample: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fast path (each template parsed once as a skeleton, then filled) gives exactly
    what Jinja's own tojson and a YAML parse of the whole text give, key order included."""
    import jinja2
    import yaml

    from ccs_operator.core import render
    from ccs_operator.core.render import TEMPLATES_DIR, to_yaml

    plain = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES_DIR)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )

    def parse_whole(template: str, context: dict[str, Any]) -> dict[str, Any]:
        manifest: dict[str, Any] = yaml.safe_load(plain.get_template(template).render(**context))
        if not manifest["metadata"]["ownerReferences"]:
            del manifest["metadata"]["ownerReferences"]
        return manifest

    body = yaml.safe_load(sample.read_text())
    body["metadata"].update(namespace="ns", uid="0b0c")
    ccs = parse_service(body)
    for floor in (None, 3):
        fast = render_children(ccs, floor=floor)
        with monkeypatch.context() as patch:
            patch.setattr(render, "_render", parse_whole)
            whole = render_children(ccs, floor=floor)
        assert fast == whole
        assert to_yaml(fast) == to_yaml(whole)
