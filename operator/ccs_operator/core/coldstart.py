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

import json
import math
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

SERVING_CONTAINER = "triton"
LOADER_CONTAINER = "model-loader"
REPORT_KEY = "ccsModelLoader"  # the loader's termination message: {"ccsModelLoader": {...}}
CACHE_OUTCOMES = ("hit", "miss", "refetch")
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
    # From the model loader's report: the node cache's outcome (hit | miss | refetch, None
    # without a cache), the bytes of the entry, and the loader's own seconds.
    cache: str | None = None
    cache_bytes: int = 0
    loader_seconds: float | None = None


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


def loader_report(status: Mapping[str, Any]) -> dict[str, Any]:
    """The model loader's JSON report from its termination message ({} if none or bad)."""
    loader = next(
        (
            c
            for c in status.get("initContainerStatuses") or ()
            if c.get("name") == LOADER_CONTAINER
        ),
        None,
    )
    terminated = (((loader or {}).get("state") or {}).get("terminated")) or {}
    try:
        report = json.loads(terminated.get("message") or "{}").get(REPORT_KEY)
    except (ValueError, AttributeError):
        return {}
    return report if isinstance(report, dict) else {}


def _cache_part(report: Mapping[str, Any]) -> tuple[str | None, int]:
    cache = report.get("cache")
    if not isinstance(cache, dict) or cache.get("outcome") not in CACHE_OUTCOMES:
        return None, 0
    size = cache.get("bytes")
    return str(cache["outcome"]), int(size) if isinstance(size, int | float) else 0


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
    report = loader_report(status)
    cache, cache_bytes = _cache_part(report)
    seconds = report.get("seconds")
    return ColdStart(
        pod_uid=str(meta.get("uid", "")),
        total=_span(created, ready) or 0.0,
        scheduling=_span(created, scheduled),
        starting=_span(scheduled, started),
        loading=_span(started, ready),
        cache=cache,
        cache_bytes=cache_bytes,
        loader_seconds=float(seconds) if isinstance(seconds, int | float) else None,
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
        cache = cache_summary(samples)
        if cache:
            summary["modelCache"] = cache
        return summary


def cache_summary(samples: Iterable[ColdStart]) -> dict[str, Any]:
    """status.coldStart.modelCache: hits and misses among the samples, and the median
    'starting' part (scheduled -> Triton started: where the download is) of each kind."""
    cached = [s for s in samples if s.cache is not None]
    if not cached:
        return {}
    hits = [s for s in cached if s.cache == "hit"]
    misses = [s for s in cached if s.cache != "hit"]
    summary: dict[str, Any] = {
        "hits": len(hits),
        "misses": len(misses),
        "refetches": sum(1 for s in cached if s.cache == "refetch"),
    }
    for name, group in (("hit", hits), ("miss", misses)):
        starting = [s.starting for s in group if s.starting is not None]
        if starting:
            summary[f"{name}StartingP50Seconds"] = round(percentile(starting, 50), 1)
        loader = [s.loader_seconds for s in group if s.loader_seconds is not None]
        if loader:
            summary[f"{name}LoaderP50Seconds"] = round(percentile(loader, 50), 2)
    if "hitLoaderP50Seconds" in summary and "missLoaderP50Seconds" in summary:
        summary["savedSecondsPerHit"] = round(
            max(0.0, summary["missLoaderP50Seconds"] - summary["hitLoaderP50Seconds"]), 2
        )
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
