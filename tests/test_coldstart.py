"""Cold start from a pod's own status: parts, percentiles, the window, the pre-warm lead."""

from __future__ import annotations

from typing import Any

import pytest

from ccs_operator.core.coldstart import (
    ColdStart,
    ColdStartWindow,
    lead_time_seconds,
    percentile,
    pod_cold_start,
)


def pod(
    uid: str = "u1",
    created: str = "2026-01-01T00:00:00Z",
    scheduled: str | None = "2026-01-01T00:00:05Z",
    started: str | None = "2026-01-01T00:01:05Z",
    ready: str | None = "2026-01-01T00:03:05Z",
    restarts: int = 0,
) -> dict[str, Any]:
    conditions = []
    if scheduled:
        conditions.append(
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": scheduled}
        )
    conditions.append(
        {
            "type": "Ready",
            "status": "True" if ready else "False",
            "lastTransitionTime": ready or created,
        }
    )
    state = {"running": {"startedAt": started}} if started else {"waiting": {"reason": "Pulling"}}
    return {
        "metadata": {"uid": uid, "namespace": "ns", "creationTimestamp": created},
        "status": {
            "conditions": conditions,
            "containerStatuses": [
                {"name": "sidecar", "restartCount": 7, "state": {}},
                {"name": "triton", "restartCount": restarts, "state": state},
            ],
        },
    }


def test_a_ready_pod_splits_into_scheduling_starting_loading() -> None:
    sample = pod_cold_start(pod())
    assert sample == ColdStart("u1", total=185.0, scheduling=5.0, starting=60.0, loading=120.0)


@pytest.mark.parametrize(
    "body",
    [
        pod(ready=None),  # not ready yet
        pod(restarts=1),  # ready again after a crash: recovery, not a new replica
        {
            "metadata": {
                "uid": "x",
                "creationTimestamp": "2026-01-01T00:00:00Z",
                "deletionTimestamp": "2026-01-01T00:00:09Z",
            },
            "status": pod()["status"],
        },
        {"metadata": {}, "status": {}},
    ],
)
def test_pods_that_are_not_a_finished_cold_start_give_none(body: dict[str, Any]) -> None:
    assert pod_cold_start(body) is None


def test_missing_parts_are_none_but_the_total_stands() -> None:
    sample = pod_cold_start(pod(scheduled=None, started=None))
    assert sample is not None
    assert (sample.total, sample.scheduling, sample.starting, sample.loading) == (
        185.0,
        None,
        None,
        None,
    )


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 95) == 95.0
    assert percentile([7.0], 95) == 7.0
    with pytest.raises(ValueError):
        percentile([], 50)


def test_window_counts_each_pod_once_and_forgets_the_oldest() -> None:
    window = ColdStartWindow(size=3)
    for i, total in enumerate([10.0, 20.0, 30.0, 40.0]):
        assert window.add(ColdStart(f"p{i}", total, 1.0, 2.0, total - 3))
    assert not window.add(ColdStart("p3", 99.0, None, None, None))
    summary = window.summary()
    assert summary is not None
    assert summary["samples"] == 3
    assert (summary["p50Seconds"], summary["p95Seconds"], summary["maxSeconds"]) == (30, 40, 40)
    assert summary["lastSeconds"] == 40.0
    assert summary["schedulingP50Seconds"] == 1.0
    assert summary["loadingP50Seconds"] == 27.0
    assert ColdStartWindow().summary() is None


def test_lead_time_follows_the_measured_p95_once_there_are_enough_samples() -> None:
    assert lead_time_seconds(None, fallback=300, evaluation_interval=30) == 300
    few = {"p95Seconds": 500.0, "samples": 2}
    assert lead_time_seconds(few, fallback=300, evaluation_interval=30) == 300
    # p95 100 s + one 30 s evaluation, rounded up to whole minutes.
    enough = {"p95Seconds": 100.0, "samples": 5}
    assert lead_time_seconds(enough, fallback=300, evaluation_interval=30) == 180
    tiny = {"p95Seconds": 0.0, "samples": 5}
    assert lead_time_seconds(tiny, fallback=300, evaluation_interval=90) == 120


def _with_loader_report(body: dict[str, Any], message: str) -> dict[str, Any]:
    body["status"]["initContainerStatuses"] = [
        {"name": "other-init", "state": {"terminated": {"message": "{}"}}},
        {"name": "model-loader", "state": {"terminated": {"exitCode": 0, "message": message}}},
    ]
    return body


def _report(outcome: str, seconds: float, size: int = 5000) -> str:
    import json

    return json.dumps(
        {"ccsModelLoader": {"cache": {"outcome": outcome, "bytes": size}, "seconds": seconds}}
    )


def test_the_loader_report_says_what_the_node_cache_did() -> None:
    sample = pod_cold_start(_with_loader_report(pod(), _report("hit", 0.4)))
    assert sample is not None
    assert (sample.cache, sample.cache_bytes, sample.loader_seconds) == ("hit", 5000, 0.4)


@pytest.mark.parametrize(
    "message",
    ["", "not json", "[1, 2]", '{"ccsModelLoader": 3}', '{"ccsModelLoader": {"cache": "hit"}}'],
)
def test_a_missing_or_odd_report_means_no_cache_figures(message: str) -> None:
    sample = pod_cold_start(_with_loader_report(pod(), message))
    assert sample is not None and sample.total == 185.0
    assert sample.cache is None and sample.cache_bytes == 0


def test_the_summary_splits_hits_from_misses_and_says_what_a_hit_saves() -> None:
    window = ColdStartWindow()
    starts = {"a": ("miss", 30.0, "00:00:35"), "b": ("hit", 1.0, "00:00:08"),
              "c": ("hit", 2.0, "00:00:09"), "d": ("refetch", 28.0, "00:00:33")}  # fmt: skip
    for uid, (outcome, seconds, started) in starts.items():
        body = pod(uid=uid, started=f"2026-01-01T{started}Z")
        sample = pod_cold_start(_with_loader_report(body, _report(outcome, seconds)))
        assert sample is not None
        window.add(sample)
    cache = (window.summary() or {})["modelCache"]
    assert (cache["hits"], cache["misses"], cache["refetches"]) == (2, 2, 1)
    assert cache["hitLoaderP50Seconds"] == 1.0 and cache["missLoaderP50Seconds"] == 28.0
    assert cache["savedSecondsPerHit"] == 27.0
    assert cache["hitStartingP50Seconds"] == 3.0 and cache["missStartingP50Seconds"] == 28.0


def test_without_a_cache_the_summary_has_no_cache_part() -> None:
    window = ColdStartWindow()
    sample = pod_cold_start(pod())
    assert sample is not None
    window.add(sample)
    assert "modelCache" not in (window.summary() or {})
