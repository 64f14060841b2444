"""Status is derived purely: conditions keep their transition time, phase follows them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from ccs_operator.core.status import (
    DEGRADED,
    PROGRESSING,
    READY,
    RECONCILE_STATUS,
    ApplyOutcome,
    Condition,
    build_status,
    derive_phase,
    merge_conditions,
    workload_conditions,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
ENDPOINT = {"http": "http://svc.ns.svc:8000", "grpc": "svc.ns.svc:8001"}


def _deployment(replicas: int, ready: int, updated: int | None = None, **extra: object) -> dict:
    return {
        "metadata": {"generation": 2},
        "status": {
            "observedGeneration": 2,
            "replicas": replicas,
            "readyReplicas": ready,
            "updatedReplicas": replicas if updated is None else updated,
            **extra,
        },
    }


def test_transition_time_moves_only_when_status_flips() -> None:
    first = merge_conditions(None, [Condition(READY, False, "NoReadyReplicas", "0/2")], 1, T0)
    later = T0 + timedelta(minutes=1)
    same = merge_conditions(
        first, [Condition(READY, False, "NoReadyReplicas", "0/2 still")], 2, later
    )
    assert same[0]["lastTransitionTime"] == first[0]["lastTransitionTime"]
    assert same[0]["observedGeneration"] == 2
    flipped = merge_conditions(same, [Condition(READY, True, "ReplicasReady", "2/2")], 2, later)
    assert flipped[0]["lastTransitionTime"] == "2026-01-01T00:01:00Z"


def test_phase_is_derived_from_conditions() -> None:
    def phase(**statuses: bool) -> str:
        conditions = [{"type": t, "status": str(v)} for t, v in statuses.items()]
        return derive_phase(conditions, has_workload=True)

    assert phase(Ready=True, Progressing=False, Degraded=False) == "Ready"
    assert phase(Ready=True, Progressing=True, Degraded=False) == "Progressing"
    assert phase(Ready=True, Progressing=False, Degraded=True) == "Degraded"
    assert derive_phase([], has_workload=False) == "Pending"


def test_ready_deployment_gives_ready_service() -> None:
    status = build_status(
        None,
        generation=3,
        outcome=ApplyOutcome(),
        deployment=_deployment(2, 2),
        endpoint=ENDPOINT,
        now=T0,
    )
    assert status["phase"] == "Ready"
    assert (status["replicas"], status["readyReplicas"]) == (2, 2)
    assert status["observedGeneration"] == 3
    assert status["endpoint"] == ENDPOINT
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions[READY]["status"] == "True"
    assert conditions[DEGRADED]["status"] == "False"


def test_rollout_is_progressing() -> None:
    ready, progressing = workload_conditions(_deployment(3, 2, updated=1))
    assert ready.status is True and progressing.status is True
    assert progressing.reason == "RollingOut"


def test_quota_refusal_is_reported() -> None:
    failure = {
        "type": "ReplicaFailure",
        "status": "True",
        "message": 'pods "x" is forbidden: exceeded quota: gpu',
    }
    ready, progressing = workload_conditions(_deployment(2, 0, conditions=[failure]))
    assert ready.status is False and "exceeded quota" in ready.message
    assert progressing.reason == "PodsCannotBeCreated"


def test_apply_problem_marks_degraded_and_not_ready() -> None:
    problem = Condition(DEGRADED, True, "NameCollision", "ConfigMap ns/x already exists")
    status = build_status(
        None,
        generation=1,
        outcome=ApplyOutcome(problem=problem),
        deployment=None,
        endpoint=ENDPOINT,
        now=T0,
    )
    conditions = {c["type"]: c for c in status["conditions"]}
    assert status["phase"] == "Degraded"
    assert conditions[READY]["reason"] == "NameCollision"
    assert conditions[PROGRESSING]["status"] == "True"


def test_unchanged_status_produces_no_patch() -> None:
    status = build_status(
        None,
        generation=1,
        outcome=ApplyOutcome(),
        deployment=_deployment(2, 2),
        endpoint=ENDPOINT,
        now=T0,
    )
    again = build_status(
        status,
        generation=1,
        outcome=ApplyOutcome(),
        deployment=_deployment(2, 2),
        endpoint=ENDPOINT,
        now=T0 + timedelta(hours=1),
    )
    owned = RECONCILE_STATUS.part
    assert owned(status) == owned(again)  # nothing to write
    scaled = build_status(
        status,
        generation=1,
        outcome=ApplyOutcome(),
        deployment=_deployment(3, 3),
        endpoint=ENDPOINT,
        now=T0,
    )
    assert {k for k in owned(scaled) if owned(scaled)[k] != owned(status).get(k)} == {
        "replicas",
        "readyReplicas",
        "conditions",
    }


def test_floor_fields_survive_a_reconcile() -> None:
    current = {"floor": 4, "floorReason": "QueueLatencyAboveTarget", "queueLatencyMs": 250.0}
    status = build_status(
        current,
        generation=1,
        outcome=ApplyOutcome(),
        deployment=_deployment(4, 4),
        endpoint=ENDPOINT,
        now=T0,
    )
    assert status["floor"] == 4 and status["queueLatencyMs"] == 250.0
