"""The README's first command, run as a test: `python -m e2e demo` shows the floor working.

Its live table must show a numeric QUEUE-P99 (Triton's queue wait, read through the
ServiceMonitor the operator rendered) and the floor above the sample's minimum at some point,
and the demo must end with `kubectl get ccs`.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from e2e import podserving
from e2e.demo import DEMO_NAMESPACE, DemoOperator, stop_adapter
from e2e.fixtures import Cluster
from e2e.monitoring import MonitoringStack
from e2e.paths import REPO_ROOT

pytestmark = [pytest.mark.cluster, pytest.mark.triton, pytest.mark.prometheus]

ROW = re.compile(r"^\s*(\d+)s\s+\S+\s+\S+\s+(\d+)\s+(\d+)\s+([\d.]+)ms\s+\w+")


def test_the_demo_shows_the_floor_rising_under_load_and_ends_with_kubectl_get_ccs(
    cluster: Cluster,
) -> None:
    if cluster.local is None or not cluster.local.serving_enabled():
        pytest.fail("the demo needs the local cluster provider, run as root")
    local = cluster.local
    env = {**os.environ, "CCS_E2E_STATE_DIR": str(local.state_dir)}
    before = podserving.Settings.read(local.state_dir / podserving.SETTINGS_FILE)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "e2e", "demo"],
            capture_output=True,
            text=True,
            timeout=900,
            cwd=REPO_ROOT,
            env=env,
            check=False,
        )
    finally:
        # The rest of the suite shares this cluster: no demo pods, operator or settings left.
        cluster.kubectl("delete", "ccs", "--all", "-n", DEMO_NAMESPACE, "--wait=true", check=False)
        DemoOperator(local).stop()
        # Its prometheus-adapter too: later tests see external metrics served only by their own.
        stop_adapter(local, MonitoringStack(local))
        podserving.write_settings(local.state_dir, before.max_tritons, before.env)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [m for m in (ROW.match(line) for line in done.stdout.splitlines()) if m]
    assert rows, done.stdout
    floors = [int(m.group(3)) for m in rows]
    queue = [float(m.group(4)) for m in rows]
    assert max(floors) > 2, done.stdout  # the sample's replicas.min is 2
    assert any(q > 0 for q in queue), done.stdout
    assert "$ kubectl -n ccs-demo get ccs" in done.stdout
    assert "LOCAL ONLY:" in done.stderr
    # The HPA reads its requests-per-second metric (prometheus-adapter), not <unknown>.
    hpa = [line for line in done.stdout.splitlines() if "horizontalpodautoscaler" in line]
    assert hpa, done.stdout
    assert "<unknown>" not in hpa[0], hpa[0]
