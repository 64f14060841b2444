"""Pure: a replica's cold start from the cluster's own facts about its pod.

A pod's timeline is in its status: created (metadata.creationTimestamp) -> scheduled
(PodScheduled) -> Triton's container started (init containers and image pulls are done) ->
Ready (Triton's readiness probe passed: the model is loaded and warmed up). The whole span is
what a user waits for when the service scales up; the parts say where the time goes.

Only a pod's first readiness counts (restartCount 0): a replica that recovers from a crash is
not a cold start of a new replica. Figures are kept per service over the most recent pods,
so a new image or a bigger model shows in the percentiles after a rollout.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

SERVING_CONTAINER = "triton"
# Enough pods to make p95 mean something, few enough to follow a rollout within a day.
WINDOW = 50
# Below this many samples the pre-warm lead time uses the configured fallback.
MIN_SAMPLES_FOR_LEAD_TIME = 3


@dataclass(frozen=True)
class ColdStart:
    """One pod's way from creation to ready, in seconds."""

    pod_uid: str
    total: float
    scheduling: float | None  # created -> scheduled
    starting: float | None  # scheduled -> serving container started (pull, init containers)
    loading: float | None  # started -> ready (model load, warm-up, readiness probe)


def _time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


def _condition_time(status: Mapping[str, Any], type_: str) -> datetime | None:
    for condition in status.get("conditions") or ():
        if condition.get("type") == type_ and condition.get("status") == "True":
            return _time(condition.get("lastTransitionTime"))
    return None


def _span(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return max(0.0, (end - start).total_seconds())


def pod_cold_start(pod: Mapping[str, Any]) -> ColdStart | None:
    """The cold start of a pod that has become Ready for the first time, else None."""
    meta = pod.get("metadata") or {}
    status = pod.get("status") or {}
    if meta.get("deletionTimestamp"):
        return None
    created = _time(meta.get("creationTimestamp"))
    ready = _condition_time(status, "Ready")
    if created is None or ready is None:
        return None
    serving = next(
        (c for c in status.get("containerStatuses") or () if c.get("name") == SERVING_CONTAINER),
        None,
    )
    if serving is not None and int(serving.get("restartCount") or 0) > 0:
        return None  # readiness after a crash is recovery, not a new replica's cold start
    started = _time(((serving or {}).get("state") or {}).get("running", {}).get("startedAt"))
    scheduled = _condition_time(status, "PodScheduled")
    return ColdStart(
        pod_uid=str(meta.get("uid", "")),
        total=_span(created, ready) or 0.0,
        scheduling=_span(created, scheduled),
        starting=_span(scheduled, started),
        loading=_span(started, ready),
    )


def percentile(values: Iterable[float], q: float) -> float:
    """Nearest-rank percentile (no interpolation: every figure is a real pod's)."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("percentile of no values")
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


class ColdStartWindow:
    """The most recent cold starts of one service, at most one per pod."""

    def __init__(self, size: int = WINDOW) -> None:
        self.size = size
        self._samples: OrderedDict[str, ColdStart] = OrderedDict()

    def add(self, sample: ColdStart) -> bool:
        """Record a pod's cold start; False when that pod was already counted."""
        if sample.pod_uid in self._samples:
            return False
        self._samples[sample.pod_uid] = sample
        while len(self._samples) > self.size:
            self._samples.popitem(last=False)
        return True

    def __len__(self) -> int:
        return len(self._samples)

    def summary(self) -> dict[str, Any] | None:
        """status.coldStart: percentiles of the whole span and of its parts."""
        samples = list(self._samples.values())
        if not samples:
            return None
        totals = [s.total for s in samples]
        summary: dict[str, Any] = {
            "p50Seconds": round(percentile(totals, 50), 1),
            "p95Seconds": round(percentile(totals, 95), 1),
            "maxSeconds": round(max(totals), 1),
            "samples": len(samples),
            "lastSeconds": round(samples[-1].total, 1),
        }
        for part in ("scheduling", "starting", "loading"):
            values = [v for s in samples if (v := getattr(s, part)) is not None]
            if values:
                summary[f"{part}P50Seconds"] = round(percentile(values, 50), 1)
        return summary


def lead_time_seconds(
    summary: Mapping[str, Any] | None, fallback: int, evaluation_interval: int
) -> int:
    """How far ahead pre-warm must look: the measured p95 cold start plus one evaluation.

    Rounded up to whole minutes, so services with similar cold starts share one batched
    history query, and never below one evaluation interval.
    """
    if not summary or int(summary.get("samples", 0)) < MIN_SAMPLES_FOR_LEAD_TIME:
        return fallback
    needed = float(summary["p95Seconds"]) + evaluation_interval
    return max(evaluation_interval, math.ceil(needed / 60) * 60)
