"""pytest fixtures: a session-wide cluster and a fresh namespace per test.

Registered from the root conftest (`pytest_plugins = ["e2e.fixtures"]`). The cluster comes
from the provider named by $CCS_E2E_PROVIDER (default: local). A cluster this session
started is stopped at its end unless CCS_E2E_KEEP=1; one it found running is left alone.

The local provider's suite runs its own cluster (`paths.test_state_dir()`, unless
$CCS_E2E_STATE_DIR names one), started from empty state, never the one `make demo` left up
for the user to explore: that one's services, pods and serving settings would otherwise
come back with it and take the Tritons this machine holds. A demo cluster still running
is stopped first (its state is kept) so that the suite has the machine's cores.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from e2e import crds
from e2e.demo import shutdown
from e2e.localcluster import LocalCluster, Options
from e2e.paths import test_state_dir, user_state_dir
from e2e.providers import LocalProvider, Provider, get_provider

os.environ.setdefault("CCS_E2E_STATE_DIR", str(test_state_dir()))


@dataclass
class Cluster:
    """What a test gets: the kubeconfig, kubectl, API clients, and fault injection."""

    provider: Provider

    @property
    def kubeconfig(self) -> Path:
        return self.provider.kubeconfig

    def kubectl(
        self, *args: str, check: bool = True, input: str | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        return self.provider.kubectl(*args, check=check, input=input, timeout=timeout)

    def api_client(self) -> client.ApiClient:
        return self.provider.api_client()

    @property
    def local(self) -> LocalCluster | None:
        """The local control plane, for tests that restart its parts; None for others."""
        return self.provider.cluster if isinstance(self.provider, LocalProvider) else None

    @property
    def bin_dir(self) -> Path | None:
        return self.local.bin_path() if self.local else None

    def _require_local(self) -> LocalCluster:
        if self.local is None:
            pytest.skip(f"needs the local provider, not {self.provider.name!r}")
        return self.local

    def restart_apiserver(self) -> None:
        self._require_local().restart_component("kube-apiserver")

    def restart_etcd(self) -> None:
        self._require_local().restart_component("etcd")

    def install_servicemonitor_crd(self) -> None:
        with self.api_client() as api_client:
            crds.install(api_client, crds.SERVICEMONITOR)

    def uninstall_servicemonitor_crd(self) -> None:
        with self.api_client() as api_client:
            crds.uninstall(api_client, crds.SERVICEMONITOR)


def release_stuck_test_namespaces(cluster: Cluster) -> None:
    """Let test namespaces left Terminating by an earlier run go away.

    A run that was killed, or one of an older operator that put kopf finalizers on its
    services, can leave services whose finalizer no operator will ever remove; their
    namespaces then stay Terminating and the namespace controller retries them forever.
    """
    namespaces = cluster.kubectl(
        "get",
        "namespaces",
        "-l",
        "ccs-e2e=test",
        "-o",
        'jsonpath={range .items[?(@.status.phase=="Terminating")]}{.metadata.name} {end}',
    ).stdout.split()
    for namespace in namespaces:
        names = cluster.kubectl(
            "get", "claudecodeservices", "-n", namespace, "-o", "name", check=False
        ).stdout.split()
        for name in names:
            cluster.kubectl(
                "patch",
                name,
                "-n",
                namespace,
                "--type=merge",
                "-p",
                '{"metadata":{"finalizers":null}}',
                check=False,
            )


@pytest.fixture(scope="session")
def cluster(pytestconfig: pytest.Config) -> Iterator[Cluster]:
    provider = get_provider()
    found_running = provider.is_up()
    if isinstance(provider, LocalProvider):
        _stop_the_users_cluster(provider.cluster, pytestconfig)
        provider.cluster.up(fresh=not found_running)
    else:
        provider.up()
    if found_running:
        release_stuck_test_namespaces(Cluster(provider))
    try:
        yield Cluster(provider)
    finally:
        if not found_running and os.environ.get("CCS_E2E_KEEP") != "1":
            provider.down()


def _stop_the_users_cluster(mine: LocalCluster, config: pytest.Config) -> None:
    users = LocalCluster(state_dir=user_state_dir(), options=Options())
    if users.state_dir == mine.state_dir or not (users.state_dir / "run").is_dir():
        return
    if shutdown(users):
        # Said past pytest's capture: the user's cluster went away, whatever the tests do.
        capture = config.pluginmanager.getplugin("capturemanager")
        with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
            print(
                f"\n[e2e] stopped the cluster in {users.state_dir} (make demo / python -m e2e "
                "up) so that the tests have this machine; its state is kept and `make demo` "
                "starts it again",
                file=sys.stderr,
                flush=True,
            )


def _wait_default_service_account(core: client.CoreV1Api, namespace: str, timeout: float) -> None:
    """Pods are refused until the controller-manager has made the namespace's `default` SA."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            core.read_namespaced_service_account("default", namespace)
            return
        except ApiException as exc:
            if exc.status != 404 or time.monotonic() > deadline:
                raise
        time.sleep(0.2)


@pytest.fixture
def namespace(cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    # Namespace names are DNS labels: short, lowercase, unique per test run.
    stem = request.node.name.lower().replace("_", "-")
    stem = "".join(ch for ch in stem if ch.isalnum() or ch == "-")[:40].strip("-")
    name = f"{stem}-{uuid.uuid4().hex[:6]}"
    with cluster.api_client() as api_client:
        core = client.CoreV1Api(api_client)
        core.create_namespace({"metadata": {"name": name, "labels": {"ccs-e2e": "test"}}})
        _wait_default_service_account(core, name, timeout=60)
        try:
            yield name
        finally:
            try:
                core.delete_namespace(name)
            except ApiException as exc:
                if exc.status != 404:
                    raise


@pytest.fixture
def served_cluster(cluster: Cluster) -> LocalCluster:
    """The local cluster with pods answered by real Tritons (e2e.podserving); fails where
    there is none (another provider, or not root), unless CCS_ALLOW_SERVING_SKIP=1."""
    found = cluster.local
    if found is None or not found.serving_enabled():
        if os.environ.get("CCS_ALLOW_SERVING_SKIP") == "1":
            pytest.skip("real serving needs the local provider as root (ip netns)")
        pytest.fail(
            "real serving needs the local cluster provider, run as root (it creates a network "
            "namespace); set CCS_ALLOW_SERVING_SKIP=1 to skip knowingly"
        )
    return found
