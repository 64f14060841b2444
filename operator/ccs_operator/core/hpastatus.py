"""Pure: what the HPA alone would run, read from its status (the floor's accountability).

The HPA's own recommendation is not in its status (only the result after minReplicas, which
is the floor), but its current metric values are. For each metric it scales on, the
recommendation is ceil(currentReplicas * current / target) (autoscaling/v2's algorithm,
without its tolerance and rate limits); the HPA takes the largest. Clamped to the spec's
bounds, that is what the service would run without the floor.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from kubernetes.utils import parse_quantity


def _current(metric: Mapping[str, Any]) -> tuple[str, float] | None:
    """(what it measures, current per-pod value) of one status.currentMetrics entry."""
    kind = metric.get("type")
    if kind == "Resource":
        resource = metric.get("resource") or {}
        value = (resource.get("current") or {}).get("averageUtilization")
        if resource.get("name") == "cpu" and value is not None:
            return "cpu", float(value)
    if kind == "External":
        current = (metric.get("external") or {}).get("current") or {}
        raw = current.get("averageValue")
        if raw is not None:
            return "external", float(parse_quantity(str(raw)))
    return None


def hpa_alone_replicas(
    hpa_status: Mapping[str, Any] | None,
    *,
    cpu_target_percent: int,
    rps_target: int,
    min_replicas: int,
    max_replicas: int,
) -> int | None:
    """The HPA's recommendation without the floor; None when its status has no metrics."""
    status = hpa_status or {}
    current = status.get("currentReplicas")
    if not current:
        return None
    wanted: list[int] = []
    for metric in status.get("currentMetrics") or ():
        try:
            found = _current(metric)
        except (ValueError, TypeError):
            continue
        if found is None:
            continue
        what, value = found
        target = cpu_target_percent if what == "cpu" else rps_target
        if target > 0:
            wanted.append(math.ceil(int(current) * value / target - 1e-9))
    if not wanted:
        return None
    return min(max(max(wanted), min_replicas), max_replicas)
