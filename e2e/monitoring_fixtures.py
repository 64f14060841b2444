"""The session's monitoring stack (e2e.monitoring): one prometheus-operator and Prometheus
for the whole test run, like the cluster itself.

A stack this session started is stopped at its end unless CCS_E2E_KEEP=1; one it found
running (a `python -m e2e.monitoring up` or a demo) is left alone.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from e2e.fixtures import Cluster
from e2e.monitoring import MonitoringStack
from e2e.netns import PodNetwork


@pytest.fixture(scope="session")
def monitoring(cluster: Cluster) -> Iterator[MonitoringStack]:
    """prometheus-operator turning the cluster's ServiceMonitors into the scrape
    configuration of a real Prometheus; `.url` is its API on the root 127.0.0.1."""
    if cluster.local is None:
        pytest.skip(f"the monitoring stack needs the local provider, not {cluster.provider.name!r}")
    why = PodNetwork.supported()
    if why is not None:
        pytest.skip(f"Prometheus may scrape pods only from inside the pod network: {why}")
    stack = MonitoringStack(cluster.local)
    found_running = stack.running()
    stack.up()
    try:
        yield stack
    finally:
        if not found_running and os.environ.get("CCS_E2E_KEEP") != "1":
            stack.down()
