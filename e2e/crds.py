"""prometheus-operator's CRDs, exactly as that project publishes them.

The files come from the prometheus-operator Go module (example/prometheus-operator-crd/) at
the version e2e/toolchain/promoperator/go.mod pins, the one the harness builds the operator
from, fetched through the Go module proxy into the module cache. Tests install and remove
the ServiceMonitor CRD at run time, because the operator must work with and without it.
"""

from __future__ import annotations

import time
from typing import Any

import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from e2e.toolchain import prometheus_operator_source

SERVICEMONITOR = "monitoring.coreos.com_servicemonitors.yaml"
PROMETHEUSRULE = "monitoring.coreos.com_prometheusrules.yaml"


def published_crd(filename: str) -> dict[str, Any]:
    path = prometheus_operator_source() / "example" / "prometheus-operator-crd" / filename
    return yaml.safe_load(path.read_text())


def _established(api: client.ApiextensionsV1Api, name: str) -> bool:
    try:
        crd = api.read_custom_resource_definition(name)
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise
    conditions = (crd.status and crd.status.conditions) or []
    return any(c.type == "Established" and c.status == "True" for c in conditions)


def install(
    api_client: client.ApiClient, filename: str = SERVICEMONITOR, timeout: float = 60
) -> str:
    """Create or replace the CRD and wait until it is served; returns its name."""
    api = client.ApiextensionsV1Api(api_client)
    body = published_crd(filename)
    name = body["metadata"]["name"]
    try:
        api.create_custom_resource_definition(body)
    except ApiException as exc:
        if exc.status != 409:
            raise
        current = api.read_custom_resource_definition(name)
        body["metadata"]["resourceVersion"] = current.metadata.resource_version
        api.replace_custom_resource_definition(name, body)
    deadline = time.monotonic() + timeout
    while not _established(api, name):
        if time.monotonic() > deadline:
            raise TimeoutError(f"CRD {name} not Established after {timeout:.0f}s")
        time.sleep(0.2)
    return name


def uninstall(
    api_client: client.ApiClient, filename: str = SERVICEMONITOR, timeout: float = 60
) -> None:
    """Delete the CRD (and so every object of its kind) and wait until it is gone."""
    api = client.ApiextensionsV1Api(api_client)
    name = published_crd(filename)["metadata"]["name"]
    try:
        api.delete_custom_resource_definition(name)
    except ApiException as exc:
        if exc.status != 404:
            raise
    deadline = time.monotonic() + timeout
    while True:
        try:
            api.read_custom_resource_definition(name)
        except ApiException as exc:
            if exc.status == 404:
                return
            raise
        if time.monotonic() > deadline:
            raise TimeoutError(f"CRD {name} still present {timeout:.0f}s after deletion")
        time.sleep(0.2)


def installed(api_client: client.ApiClient, filename: str = SERVICEMONITOR) -> bool:
    api = client.ApiextensionsV1Api(api_client)
    return _established(api, published_crd(filename)["metadata"]["name"])
