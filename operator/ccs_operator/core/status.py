"""Pure: the status of a ClaudeCodeService from what the reconcile saw.

Conditions are shaped like metav1.Condition; a condition's lastTransitionTime moves only
when its status flips, and `phase` is derived from the conditions, never stored as state.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

READY = "Ready"
PROGRESSING = "Progressing"
DEGRADED = "Degraded"
MONITORING = "MonitoringConfigured"
FLOOR_ACTIVE = "FloorControllerActive"
METRICS_AVAILABLE = "MetricsAvailable"
SCALED_TO_ZERO = "ScaledToZero"


@dataclass(frozen=True)
class StatusOwner:
    """The part of .status one writer owns: it server-side applies exactly these fields and
    conditions (with its own field manager), so two writers never overwrite each other."""

    manager: str
    fields: frozenset[str]
    conditions: frozenset[str]

    def part(self, status: Mapping[str, Any] | None) -> dict[str, Any]:
        status = status or {}
        owned = {k: v for k, v in status.items() if k in self.fields and v is not None}
        conditions = [
            c for c in status.get("conditions") or () if c.get("type") in self.conditions
        ]
        if conditions:
            owned["conditions"] = sorted(conditions, key=lambda c: str(c.get("type")))
        return owned


RECONCILE_STATUS = StatusOwner(
    "ccs-operator",
    frozenset(
        {"phase", "observedGeneration", "replicas", "readyReplicas", "endpoint", "coldStart"}
    ),
    frozenset({READY, PROGRESSING, DEGRADED, MONITORING, SCALED_TO_ZERO}),
)
FLOOR_STATUS = StatusOwner(
    "ccs-operator-floor",
    frozenset(
        {
            "floor",
            "floorReason",
            "floorLastChangeTime",
            "queueLatencyMs",
            "floorAccounting",
            "scalingHistory",
        }
    ),
    frozenset({FLOOR_ACTIVE, METRICS_AVAILABLE}),
)

# Fields of .status that the reconcile owns; the floor loop owns the floor* fields.
RECONCILE_FIELDS = ("phase", "observedGeneration", "replicas", "readyReplicas", "endpoint")


def timestamp(now: datetime) -> str:
    return now.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Condition:
    type: str
    status: bool | None  # None: Unknown
    reason: str
    message: str

    @property
    def status_text(self) -> str:
        return "Unknown" if self.status is None else str(self.status)


def merge_conditions(
    current: Sequence[Mapping[str, Any]] | None,
    updates: Sequence[Condition],
    generation: int | None,
    now: datetime,
) -> list[dict[str, Any]]:
    """Apply condition updates, keeping lastTransitionTime where the status did not change."""
    by_type = {c["type"]: dict(c) for c in current or ()}
    for update in updates:
        previous = by_type.get(update.type)
        changed = previous is None or previous.get("status") != update.status_text
        by_type[update.type] = {
            "type": update.type,
            "status": update.status_text,
            "reason": update.reason,
            "message": update.message,
            "lastTransitionTime": timestamp(now)
            if changed
            else previous.get("lastTransitionTime", timestamp(now)),  # type: ignore[union-attr]
            **({"observedGeneration": generation} if generation is not None else {}),
        }
    return sorted(by_type.values(), key=lambda c: c["type"])


def condition_true(conditions: Sequence[Mapping[str, Any]], type_: str) -> bool:
    return any(c["type"] == type_ and c["status"] == "True" for c in conditions)


def derive_phase(conditions: Sequence[Mapping[str, Any]], has_workload: bool) -> str:
    if condition_true(conditions, DEGRADED):
        return "Degraded"
    if condition_true(conditions, SCALED_TO_ZERO):
        return "ScaledToZero"
    if condition_true(conditions, PROGRESSING):
        return "Progressing"
    if condition_true(conditions, READY):
        return "Ready"
    return "Progressing" if has_workload else "Pending"


@dataclass(frozen=True)
class ApplyOutcome:
    """What the reconcile managed to do this time."""

    problem: Condition | None = None  # set: the children are not all as desired
    monitoring: Condition | None = None


def workload_conditions(deployment: Mapping[str, Any] | None) -> tuple[Condition, Condition]:
    """Ready and Progressing from the Deployment's own status."""
    if deployment is None:
        return (
            Condition(READY, False, "DeploymentMissing", "the Deployment does not exist yet"),
            Condition(PROGRESSING, True, "Creating", "creating the serving Deployment"),
        )
    status = deployment.get("status") or {}
    desired = status.get("replicas", 0)
    ready = status.get("readyReplicas", 0)
    updated = status.get("updatedReplicas", 0)
    observed = status.get("observedGeneration", 0)
    generation = deployment.get("metadata", {}).get("generation", 0)
    conditions = {c.get("type"): c for c in status.get("conditions") or ()}
    replica_failure = conditions.get("ReplicaFailure")
    if replica_failure and replica_failure.get("status") == "True":
        message = replica_failure.get("message", "pods cannot be created")
        return (
            Condition(READY, ready > 0, "PodsFailing", f"{ready}/{desired} ready; {message}"),
            Condition(PROGRESSING, False, "PodsCannotBeCreated", message),
        )
    progressing = conditions.get("Progressing")
    if progressing and progressing.get("reason") == "ProgressDeadlineExceeded":
        message = progressing.get("message", "rollout exceeded its progress deadline")
        return (
            Condition(READY, ready > 0, "RolloutStuck", f"{ready}/{desired} ready; {message}"),
            Condition(PROGRESSING, False, "ProgressDeadlineExceeded", message),
        )
    rolling = observed < generation or updated < desired or ready < desired
    ready_condition = (
        Condition(READY, True, "ReplicasReady", f"{ready}/{desired} replicas ready")
        if ready > 0
        else Condition(READY, False, "NoReadyReplicas", f"0/{desired} replicas ready")
    )
    if rolling:
        return ready_condition, Condition(
            PROGRESSING, True, "RollingOut", f"{updated}/{desired} updated, {ready} ready"
        )
    return ready_condition, Condition(PROGRESSING, False, "Complete", "all replicas up to date")


def scaled_to_zero_condition(deployment: Mapping[str, Any] | None, minimum: int) -> Condition:
    """ScaledToZero, for a service whose spec.replicas.min is 0: True when no replica runs
    by design (the autoscaler's minimum, the floor, is 0 and the Deployment has caught up
    with it at 0 replicas); False while replicas run or are waking up."""
    status = (deployment or {}).get("status") or {}
    replicas = int(status.get("replicas") or 0)
    generation = (deployment or {}).get("metadata", {}).get("generation", 0)
    settled = deployment is not None and status.get("observedGeneration", 0) >= (generation or 0)
    if replicas == 0 and minimum == 0 and settled:
        return Condition(
            SCALED_TO_ZERO,
            True,
            "ScaledToZero",
            "no replica runs: idle, with spec.replicas.min 0; the floor (pre-warm ahead of a "
            "recurring peak) or the autoscaler's metric wakes it, and the first requests wait "
            "for a cold start",
        )
    if replicas == 0 and minimum > 0:
        return Condition(
            SCALED_TO_ZERO,
            False,
            "Waking",
            f"the autoscaler's minimum is {minimum} (the floor); replicas are starting",
        )
    return Condition(SCALED_TO_ZERO, False, "Serving", f"{replicas} replicas")


def build_status(
    current: Mapping[str, Any] | None,
    *,
    generation: int | None,
    outcome: ApplyOutcome,
    deployment: Mapping[str, Any] | None,
    endpoint: Mapping[str, str],
    now: datetime,
    zero_minimum: int | None = None,
) -> dict[str, Any]:
    """The reconcile's part of .status, merged over the current status. `zero_minimum`: for
    a service that may scale to zero (spec.replicas.min 0), the autoscaler's minimum as
    rendered; None for the others (they carry no ScaledToZero condition)."""
    current = dict(current or {})
    ready, progressing = workload_conditions(deployment)
    zero = None if zero_minimum is None else scaled_to_zero_condition(deployment, zero_minimum)
    if zero is not None and zero.status is True:
        ready = Condition(READY, False, "ScaledToZero", zero.message)
    degraded = outcome.problem or Condition(DEGRADED, False, "AsExpected", "all children applied")
    if outcome.problem is None and progressing.reason == "PodsCannotBeCreated":
        # Pods refused at admission (a missing PriorityClass or ServiceAccount, a quota)
        # never appear by waiting: that is a degraded service, not one in progress.
        degraded = Condition(
            DEGRADED,
            True,
            "PodsCannotBeCreated",
            f"{progressing.message}; fix what it names (spec or namespace), pods follow",
        )
    if outcome.problem is not None and ready.status is not True:
        ready = Condition(READY, False, outcome.problem.reason, outcome.problem.message)
    updates = [ready, progressing, degraded]
    if outcome.monitoring is not None:
        updates.append(outcome.monitoring)
    if zero is not None:
        updates.append(zero)
    conditions = merge_conditions(current.get("conditions"), updates, generation, now)
    if zero is None:
        conditions = [c for c in conditions if c["type"] != SCALED_TO_ZERO]
    workload_status = (deployment or {}).get("status") or {}
    status = {
        **current,
        "conditions": conditions,
        "observedGeneration": generation,
        "replicas": workload_status.get("replicas", 0),
        "readyReplicas": workload_status.get("readyReplicas", 0),
        "endpoint": dict(endpoint),
        "phase": derive_phase(conditions, deployment is not None),
    }
    return {k: v for k, v in status.items() if v is not None}

