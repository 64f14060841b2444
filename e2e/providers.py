"""Cluster providers behind one interface, chosen by $CCS_E2E_PROVIDER.

- `local` (default): the real control plane built from source, run as processes (localcluster).
- `kind`: for machines with Docker; shells out to the `kind` CLI.
- `existing`: whatever $KUBECONFIG (or ~/.kube/config) points at; never started or stopped.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from abc import ABC, abstractmethod
from pathlib import Path

from kubernetes import client, config

from e2e import crds
from e2e.localcluster import LocalCluster, Options
from e2e.paths import cache_root

PROVIDER_ENV = "CCS_E2E_PROVIDER"


class Provider(ABC):
    name: str

    @abstractmethod
    def is_up(self) -> bool:
        """True when a cluster is already there (so whoever found it leaves it running)."""

    @abstractmethod
    def up(self) -> Path:
        """Make the cluster ready; returns its kubeconfig."""

    @abstractmethod
    def down(self) -> None: ...

    @property
    @abstractmethod
    def kubeconfig(self) -> Path: ...

    def kubectl_binary(self) -> str:
        found = shutil.which("kubectl")
        if not found:
            raise RuntimeError(f"provider {self.name!r} needs kubectl on PATH")
        return found

    def api_client(self) -> client.ApiClient:
        return config.new_client_from_config(config_file=str(self.kubeconfig))

    def kubectl(
        self, *args: str, check: bool = True, input: str | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        argv = [self.kubectl_binary(), f"--kubeconfig={self.kubeconfig}", *args]
        result = subprocess.run(argv, capture_output=True, text=True, input=input, timeout=timeout)
        if check and result.returncode != 0:
            raise RuntimeError(
                f"`{shlex.join(['kubectl', *args])}` exited {result.returncode}:\n"
                f"{result.stderr.strip()}"
            )
        return result


class LocalProvider(Provider):
    name = "local"

    def __init__(self, cluster: LocalCluster | None = None) -> None:
        self.cluster = cluster or LocalCluster(options=Options())

    def is_up(self) -> bool:
        return self.cluster.running()

    def up(self) -> Path:
        return self.cluster.up()

    def down(self) -> None:
        self.cluster.down()

    @property
    def kubeconfig(self) -> Path:
        return self.cluster.kubeconfig

    def kubectl_binary(self) -> str:
        return str(self.cluster.bin_path() / "kubectl")


class KindProvider(Provider):
    """Docker-backed kind cluster. Not exercised by CI, which has no container engine."""

    name = "kind"
    cluster_name = os.environ.get("CCS_E2E_KIND_CLUSTER", "ccs-e2e")

    @property
    def kubeconfig(self) -> Path:
        return cache_root() / "kind" / f"{self.cluster_name}.kubeconfig"

    def _kind(self, *args: str) -> subprocess.CompletedProcess[str]:
        kind = shutil.which("kind")
        if not kind:
            raise RuntimeError("CCS_E2E_PROVIDER=kind needs the `kind` CLI (and Docker)")
        return subprocess.run([kind, *args], check=True, capture_output=True, text=True)

    def is_up(self) -> bool:
        clusters = self._kind("get", "clusters").stdout.split()
        return self.cluster_name in clusters

    def up(self) -> Path:
        self.kubeconfig.parent.mkdir(parents=True, exist_ok=True)
        if not self.is_up():
            self._kind("create", "cluster", "--name", self.cluster_name, "--wait", "120s")
        self._kind(
            "export",
            "kubeconfig",
            "--name",
            self.cluster_name,
            "--kubeconfig",
            str(self.kubeconfig),
        )
        with self.api_client() as api_client:
            crds.install(api_client, crds.SERVICEMONITOR)
            crds.install(api_client, crds.PROMETHEUSRULE)
        return self.kubeconfig

    def down(self) -> None:
        self._kind("delete", "cluster", "--name", self.cluster_name)


class ExistingProvider(Provider):
    """A cluster someone else runs: used as it is, never started, changed or stopped."""

    name = "existing"

    @property
    def kubeconfig(self) -> Path:
        first = os.environ.get("KUBECONFIG", "").split(os.pathsep)[0]
        return Path(first).expanduser() if first else Path.home() / ".kube" / "config"

    def is_up(self) -> bool:
        return True

    def up(self) -> Path:
        if not self.kubeconfig.exists():
            raise RuntimeError(f"CCS_E2E_PROVIDER=existing: no kubeconfig at {self.kubeconfig}")
        return self.kubeconfig

    def down(self) -> None:
        pass


PROVIDERS: dict[str, type[Provider]] = {
    "local": LocalProvider,
    "kind": KindProvider,
    "existing": ExistingProvider,
}


def get_provider(name: str | None = None) -> Provider:
    chosen = name or os.environ.get(PROVIDER_ENV) or "local"
    if chosen not in PROVIDERS:
        raise ValueError(f"{PROVIDER_ENV}={chosen!r}: one of {', '.join(PROVIDERS)}")
    return PROVIDERS[chosen]()
