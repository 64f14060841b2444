"""`helm install` of chart/ccs-operator into the local cluster, then the operator running as
the chart's ServiceAccount: the RBAC is enough to reconcile a sample to Ready, and no more.

"The operator sees only what it manages", proven on the real API server:
- RBAC, asked by impersonating the ServiceAccount (`kubectl auth can-i --as`) and with its
  own token: no Secrets at all, no reads of single pods, no writes but the ones it makes.
  RBAC cannot restrict a list or watch by label selector (a grant of `list pods` is a grant
  of every pod), so the selector is proven where it is applied: the API server's audit log
  shows that every list and watch the operator sent of pods and of every child kind carried
  labelSelector=app.kubernetes.io/managed-by=ccs-operator.
- Owned objects only: RBAC grants by kind, so the chart's ValidatingAdmissionPolicy (CEL in
  the API server) refuses the ServiceAccount every create, change or delete of an object that
  is not a labelled child controlled by a ClaudeCodeService, and any change of its owner.

The chart's Deployment runs on a kwok node (its pod is admitted by the restricted Pod Security
level but runs no process); the operator itself runs here as a process, configured with the
Deployment's own environment and authenticated with a TokenRequest token of the chart's
ServiceAccount, so every API call it makes is authorised by the chart's roles alone.
"""

from __future__ import annotations

import contextlib
import json
import re
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from e2e import crds
from e2e.fixtures import Cluster
from e2e.helmchart import CHART_DIR, HelmError, helm, set_args
from e2e.operator_fixtures import (
    OperatorProcess,
    Services,
    _make_namespace,
    admins_network_policy,
    sample,
)

pytestmark = pytest.mark.cluster

CRD_NAME = "claudecodeservices.serving.claudecode.io"
CHART = str(CHART_DIR)


class Release:
    """One helm release of the chart in a test namespace, removed after the test."""

    def __init__(self, cluster: Cluster, namespace: str) -> None:
        self.cluster = cluster
        self.namespace = namespace
        # Cluster-scoped roles are named after the release: unique per test run.
        self.name = f"ccs-{uuid.uuid4().hex[:6]}"
        self.fullname = f"{self.name}-ccs-operator"

    def helm(self, *args: str, check: bool = True, timeout: float = 180) -> Any:
        return helm(
            *args,
            "--namespace",
            self.namespace,
            kubeconfig=self.cluster.kubeconfig,
            check=check,
            timeout=timeout,
        )

    def install(self, values: dict[str, Any]) -> str:
        result = self.helm(
            "install", self.name, CHART, "--wait", "--timeout", "120s", *set_args(values)
        )
        return str(result.stdout)

    def status(self) -> dict[str, Any]:
        return dict(json.loads(self.helm("status", self.name, "-o", "json").stdout))

    def uninstall(self) -> None:
        self.helm("uninstall", self.name, "--wait", "--timeout", "60s", check=False)


@pytest.fixture
def release(cluster: Cluster, namespace: str) -> Iterator[Release]:
    made = Release(cluster, namespace)
    yield made
    made.uninstall()


def _get(cluster: Cluster, *args: str) -> dict[str, Any] | None:
    result = cluster.kubectl("get", *args, "-o", "json", check=False)
    return json.loads(result.stdout) if result.returncode == 0 else None


def _crd_established(cluster: Cluster) -> bool:
    crd = _get(cluster, "crd", CRD_NAME)
    conditions = ((crd or {}).get("status") or {}).get("conditions") or ()
    return any(c["type"] == "Established" and c["status"] == "True" for c in conditions)


def _deployment_env(cluster: Cluster, namespace: str, name: str) -> dict[str, str]:
    """The operator container's environment as the pod sees it (downward API resolved)."""
    deployment = _get(cluster, "deployment", name, "-n", namespace)
    assert deployment is not None
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = {}
    for item in container["env"]:
        if "value" in item:
            env[item["name"]] = item["value"]
        elif item["valueFrom"].get("fieldRef", {}).get("fieldPath") == "metadata.namespace":
            env[item["name"]] = namespace
    return env


def _service_account_kubeconfig(
    cluster: Cluster, namespace: str, service_account: str, path: Path
) -> Path:
    """A kubeconfig that authenticates as the ServiceAccount (a TokenRequest token)."""
    with cluster.api_client() as api_client:
        token = client.CoreV1Api(api_client).create_namespaced_service_account_token(
            service_account, namespace, {"spec": {"expirationSeconds": 3600}}
        )
    admin = yaml.safe_load(cluster.kubeconfig.read_text())
    context = next(c for c in admin["contexts"] if c["name"] == admin["current-context"])
    cluster_entry = next(c for c in admin["clusters"] if c["name"] == context["context"]["cluster"])
    user = f"system:serviceaccount:{namespace}:{service_account}"
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [cluster_entry],
        "users": [{"name": user, "user": {"token": token.status.token}}],
        "contexts": [{"name": "sa", "context": {"cluster": cluster_entry["name"], "user": user}}],
        "current-context": "sa",
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


def _allowed(
    api_client: client.ApiClient,
    verb: str,
    resource: str,
    namespace: str,
    group: str = "",
    name: str = "",
) -> bool:
    review = client.AuthorizationV1Api(api_client).create_self_subject_access_review(
        {
            "spec": {
                "resourceAttributes": {
                    "verb": verb,
                    "group": group,
                    "resource": resource,
                    "namespace": namespace,
                    "name": name,
                }
            }
        }
    )
    return bool(review.status.allowed)


def _operator_as_service_account(
    cluster: Cluster,
    release: Release,
    kubeconfig: Path,
    log_dir: Path,
) -> OperatorProcess:
    """`ccs-operator run` with the chart Deployment's environment, as its ServiceAccount."""
    env = _deployment_env(cluster, release.namespace, release.fullname)
    # Ports are the process's own (free ones), so tests may run side by side.
    env = {k: v for k, v in env.items() if k not in ("CCS_METRICS_PORT", "CCS_HEALTH_PORT")}
    return OperatorProcess(
        cluster,
        log_dir,
        namespaces=env.pop("CCS_NAMESPACES"),
        lease=env.pop("CCS_LEASE_NAME"),
        **{**env, "KUBECONFIG": str(kubeconfig), "CCS_LOG_FORMAT": "text"},
    )


def _delete_services(cluster: Cluster, namespace: str) -> None:
    """Delete the test's services with no operator left (they carry no finalizer)."""
    found = _get(cluster, "ccs", "-n", namespace) or {}
    for item in found.get("items", ()):
        name = item["metadata"]["name"]
        assert not item["metadata"].get("finalizers"), item["metadata"]
        cluster.kubectl("delete", "ccs", name, "-n", namespace, "--wait=false", check=False)


MANAGED_SELECTOR = "app.kubernetes.io/managed-by=ccs-operator"
# What the operator lists and watches: the serving pods and every child kind.
WATCHED_RESOURCES = frozenset(
    {
        "pods",
        "configmaps",
        "services",
        "deployments",
        "horizontalpodautoscalers",
        "networkpolicies",
    }
)


def _audit(cluster: Cluster, user: str) -> list[dict[str, Any]]:
    """The API server's audit events of one user (e2e.localcluster.AUDIT_POLICY)."""
    assert cluster.local is not None
    path = cluster.local.audit_log
    assert path.exists(), (
        f"{path} is missing: the API server runs without the audit log (started by an older "
        "harness); restart the test cluster (python -m e2e down, with CCS_E2E_STATE_DIR)"
    )
    events = []
    for line in path.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            event = json.loads(line)
            if event.get("user", {}).get("username") == user:
                events.append(event)
    return events


def _assert_reads_only_through_the_selector(cluster: Cluster, user: str, monitoring: bool) -> None:
    """Every list and watch the operator sent of pods and children carried its selector; it
    never asked for a Secret, nor for a single pod."""
    events = _audit(cluster, user)
    seen: set[str] = set()
    for event in events:
        resource = (event.get("objectRef") or {}).get("resource")
        verb, uri = event.get("verb"), event.get("requestURI", "")
        assert resource != "secrets", f"the operator asked for a Secret: {verb} {uri}"
        assert not (resource == "pods" and verb == "get"), f"read a pod: {uri}"
        if verb in ("list", "watch"):
            selector = urllib.parse.parse_qs(urllib.parse.urlsplit(uri).query).get("labelSelector")
            assert selector == [MANAGED_SELECTOR], f"{verb} without the operator's selector: {uri}"
            seen.add(resource)
    # Positive control: the audit log sees the operator's lists and watches of each kind.
    expected = WATCHED_RESOURCES | ({"servicemonitors"} if monitoring else set())
    assert expected <= seen, f"no list or watch of {sorted(expected - seen)} in the audit log"


def _can_i(cluster: Cluster, user: str, *args: str) -> bool:
    """`kubectl auth can-i --as=<user> ...` (the admin impersonating the ServiceAccount)."""
    result = cluster.kubectl("auth", "can-i", f"--as={user}", *args, check=False)
    assert result.stdout.strip() in ("yes", "no"), result.stdout + result.stderr
    return result.stdout.strip() == "yes"


def _refused(call: Any, *args: Any, **kwargs: Any) -> str:
    """Call the API and return the refusal's message; fails if the call went through."""
    with pytest.raises(ApiException) as refused:
        call(*args, **kwargs)
    assert refused.value.status == 403, (refused.value.status, refused.value.body)
    return str(json.loads(refused.value.body or "{}").get("message", refused.value.body))


def _assert_owned_objects_only(
    cluster: Cluster, sa_client: client.ApiClient, namespace: str, child: str, monitoring: bool
) -> None:
    """The admission policy on the real API server: RBAC lets the ServiceAccount patch any
    ConfigMap here, the policy lets it change only children of a ClaudeCodeService."""
    core = client.CoreV1Api(sa_client)
    cluster.kubectl("create", "configmap", "not-ours", "-n", namespace, "--from-literal=a=b")
    assert _allowed(sa_client, "patch", "configmaps", namespace, name="not-ours")  # RBAC: yes
    message = _refused(
        core.patch_namespaced_config_map, "not-ours", namespace, {"data": {"a": "taken"}}
    )
    assert "changes only objects a ClaudeCodeService controls" in message, message
    message = _refused(
        core.create_namespaced_config_map,
        namespace,
        {"metadata": {"name": "made-up"}, "data": {"a": "b"}},
    )
    assert "must carry app.kubernetes.io/managed-by=ccs-operator" in message, message
    # Its own child: a change is admitted ...
    core.patch_namespaced_config_map(
        child, namespace, {"metadata": {"annotations": {"e2e.ccs-operator.io/touched": "1"}}}
    )
    # ... but not one that drops its label or moves it to another owner.
    message = _refused(
        core.patch_namespaced_config_map,
        child,
        namespace,
        {"metadata": {"labels": {"app.kubernetes.io/managed-by": None}}},
    )
    assert "must carry" in message, message
    # (A JSON patch: a merge would add a second controller, which validation refuses first.)
    message = _refused(
        core.patch_namespaced_config_map,
        child,
        namespace,
        [
            {
                "op": "replace",
                "path": "/metadata/ownerReferences/0/uid",
                "value": "00000000-0000-0000-0000-000000000000",
            }
        ],
    )
    assert "never moves a child to another owner" in message, message
    if monitoring:
        foreign = {
            "apiVersion": "monitoring.coreos.com/v1",
            "kind": "ServiceMonitor",
            "metadata": {"name": "not-ours", "namespace": namespace},
            "spec": {"selector": {}, "endpoints": [{"port": "metrics"}]},
        }
        cluster.kubectl("apply", "-f", "-", input=json.dumps(foreign))
        assert _allowed(sa_client, "delete", "servicemonitors", namespace, "monitoring.coreos.com")
        message = _refused(
            client.CustomObjectsApi(sa_client).delete_namespaced_custom_object,
            "monitoring.coreos.com",
            "v1",
            namespace,
            "servicemonitors",
            "not-ours",
        )
        assert "changes only objects a ClaudeCodeService controls" in message, message
    # A NetworkPolicy the operator does not own: RBAC lets it delete one, the policy does not.
    foreign_policy = admins_network_policy("not-ours", namespace)
    cluster.kubectl("apply", "-f", "-", input=json.dumps(foreign_policy))
    assert _allowed(sa_client, "delete", "networkpolicies", namespace, "networking.k8s.io")
    message = _refused(
        client.NetworkingV1Api(sa_client).delete_namespaced_network_policy, "not-ours", namespace
    )
    assert "changes only objects a ClaudeCodeService controls" in message, message
    # The admin (and the garbage collector) are not the operator: the policy leaves them be.
    cluster.kubectl("delete", "configmap", "not-ours", "-n", namespace)
    cluster.kubectl("delete", "networkpolicy", "not-ours", "-n", namespace)


def _assert_no_permission_errors(process: OperatorProcess) -> None:
    log = process.log_path.read_text(errors="replace")
    denied = [
        line
        for line in log.splitlines()
        if re.search(r"forbidden|not enough permissions", line, re.IGNORECASE)
    ]
    assert denied == [], "the operator was refused calls it needs:\n" + "\n".join(denied[:20])


def test_helm_install_then_operator_as_its_service_account_reconciles_a_sample(
    cluster: Cluster,
    namespace: str,
    release: Release,
    services: Services,
    operator_logs: Path,
    tmp_path: Path,
) -> None:
    # The restricted Pod Security level is enforced: the operator's pod must still be admitted.
    cluster.kubectl(
        "label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted"
    )
    crd_was_there = _get(cluster, "crd", CRD_NAME) is not None
    notes = release.install({"watchNamespaces": [namespace]})
    # The serving pods are another matter (GPU images); admit them as usual from here on.
    cluster.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce-")

    # CRD, RBAC and Deployment; --wait returned, so the Deployment is available.
    assert _crd_established(cluster)
    if not crd_was_there:
        crd = _get(cluster, "crd", CRD_NAME)
        assert crd is not None
        assert crd["spec"]["names"]["shortNames"] == ["ccs"]
    for kind, name in [
        ("clusterrole", release.fullname),
        ("clusterrolebinding", release.fullname),
        ("clusterrole", f"{release.fullname}-discovery"),
        ("role", f"{release.fullname}-leader-election"),
        ("serviceaccount", release.fullname),
        ("service", f"{release.fullname}-metrics"),
        ("configmap", f"{release.fullname}-dashboard"),
    ]:
        assert _get(cluster, kind, name, "-n", namespace) is not None, (kind, name)
    deployment = _get(cluster, "deployment", release.fullname, "-n", namespace)
    assert deployment is not None
    assert deployment["status"].get("availableReplicas") == 1
    assert release.status()["info"]["status"] == "deployed"
    # NOTES.txt tells the next commands.
    assert f"kubectl apply -n {namespace} -f samples/claude-code.yaml" in notes
    assert f"kubectl get ccs -n {namespace} -o wide" in notes

    kubeconfig = _service_account_kubeconfig(
        cluster, namespace, release.fullname, tmp_path / "sa.kubeconfig"
    )
    operator = _operator_as_service_account(cluster, release, kubeconfig, operator_logs)
    try:
        operator.start()
        services.apply(namespace, sample("claude-code", networkPolicy={"enabled": True}))
        body = services.wait_ready(namespace, "claude-code", timeout=90)
        assert body["status"]["endpoint"]["http"].startswith("http://claude-code.")
        for kind in ("deployment", "service", "horizontalpodautoscaler", "networkpolicy"):
            child = _get(cluster, kind, "claude-code", "-n", namespace)
            assert child is not None, kind
            assert child["metadata"]["ownerReferences"][0]["uid"] == body["metadata"]["uid"]
        # The chart's networkPolicy.metricsFrom reached the serving pods' policy (Prometheus
        # to Triton's metrics port).
        policy = _get(cluster, "networkpolicy", "claude-code", "-n", namespace)
        assert policy is not None
        assert {
            "from": [
                {
                    "namespaceSelector": {
                        "matchLabels": {"kubernetes.io/metadata.name": "monitoring"}
                    }
                }
            ],
            "ports": [{"port": 8002, "protocol": "TCP"}],
        } in policy["spec"]["ingress"], policy["spec"]
        # The Lease the chart's Role names is the one the operator holds.
        lease = _get(cluster, "lease", "ccs-operator-leader", "-n", namespace)
        assert lease is not None and lease["spec"]["holderIdentity"]
        # `kubectl get ccs -o wide` shows the endpoint.
        wide = cluster.kubectl("get", "ccs", "claude-code", "-n", namespace, "-o", "wide").stdout
        assert "ENDPOINT" in wide and body["status"]["endpoint"]["http"] in wide
        # It listed and watched only through its selector, as the API server recorded.
        user = f"system:serviceaccount:{namespace}:{release.fullname}"
        with cluster.api_client() as api_client:
            monitoring = crds.installed(api_client, crds.SERVICEMONITOR)
        if cluster.local is not None:  # the audit log is the local provider's
            _assert_reads_only_through_the_selector(cluster, user, monitoring)
        # It may write only children of a ClaudeCodeService (the admission policy).
        with client.ApiClient(_client_configuration(kubeconfig)) as sa_client:
            _assert_owned_objects_only(
                cluster, sa_client, namespace, "claude-code-model-config", monitoring
            )
        # Deleting the service: the garbage collector removes the children.
        cluster.kubectl("delete", "ccs", "claude-code", "-n", namespace, "--timeout=60s")
        _assert_no_permission_errors(operator)
    finally:
        operator.stop()
        _delete_services(cluster, namespace)

    # Impersonating the ServiceAccount: RBAC grants lists and watches of pods and children
    # (RBAC has no say over label selectors: the audit log above proves the selector), and
    # refuses Secrets, single pods and anything the operator does not do.
    for args in [
        ("list", "pods", "-n", namespace),
        ("watch", "pods", "-n", namespace),
        ("list", "configmaps", "-n", namespace),
        ("patch", "deployments.apps", "-n", namespace),
        (
            "patch",
            "claudecodeservices.serving.claudecode.io",
            "--subresource=status",
            "-n",
            namespace,
        ),
    ]:
        assert _can_i(cluster, user, *args), args
    for args in [
        ("get", "secrets", "-n", namespace),
        ("list", "secrets", "-n", namespace),
        ("watch", "secrets", "-n", namespace),
        ("list", "secrets", "--all-namespaces"),
        ("get", "pods", "-n", namespace),
        ("create", "pods", "-n", namespace),
        ("patch", "pods", "-n", namespace),
        ("create", "pods/exec", "-n", namespace),
        ("get", "pods/log", "-n", namespace),
        ("delete", "configmaps", "-n", namespace),
        ("update", "deployments.apps", "-n", namespace),
        ("patch", "deployments.apps", "--subresource=scale", "-n", namespace),
        ("patch", "claudecodeservices.serving.claudecode.io", "-n", namespace),
        ("create", "claudecodeservices.serving.claudecode.io", "-n", namespace),
        ("get", "events", "-n", namespace),
        ("create", "serviceaccounts/token", "-n", namespace),
        ("list", "nodes"),
        ("create", "clusterrolebindings.rbac.authorization.k8s.io"),
        ("impersonate", "users"),
    ]:
        assert not _can_i(cluster, user, *args), args

    # What the ServiceAccount must not do.
    with client.ApiClient(_client_configuration(kubeconfig)) as sa_client:
        core = client.CoreV1Api(sa_client)
        with pytest.raises(ApiException) as refused:
            core.list_namespaced_secret(namespace)
        assert refused.value.status == 403
        for verb, resource, group in [
            ("get", "secrets", ""),
            ("list", "secrets", ""),
            ("watch", "secrets", ""),
            ("create", "pods", ""),
            ("delete", "deployments", "apps"),
            ("delete", "claudecodeservices", "serving.claudecode.io"),
            ("update", "configmaps", ""),
            ("create", "rolebindings", "rbac.authorization.k8s.io"),
            ("update", "leases", "coordination.k8s.io"),  # other Leases than its own
            ("get", "pods", ""),
        ]:
            assert not _allowed(sa_client, verb, resource, namespace, group), (verb, resource)
        # ... and a sample of what it must do, asked the same way.
        for verb, resource, group, name in [
            ("update", "leases", "coordination.k8s.io", "ccs-operator-leader"),
            ("patch", "claudecodeservices/status", "serving.claudecode.io", ""),
            ("list", "requests_per_second", "external.metrics.k8s.io", ""),
        ]:
            resource, _, sub = resource.partition("/")
            review = client.AuthorizationV1Api(sa_client).create_self_subject_access_review(
                {
                    "spec": {
                        "resourceAttributes": {
                            "verb": verb,
                            "group": group,
                            "resource": resource,
                            "subresource": sub,
                            "namespace": namespace,
                            "name": name,
                        }
                    }
                }
            )
            assert review.status.allowed, (verb, resource, sub)


def _client_configuration(kubeconfig: Path) -> client.Configuration:
    from kubernetes import config

    configuration = client.Configuration()
    config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
    return configuration


def test_helm_namespaced_install_upgrade_and_uninstall(
    cluster: Cluster,
    namespace: str,
    release: Release,
    services: Services,
    operator_logs: Path,
    tmp_path: Path,
) -> None:
    """Namespace-scoped RBAC (a Role in the watched namespace only) is enough for the
    operator; upgrade changes the Deployment and a bad value is refused; uninstall removes the
    release but keeps the CRD and the services, as helm does."""
    watched_iter = _make_namespace(cluster, "helm-watched")
    watched = next(watched_iter)
    try:
        # The prometheus-operator CRDs are there unless a test took them away: then the
        # ServiceMonitor and PrometheusRule are checked against their real schemas too.
        with cluster.api_client() as api_client:
            monitoring = crds.installed(api_client, crds.SERVICEMONITOR) and crds.installed(
                api_client, crds.PROMETHEUSRULE
            )
        release.install(
            {
                "rbac": {"scope": "Namespaced"},
                "watchNamespaces": [watched],
                "serviceMonitor": {"enabled": monitoring},
                "prometheusRule": {"enabled": monitoring},
            }
        )
        if monitoring:
            assert _get(cluster, "servicemonitor", release.fullname, "-n", namespace)
            assert _get(cluster, "prometheusrule", release.fullname, "-n", namespace)
        assert _get(cluster, "role", release.fullname, "-n", watched) is not None
        assert _get(cluster, "clusterrole", release.fullname) is None
        assert _deployment_env(cluster, namespace, release.fullname)["CCS_NAMESPACES"] == watched

        kubeconfig = _service_account_kubeconfig(
            cluster, namespace, release.fullname, tmp_path / "sa.kubeconfig"
        )
        operator = _operator_as_service_account(cluster, release, kubeconfig, operator_logs)
        try:
            operator.start()
            services.apply(watched, sample("scoped", replicas={"min": 1, "max": 2}))
            services.wait_ready(watched, "scoped", timeout=90)
            _assert_no_permission_errors(operator)
        finally:
            operator.stop()
        with client.ApiClient(_client_configuration(kubeconfig)) as sa_client:
            # Outside the watched namespace it may not even read the services.
            assert _allowed(sa_client, "list", "deployments", watched, "apps")
            assert not _allowed(sa_client, "list", "deployments", "default", "apps")
            assert not _allowed(
                sa_client, "list", "claudecodeservices", "default", "serving.claudecode.io"
            )

        # Upgrade: a changed value rolls into the Deployment as a new revision.
        release.helm(
            "upgrade",
            release.name,
            CHART,
            "--reuse-values",
            "--wait",
            "--timeout",
            "120s",
            *set_args({"operator": {"logLevel": "DEBUG"}}),
        )
        assert release.status()["version"] == 2
        env = _deployment_env(cluster, namespace, release.fullname)
        assert env["CCS_LOG_LEVEL"] == "DEBUG"
        # A bad value is refused by the schema before anything changes.
        with pytest.raises(HelmError) as refused:
            release.helm(
                "upgrade",
                release.name,
                CHART,
                "--reuse-values",
                *set_args({"operator": {"logLevel": "LOUD"}}),
            )
        assert "logLevel" in refused.value.stderr
        assert release.status()["version"] == 2

        # Uninstall: the release's objects go, the CRD and the user's services stay.
        release.helm("uninstall", release.name, "--wait", "--timeout", "60s")
        for kind, name, ns in [
            ("deployment", release.fullname, namespace),
            ("serviceaccount", release.fullname, namespace),
            ("role", release.fullname, watched),
            ("rolebinding", release.fullname, watched),
            ("clusterrole", f"{release.fullname}-discovery", ""),
            ("configmap", f"{release.fullname}-dashboard", namespace),
            ("prometheusrule", release.fullname, namespace),
        ]:
            args = (kind, name, "-n", ns) if ns else (kind, name)
            assert _get(cluster, *args) is None, (kind, name)
        assert _crd_established(cluster)
        assert services.get(watched, "scoped")["metadata"]["name"] == "scoped"
    finally:
        _delete_services(cluster, watched)
        with contextlib.suppress(StopIteration):
            next(watched_iter)
