"""The helm chart, rendered by the real helm CLI (no cluster): lint, template with default and
non-default values, the values schema, restricted Pod Security, least-privilege RBAC, the
operator's configuration, the dashboard and the alert rules (checked and unit-tested with
Prometheus' own promtool)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from ccs_operator import __version__, metrics
from ccs_operator.clients.kube import CHILD_TYPES
from ccs_operator.config import OperatorConfig
from ccs_operator.controllers import floorloop
from e2e import prometheus
from e2e.helmchart import CHART_DIR, HelmError, find, helm, template

from helpers import ROOT

RELEASE, NAMESPACE = "ccs-operator", "ccs-system"
NAMESPACED = {"rbac": {"scope": "Namespaced"}, "watchNamespaces": ["team-a", "team-b"]}
MONITORING = {"serviceMonitor": {"enabled": True}, "prometheusRule": {"enabled": True}}
ALL_ON = {
    **NAMESPACED,
    **MONITORING,
    "replicaCount": 2,
    "operator": {
        "logLevel": "DEBUG",
        "queryOverrides": {"mode": "namespaces", "namespaces": ["team-a"], "maxSeries": 5},
        "prometheus": {"bearerTokenSecret": {"name": "prom"}, "kedaTriggerAuthentication": "prom"},
    },
    "image": {"digest": "sha256:" + "a" * 64},
    "networkPolicy": {"enabled": True},
    "dashboard": {"namespace": "monitoring", "annotations": {"grafana_folder": "Inference"}},
    "prometheusAdapter": {"rules": {"enabled": True, "namespace": "monitoring"}},
}


def _deployment(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (deployment,) = find(docs, "Deployment")
    return deployment


def _env(container: dict[str, Any], namespace: str = NAMESPACE) -> dict[str, str]:
    """The container's environment as the process sees it (downward API resolved)."""
    env = {}
    for item in container["env"]:
        if "value" in item:
            env[item["name"]] = item["value"]
        elif item["valueFrom"].get("fieldRef", {}).get("fieldPath") == "metadata.namespace":
            env[item["name"]] = namespace
    return env


def _rules(docs: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{d['kind']} {d['metadata'].get('namespace', '')}/{d['metadata']['name']}", rule)
        for d in docs
        if d["kind"] in ("ClusterRole", "Role")
        for rule in d["rules"]
    ]


def _grants(docs: list[dict[str, Any]], kind: str) -> set[tuple[str, str, str]]:
    """(apiGroup, resource, verb) triples granted by the roles of `kind`."""
    return {
        (group, resource, verb)
        for d in docs
        if d["kind"] == kind
        for rule in d["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


# -- metadata ---------------------------------------------------------------------------------
def test_chart_versions_follow_the_package() -> None:
    chart = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert chart["name"] == "ccs-operator"
    assert chart["appVersion"] == __version__ == project["version"]
    values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    assert values["image"]["tag"] == "", "the image tag defaults to appVersion"
    assert (CHART_DIR / "crds" / "claudecodeservices.yaml").read_bytes() == (
        ROOT / "crds" / "claudecodeservices.yaml"
    ).read_bytes()


def test_every_crd_field_explains_itself() -> None:
    """`kubectl explain ccs.<any field>` prints a description: spec and status alike (list
    items and map values are described by their parent; metadata is the API's ObjectMeta)."""
    crd = yaml.safe_load((CHART_DIR / "crds" / "claudecodeservices.yaml").read_text())
    (version,) = crd["spec"]["versions"]

    def walk(schema: dict[str, Any], path: str) -> Any:
        yield path, schema
        for key, sub in schema.get("properties", {}).items():
            yield from walk(sub, f"{path}.{key}")
        if "items" in schema:
            yield from walk(schema["items"], f"{path}[]")

    missing = [
        path
        for path, schema in walk(version["schema"]["openAPIV3Schema"], "ccs")
        if "description" not in schema and not path.endswith("[]") and path != "ccs.metadata"
    ]
    assert missing == []
    # `kubectl get ccs -o wide` adds the model and the endpoint.
    wide = {c["name"]: c for c in version["additionalPrinterColumns"] if c.get("priority") == 1}
    assert wide["Endpoint"]["jsonPath"] == ".status.endpoint.http"


@pytest.mark.parametrize(
    "values",
    [{}, NAMESPACED, MONITORING, ALL_ON],
    ids=["default", "namespaced", "monitoring", "all"],
)
def test_helm_lint_is_clean(values: dict[str, Any], tmp_path: Path) -> None:
    values_file = tmp_path / "values.yaml"
    values_file.write_text(yaml.safe_dump(values))
    result = helm("lint", "--strict", str(CHART_DIR), "-f", str(values_file))
    assert "0 chart(s) failed" in result.stdout, result.stdout


# -- what is rendered -------------------------------------------------------------------------
def test_default_install_renders_the_operator_cluster_wide() -> None:
    docs = template()
    kinds = sorted((d["kind"], d["metadata"]["name"]) for d in docs)
    assert kinds == sorted(
        [
            ("ServiceAccount", RELEASE),
            ("ClusterRole", RELEASE),
            ("ClusterRoleBinding", RELEASE),
            ("ClusterRole", f"{RELEASE}-discovery"),
            ("ClusterRoleBinding", f"{RELEASE}-discovery"),
            ("Role", f"{RELEASE}-leader-election"),
            ("RoleBinding", f"{RELEASE}-leader-election"),
            ("Deployment", RELEASE),
            ("Service", f"{RELEASE}-metrics"),
            ("ConfigMap", f"{RELEASE}-dashboard"),
            ("ValidatingAdmissionPolicy", f"{RELEASE}-owned-children"),
            ("ValidatingAdmissionPolicyBinding", f"{RELEASE}-owned-children"),
        ]
    )
    deployment = _deployment(docs)
    assert deployment["spec"]["replicas"] == 1
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"] == f"ghcr.io/claudecode/ccs-operator:{__version__}"
    assert container["args"] == ["run"]
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    env = _env(container)
    assert env["CCS_NAMESPACES"] == ""  # every namespace
    assert env["CCS_LEADER_ELECTION"] == "true"


@pytest.mark.parametrize("values", [{}, NAMESPACED, ALL_ON], ids=["default", "namespaced", "all"])
def test_the_operator_reads_the_rendered_environment(values: dict[str, Any]) -> None:
    """The env the chart sets parses with the operator's own config reader, and the ports,
    probes and Service all point at what the operator serves."""
    docs = template(values)
    deployment = _deployment(docs)
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = _env(container)
    known = {f"CCS_{name.upper()}" for name in OperatorConfig.__dataclass_fields__} | {
        "CCS_PROMETHEUS_BEARER_TOKEN",
        "CCS_QUERY_OVERRIDE_NAMESPACES",
        "CCS_QUERY_OVERRIDE_TIMEOUT_SECONDS",
        "CCS_QUERY_OVERRIDE_MAX_SERIES",
    }
    assert {k for k in env if k.startswith("CCS_")} <= known
    config = OperatorConfig.from_env(env)
    overrides = values.get("operator", {}).get("queryOverrides", {})
    # Off unless the values allow them, exactly where they allow them.
    assert config.query_overrides.mode == overrides.get("mode", "disabled")
    assert config.query_overrides.namespaces == frozenset(overrides.get("namespaces", ()))
    assert config.query_overrides.max_series == overrides.get("maxSeries", 20)
    assert config.leader_election is True
    assert config.keda_trigger_authentication == (
        "prom" if values is ALL_ON else None
    )
    assert config.lease_namespace == NAMESPACE
    assert config.namespaces == tuple(values.get("watchNamespaces", ()))
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": config.metrics_port, "health": config.health_port}
    for probe in (container["livenessProbe"], container["readinessProbe"]):
        # `ccs-operator run` serves /healthz on the health port (runner.Health).
        assert probe["httpGet"] == {"path": "/healthz", "port": "health"}
    (service,) = find(docs, "Service")
    assert service["spec"]["ports"][0]["targetPort"] == "metrics"
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert service["spec"]["selector"] == selector
    assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    # The Lease the operator uses is the one the leader-election Role names.
    (lease_role,) = find(docs, "Role", f"{RELEASE}-leader-election")
    named = [r for r in lease_role["rules"] if r.get("resourceNames")]
    assert named[0]["resourceNames"] == [config.lease_name]
    assert lease_role["metadata"]["namespace"] == config.lease_namespace


@pytest.mark.parametrize("values", [{}, NAMESPACED, ALL_ON], ids=["default", "namespaced", "all"])
def test_rendered_objects_are_valid_kubernetes(values: dict[str, Any]) -> None:
    """Every core object against Kubernetes' OpenAPI schema, strictly (no unknown fields)."""
    for doc in template(values):
        if doc["apiVersion"].startswith("monitoring.coreos.com"):
            continue  # checked against prometheus-operator's CRDs in e2e/tests/test_helm.py
        kubernetes_validate.validate(doc, "1.34.0", strict=True)


@pytest.mark.parametrize("values", [{}, ALL_ON], ids=["default", "all"])
def test_pod_meets_the_restricted_pod_security_standard(values: dict[str, Any]) -> None:
    pod = _deployment(template(values))["spec"]["template"]["spec"]
    pod_sc = pod["securityContext"]
    assert pod_sc["runAsNonRoot"] is True
    assert pod_sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod_sc.get("runAsUser", 1) != 0
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        assert not pod.get(key)
    assert all(
        set(v) <= {"name", "emptyDir", "configMap", "secret", "projected"} for v in pod["volumes"]
    )
    for container in pod["containers"] + pod.get("initContainers", []):
        sc = container["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["runAsNonRoot"] is True
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
        assert not sc.get("privileged")
        assert all("hostPort" not in p for p in container["ports"])


# -- RBAC -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "values",
    [{}, NAMESPACED, ALL_ON, {"watchNamespaces": ["a"]}],
    ids=["default", "namespaced", "all", "cluster-some-namespaces"],
)
def test_rbac_has_no_wildcards_and_no_secrets(values: dict[str, Any]) -> None:
    docs = template(values)
    rules = _rules(docs)
    assert rules
    for where, rule in rules:
        for field in ("apiGroups", "resources", "verbs", "resourceNames", "nonResourceURLs"):
            assert not any("*" in item for item in rule.get(field, [])), (where, rule)
        assert "secrets" not in rule["resources"], where
        assert not {"escalate", "bind", "impersonate", "deletecollection"} & set(rule["verbs"])


def test_rbac_grants_exactly_what_the_operator_calls() -> None:
    """Tied to the code: every child kind the operator applies (kube.CHILD_TYPES) is granted
    apply/read/watch, and nothing beyond the list below is granted at all."""
    docs = template()
    cluster = _grants(docs, "ClusterRole")
    for child in CHILD_TYPES.values():
        group = child.api_version.rpartition("/")[0]
        for verb in ("get", "list", "watch", "create", "patch"):
            assert (group, child.plural, verb) in cluster, (child.kind, verb)
    group = "serving.claudecode.io"
    expected = {
        # Watched only: kopf writes nothing to them (no state handlers, no finalizers).
        *((group, "claudecodeservices", v) for v in ("list", "watch")),
        (group, "claudecodeservices/status", "patch"),
        (group, "claudecodeservices/finalizers", "update"),
        *(
            (c.api_version.rpartition("/")[0], c.plural, v)
            for c in CHILD_TYPES.values()
            for v in ("get", "list", "watch", "create", "patch")
        ),
        ("monitoring.coreos.com", "servicemonitors", "delete"),  # a ServiceMonitor switched off
        # The autoscaler of the engine a service switched away from.
        ("autoscaling", "horizontalpodautoscalers", "delete"),
        ("keda.sh", "scaledobjects", "delete"),
        ("networking.k8s.io", "networkpolicies", "delete"),  # a NetworkPolicy switched off
        ("", "events", "create"),
        ("", "events", "patch"),  # a repeated Event bumps its count
        ("", "pods", "list"),  # serving pods, watched for cold-start times
        ("", "pods", "watch"),
        # The HPA's External metric, read to tell whether an adapter serves it.
        ("external.metrics.k8s.io", floorloop.EXTERNAL_RPS_METRIC, "list"),
        ("apiextensions.k8s.io", "customresourcedefinitions", "list"),
        ("apiextensions.k8s.io", "customresourcedefinitions", "watch"),
    }
    assert cluster == expected
    lease = _grants(docs, "Role")
    assert lease == {("coordination.k8s.io", "leases", v) for v in ("create", "get", "update")}


@pytest.mark.parametrize("values", [{}, NAMESPACED], ids=["default", "namespaced"])
def test_the_admission_policy_confines_the_service_account_to_the_child_kinds(
    values: dict[str, Any],
) -> None:
    """Tied to the code: the policy covers every child kind the operator writes
    (kube.CHILD_TYPES), every write verb, and only the chart's ServiceAccount. What it allows
    and refuses is proven on the real API server (e2e/tests/test_helm.py)."""
    docs = template(values)
    (policy,) = find(docs, "ValidatingAdmissionPolicy")
    (binding,) = find(docs, "ValidatingAdmissionPolicyBinding")
    assert binding["spec"]["policyName"] == policy["metadata"]["name"]
    assert binding["spec"]["validationActions"] == ["Deny"]
    assert policy["spec"]["failurePolicy"] == "Fail"
    covered = {
        (group, resource, operation)
        for rule in policy["spec"]["matchConstraints"]["resourceRules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for operation in rule["operations"]
    }
    assert covered == {
        (c.api_version.rpartition("/")[0], c.plural, op)
        for c in CHILD_TYPES.values()
        for op in ("CREATE", "UPDATE", "DELETE")
    }
    (condition,) = policy["spec"]["matchConditions"]
    assert condition["expression"] == (
        f'request.userInfo.username == "system:serviceaccount:{NAMESPACE}:{RELEASE}"'
    )
    assert not find(
        template({**values, "rbac": {**values.get("rbac", {}), "admissionPolicy": False}}),
        "ValidatingAdmissionPolicy",
    )


def test_namespaced_install_uses_roles_in_the_watched_namespaces_only() -> None:
    docs = template(NAMESPACED)
    roles = {(d["metadata"]["namespace"], d["metadata"]["name"]) for d in find(docs, "Role")}
    assert roles == {
        ("team-a", RELEASE),
        ("team-b", RELEASE),
        (NAMESPACE, f"{RELEASE}-leader-election"),
    }
    for binding in find(docs, "RoleBinding"):
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": RELEASE, "namespace": NAMESPACE}
        ]
    # The only cluster-wide grant left is kopf's read-only discovery of CRDs and namespaces.
    assert _grants(docs, "ClusterRole") == {
        ("apiextensions.k8s.io", "customresourcedefinitions", "list"),
        ("apiextensions.k8s.io", "customresourcedefinitions", "watch"),
        ("", "namespaces", "list"),
        ("", "namespaces", "watch"),
    }
    assert (
        _env(_deployment(docs)["spec"]["template"]["spec"]["containers"][0])["CCS_NAMESPACES"]
        == "team-a,team-b"
    )
    strict = template({**NAMESPACED, "rbac": {"scope": "Namespaced", "clusterDiscovery": False}})
    assert not [d for d in strict if d["kind"] in ("ClusterRole", "ClusterRoleBinding")]


# -- values that are refused ------------------------------------------------------------------
@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"rbac": {"scope": "Everywhere"}}, r"rbac/scope|rbac\.scope"),
        ({"replicaCount": 0}, "replicaCount"),
        ({"image": {"pullPolicy": "Sometimes"}}, "pullPolicy"),
        ({"metrics": {"port": 70000}}, "metrics/port|metrics.port"),
        ({"watchNamespaces": ["Team_A"]}, "watchNamespaces"),
        ({"operator": {"logLevel": "LOUD"}}, "logLevel"),
        ({"prometheusRule": {"degraded": {"for": "five minutes"}}}, "degraded/for|degraded.for"),
        ({"securityContext": {"runAsUser": 0}}, "runAsUser"),
        ({"serviceMonitr": {"enabled": True}}, "serviceMonitr"),
        ({"rbac": {"scope": "Namespaced"}}, "rbac.scope Namespaced needs watchNamespaces"),
        ({"operator": {"queryOverrides": {"mode": "yes"}}}, "queryOverrides"),
        ({"operator": {"queryOverrides": {"mode": "namespaces"}}}, "queryOverrides"),
        (
            {"operator": {"queryOverrides": {"mode": "allowed", "namespaces": ["a"]}}},
            "queryOverrides",
        ),
        (
            {"replicaCount": 2, "operator": {"leaderElection": {"enabled": False}}},
            "replicaCount > 1 needs operator.leaderElection.enabled",
        ),
    ],
)
def test_bad_values_are_refused_with_a_message_naming_the_field(
    values: dict[str, Any], message: str
) -> None:
    with pytest.raises(HelmError) as refused:
        template(values)
    assert re.search(message, refused.value.stderr), refused.value.stderr


# -- monitoring -------------------------------------------------------------------------------
def test_service_monitor_scrapes_the_metrics_service() -> None:
    docs = template({"serviceMonitor": {"enabled": True, "labels": {"release": "kps"}}})
    (monitor,) = find(docs, "ServiceMonitor")
    (service,) = find(docs, "Service")
    assert monitor["metadata"]["labels"]["release"] == "kps"
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    assert not find(template(), "ServiceMonitor") and not find(template(), "PrometheusRule")


def _exported_metric_names() -> set[str]:
    names = set()
    for value in vars(metrics).values():
        if not isinstance(value, MetricWrapperBase):
            continue
        for family in value.describe():
            names.add(family.name)
            if family.type == "counter":
                names.add(family.name + "_total")
            if family.type == "histogram":
                names |= {family.name + s for s in ("_bucket", "_sum", "_count")}
    return names


TRITON_METRICS = {
    "nv_inference_queue_duration_us",
    "nv_inference_request_success",
    "nv_inference_request_failure",
    "nv_inference_count",
    "nv_inference_exec_count",
    "nv_inference_queue_summary_us",
    "nv_gpu_memory_used_bytes",
    "nv_gpu_memory_total_bytes",
    "nv_gpu_utilization",
}
KUBE_STATE_METRICS = {
    "kube_horizontalpodautoscaler_status_current_replicas",
    "kube_deployment_status_replicas_ready",
}
PROMQL_WORDS = {
    "sum",
    "max",
    "avg",
    "by",
    "rate",
    "clamp_min",
    "label_values",
    "avg_over_time",
    "and",
    "bool",
    "deriv",
    "predict_linear",
    "on",
    "e",
    "quantile",
}


def _metric_names(expr: str) -> set[str]:
    expr = re.sub(r"label_values\(([^,]*),[^)]*\)", r"\1", expr)  # the label argument
    expr = re.sub(r'"[^"]*"', '""', expr)  # label values
    expr = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", expr)  # grouping labels
    expr = re.sub(r"\{[^}]*\}", "", expr)  # selectors
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges
    names = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr))
    return {n for n in names if n not in PROMQL_WORDS and not n.startswith("$")}


def test_dashboard_is_a_sidecar_configmap_using_real_metric_names() -> None:
    docs = template(ALL_ON)
    (config_map,) = find(docs, "ConfigMap", f"{RELEASE}-dashboard")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert config_map["metadata"]["namespace"] == "monitoring"
    assert config_map["metadata"]["annotations"] == {"grafana_folder": "Inference"}
    (text,) = config_map["data"].values()
    dashboard = json.loads(text)
    assert text.strip() == (CHART_DIR / "dashboards" / "ccs-overview.json").read_text().strip()
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    titles = " | ".join(p["title"] for p in panels).lower()
    for wanted in ("queue latency", "floor", "throughput", "batch size", "gpu memory"):
        assert wanted in titles
    exprs = [t["expr"] for p in panels for t in p["targets"]]
    exprs += [v["query"]["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    used = set().union(*(_metric_names(e) for e in exprs))
    unknown = used - _exported_metric_names() - TRITON_METRICS - KUBE_STATE_METRICS
    assert unknown == set(), f"metrics neither the operator nor Triton export: {unknown}"
    assert {"ccs_floor_replicas", "ccs_max_replicas", "ccs_queue_latency_milliseconds"} <= used
    assert {"nv_inference_queue_duration_us", "nv_gpu_memory_used_bytes"} <= used
    assert all(p["datasource"]["uid"] == "${datasource}" for p in panels)
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


# -- alert rules, checked and unit-tested with promtool ---------------------------------------
def _promtool() -> str:
    """promtool ships beside prometheus in Debian's package, installed on first use."""
    found = shutil.which("promtool")
    if found is None:
        found = str(Path(prometheus.ensure_binary()).resolve().parent / "promtool")
    assert Path(found).exists(), f"no promtool beside {found}"
    return found


def _rule_groups(values: dict[str, Any] | None = None) -> dict[str, Any]:
    docs = template({"prometheusRule": {"enabled": True, **(values or {})}})
    (rule,) = find(docs, "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    return {"groups": rule["spec"]["groups"]}


def test_leak_alert_is_the_serving_images_rule() -> None:
    """One definition of the GPU-memory leak alert for the project: the chart ships a
    byte-identical copy of the serving image's rule file (tests/test_serving_leak_rule.py
    tests its behaviour in depth) and puts its groups into the PrometheusRule."""
    source = ROOT / "serving_image" / "prometheus" / "gpu-memory-leak.rules.yaml"
    copy = CHART_DIR / "rules" / "gpu-memory-leak.rules.yaml"
    assert copy.read_bytes() == source.read_bytes(), f"{copy} differs from {source}; copy it"
    rendered = _rule_groups({"additionalLabels": {"team": "inference"}})["groups"]
    leak = yaml.safe_load(source.read_text())["groups"]
    by_name = {g["name"]: g for g in rendered}
    for group in leak:
        for mine, theirs in zip(by_name[group["name"]]["rules"], group["rules"], strict=True):
            assert mine["expr"] == theirs["expr"] and mine["annotations"] == theirs["annotations"]
            assert mine["labels"] == {**theirs["labels"], "team": "inference"}
    off = _rule_groups({"gpuMemoryLeak": {"enabled": False}})["groups"]
    assert not {g["name"] for g in leak} & {g["name"] for g in off}


@pytest.mark.prometheus
def test_prometheus_rule_passes_promtool_check(tmp_path: Path) -> None:
    rules = _rule_groups()
    names = {r.get("alert") for g in rules["groups"] for r in g["rules"]}
    assert {
        "CCSQueueLatencySLOBurnFast",
        "CCSQueueLatencySLOBurnSlow",
        "CCSFloorPinnedAtMax",
        "CCSDegraded",
        "TritonGPUMemoryLeak",
    } <= names
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(rules))
    result = subprocess.run(
        [_promtool(), "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


PROMTOOL_TESTS = """
evaluation_interval: 30s
tests:
  # svc: mean queue wait 20 ms for an hour, then 200 ms (over the 100 ms SLO) for an hour.
  # calm: 20 ms throughout.
  - interval: 30s
    input_series:
      - series: 'nv_inference_queue_duration_us{namespace="ns",service="svc",pod="svc-0"}'
        values: '0+600000x120 78000000+6000000x119'
      - series: 'nv_inference_request_success{namespace="ns",service="svc",pod="svc-0"}'
        values: '0+30x240'
      - series: 'nv_inference_queue_duration_us{namespace="ns",service="calm",pod="calm-0"}'
        values: '0+600000x240'
      - series: 'nv_inference_request_success{namespace="ns",service="calm",pod="calm-0"}'
        values: '0+30x240'
    promql_expr_test:
      - expr: ccs:queue_latency_ms:mean
        eval_time: 30m
        exp_samples:
          - labels: 'ccs:queue_latency_ms:mean{namespace="ns",service="svc"}'
            value: 20
          - labels: 'ccs:queue_latency_ms:mean{namespace="ns",service="calm"}'
            value: 20
      - expr: ccs:queue_latency_ms:mean{service="svc"}
        eval_time: 90m
        exp_samples:
          - labels: 'ccs:queue_latency_ms:mean{namespace="ns",service="svc"}'
            value: 200
    alert_rule_test:
      # Two bad minutes are 3% of the hour's budget: no page yet.
      - eval_time: 62m
        alertname: CCSQueueLatencySLOBurnFast
        exp_alerts: []
      - eval_time: 80m
        alertname: CCSQueueLatencySLOBurnFast
        exp_alerts:
          - exp_labels: {severity: critical, namespace: ns, service: svc}
      - eval_time: 119m
        alertname: CCSQueueLatencySLOBurnSlow
        exp_alerts:
          - exp_labels: {severity: warning, namespace: ns, service: svc}
  # The floor reaches max and stays; another service's floor stays below its max.
  - interval: 1m
    input_series:
      - series: 'ccs_floor_replicas{ccs_namespace="ns",ccs_name="hot",pod="op-1"}'
        values: '2 4 6 8 10 10 10 10 10 10 10 10 10 10 10 10 10 10 10 10 10 10 10 10'
      - series: 'ccs_max_replicas{ccs_namespace="ns",ccs_name="hot",pod="op-1"}'
        values: '10x24'
      - series: 'ccs_floor_replicas{ccs_namespace="ns",ccs_name="ok",pod="op-1"}'
        values: '3x24'
      - series: 'ccs_max_replicas{ccs_namespace="ns",ccs_name="ok",pod="op-1"}'
        values: '10x24'
    alert_rule_test:
      - eval_time: 10m
        alertname: CCSFloorPinnedAtMax
        exp_alerts: []
      - eval_time: 22m
        alertname: CCSFloorPinnedAtMax
        exp_alerts:
          - exp_labels: {severity: warning, ccs_namespace: ns, ccs_name: hot}
  # Degraded turns True at minute 2 on bad; it stays False on good.
  - interval: 1m
    input_series:
      - series: 'ccs_service_condition{ccs_namespace="ns",ccs_name="bad",type="Degraded",
          status="True"}'
        values: '0 0 1 1 1 1 1 1 1 1 1'
      - series: 'ccs_service_condition{ccs_namespace="ns",ccs_name="good",type="Degraded",
          status="True"}'
        values: '0x10'
    alert_rule_test:
      - eval_time: 4m
        alertname: CCSDegraded
        exp_alerts: []
      - eval_time: 8m
        alertname: CCSDegraded
        exp_alerts:
          - exp_labels: {severity: warning, ccs_namespace: ns, ccs_name: bad}
  # GPU memory climbing 100 MiB a minute on an 80 GiB GPU from 60 GiB: full in ~3.4 h.
  # A flat GPU at 70 GiB never alerts.
  - interval: 1m
    input_series:
      - series: 'nv_gpu_memory_used_bytes{namespace="ns",pod="leaky-0",gpu_uuid="GPU-1"}'
        values: '64424509440+104857600x150'
      - series: 'nv_gpu_memory_total_bytes{namespace="ns",pod="leaky-0",gpu_uuid="GPU-1"}'
        values: '85899345920x150'
      - series: 'nv_gpu_memory_used_bytes{namespace="ns",pod="flat-0",gpu_uuid="GPU-2"}'
        values: '75161927680x150'
      - series: 'nv_gpu_memory_total_bytes{namespace="ns",pod="flat-0",gpu_uuid="GPU-2"}'
        values: '85899345920x150'
    alert_rule_test:
      - eval_time: 10m
        alertname: TritonGPUMemoryLeak
        exp_alerts: []
      - eval_time: 120m
        alertname: TritonGPUMemoryLeak
        exp_alerts:
          - exp_labels: {severity: warning, namespace: ns, pod: leaky-0, gpu_uuid: GPU-1}
"""


@pytest.mark.prometheus
def test_alerts_fire_on_the_conditions_they_describe(tmp_path: Path) -> None:
    """promtool's rule unit tests on the rendered rules: each alert fires on its symptom and
    stays quiet on a healthy neighbour. (Annotations are checked by `promtool check rules`
    above; they are left out here so the expectations name only the labels.)"""
    rules = _rule_groups()
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rules))
    tests = yaml.safe_load(PROMTOOL_TESTS)
    tests["rule_files"] = ["rules.yaml"]
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump(tests))
    result = subprocess.run(
        [_promtool(), "test", "rules", "tests.yaml"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# -- the image ----------------------------------------------------------------------------
def test_operator_image_is_slim_pinned_and_non_root() -> None:
    dockerfile = (ROOT / "operator" / "Dockerfile").read_text()
    # Debian's slim suite image, as `make image` builds on that suite (tests/test_image.py).
    (base,) = re.findall(r"^ARG DEBIAN_IMAGE=(\S+)$", dockerfile, re.MULTILINE)
    assert re.fullmatch(r"debian:\w+-slim(@sha256:[0-9a-f]{64})?", base), base
    assert re.findall(r"^FROM (\S+)", dockerfile, re.MULTILINE) == [
        "${DEBIAN_IMAGE}",
        "${DEBIAN_IMAGE}",
    ]
    (user,) = re.findall(r"^USER (\S+)$", dockerfile, re.MULTILINE)
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "a numeric non-root user, so runAsNonRoot can verify"
    values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    assert values["securityContext"]["runAsUser"] == int(uid)
    assert re.search(r'^ENTRYPOINT \["ccs-operator"\]$', dockerfile, re.MULTILINE)
    assert re.search(r'^CMD \["run"\]$', dockerfile, re.MULTILINE)
    # The wheel carries the templates and the CRD the operator reads at run time.
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]["ccs_operator"]
    assert {"templates/*.j2", "crds/*.yaml"} <= set(package_data)
    for path in ("pyproject.toml", "README.md", "crds/", "templates/", "operator/ccs_operator/"):
        assert f"COPY {path}" in dockerfile or f" {path}" in dockerfile, path
        assert f"!{path}" in (ROOT / "operator" / "Dockerfile.dockerignore").read_text()
