"""kopf on the real API server: a namespace created while kopf lists is served.

Defect (seen in the e2e suite): the session operator came up while a test created its
namespace; kopf listed the namespaces, then its watch listed again and dropped that
listing, so the namespace created between the two was never served and its service never
became Ready. The test makes the window certain: kopf's first listing of namespaces
returns, then the namespace is created, before the watch lists. A namespace created once
kopf is watching is the positive control (kopf's own path, always served).
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import kopf
import pytest
from kopf._cogs.clients import fetching
from kopf._core.reactor import observation
from kubernetes import client

from ccs_operator.controllers.kopfnamespaces import see_namespaces_in_every_listing
from e2e.fixtures import Cluster

pytestmark = pytest.mark.cluster


def _create_namespace(cluster: Cluster, name: str) -> None:
    with cluster.api_client() as api_client:
        client.CoreV1Api(api_client).create_namespace(
            {"metadata": {"name": name, "labels": {"ccs-e2e": "test"}}}
        )


def _create_configmap(cluster: Cluster, namespace: str) -> None:
    deadline = time.monotonic() + 30
    with cluster.api_client() as api_client:
        core = client.CoreV1Api(api_client)
        while True:
            try:
                core.create_namespaced_config_map(namespace, {"metadata": {"name": "probe"}})
                return
            except client.ApiException as exc:  # the namespace's admission may lag
                if time.monotonic() > deadline:
                    raise
                if exc.status not in (403, 404):
                    raise
            time.sleep(0.2)


def _delete_namespace(cluster: Cluster, name: str) -> None:
    with cluster.api_client() as api_client:
        try:
            client.CoreV1Api(api_client).delete_namespace(name)
        except client.ApiException as exc:
            if exc.status != 404:
                raise


def test_a_namespace_created_between_kopfs_two_listings_is_served(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    prefix = f"race-{uuid.uuid4().hex[:6]}"
    racing, late = f"{prefix}-between", f"{prefix}-late"
    monkeypatch.setenv("KUBECONFIG", str(cluster.kubeconfig))
    # Restore kopf's own processor after the test; install the operator's as it does.
    monkeypatch.setattr(
        observation,
        "process_discovered_namespace_event",
        observation.process_discovered_namespace_event,
    )
    see_namespaces_in_every_listing()

    listed_once = threading.Event()
    kopf_fetch = fetching.fetch_objs

    async def fetch_objs(*, resource: Any, **kwargs: Any) -> AsyncIterator[Any]:
        async for chunk in kopf_fetch(resource=resource, **kwargs):
            yield chunk
        if resource.plural == "namespaces" and not listed_once.is_set():
            # kopf's first listing is done and its watch has not listed yet.
            listed_once.set()
            await asyncio.to_thread(_create_namespace, cluster, racing)

    monkeypatch.setattr(fetching, "fetch_objs", fetch_objs)

    registry = kopf.OperatorRegistry()
    seen: set[str] = set()

    @kopf.on.login(registry=registry)
    def _login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        return kopf.login_with_kubeconfig(**kwargs)

    @kopf.on.event("configmaps", registry=registry)
    async def _configmap(body: kopf.Body, **_: Any) -> None:
        seen.add(str(body.metadata.namespace))

    stop = threading.Event()
    failure: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(
                kopf.operator(
                    registry=registry,
                    namespaces=[f"{prefix}-*"],
                    standalone=True,
                    stop_flag=stop,
                )
            )
        except BaseException as exc:  # reported by the test below
            failure.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        assert listed_once.wait(60), "kopf never listed the namespaces"
        _create_configmap(cluster, racing)
        _create_namespace(cluster, late)  # positive control: created while kopf watches
        _create_configmap(cluster, late)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not {racing, late} <= seen and not failure:
            time.sleep(0.2)
        assert not failure, failure
        assert late in seen, f"the control failed: kopf served {sorted(seen)}"
        assert racing in seen, f"{racing} (created between kopf's listings) was never served"
    finally:
        stop.set()
        thread.join(30)
        for name in (racing, late):
            _delete_namespace(cluster, name)
