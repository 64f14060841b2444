"""The floor loop: one shared scheduler that reads queue latency and moves each service's floor.

Services with the same evaluation interval are evaluated together on interval boundaries, so
one batched Prometheus query serves all of them (not one query per service). A decision is
stored in the service's status and applied to the HPA by the ordinary reconcile, which
renders minReplicas from status.floor: there is exactly one writer of the HPA.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from . import metrics
from .api import ClaudeCodeService, SpecError, parse_service
from .coldstart import lead_time_seconds
from .floor import FloorDecision, FloorObservation, FloorPolicy, FloorReason, FloorState, decide
from .kube import KubeError, Transient
from .prom import (
    NoData,
    PrometheusClient,
    PrometheusError,
    PrometheusUnavailable,
    QueueLatency,
    ServiceKey,
    p99_queue_latency_query,
)
from .reconcile import Reconciler
from .status import FLOOR_ACTIVE, METRICS_AVAILABLE, Condition, merge_conditions, timestamp

log = logging.getLogger(__name__)

HISTORY_LENGTH = 20
# The External metric the HPA scales on is checked this often per service (an API call each).
EXTERNAL_METRIC_CHECK_SECONDS = 300.0


@dataclass
class _Memory:
    """What the loop keeps between evaluations besides the status (lost on restart: safe,
    a restart only delays the next lowering by one cooldown)."""

    next_due: float = 0.0
    last_scale_up_at: float | None = None
    below_watermark_since: float | None = None
    external_checked_at: float | None = None
    # Why the HPA's External requests-per-second metric is unusable; None when it is fine.
    external_problem: Condition | None = None


@dataclass(frozen=True)
class Reading:
    """The latency signal for one service, or why there is none."""

    latency_ms: float | None
    problem: Condition | None = None


def _parse_time(value: str | None) -> float | None:
    if not value:
        return None
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()


def _latency_changed(old: float | None, new: float | None) -> bool:
    """Status shows latency for people; rewriting it for every wobble would flood etcd."""
    if old is None or new is None:
        return old != new
    return abs(new - old) > max(1.0, 0.1 * abs(old))


def _rounded(latency: float | None) -> float | None:
    if latency is None or not math.isfinite(latency):
        return None
    return round(latency, 1)


class FloorLoop:
    def __init__(
        self,
        reconciler: Reconciler,
        prometheus: PrometheusClient,
        *,
        window: str = "1m",
        default_lead_time_seconds: int = 300,
        tick_seconds: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.reconciler = reconciler
        self.prometheus = prometheus
        self.window = window
        self.default_lead_time_seconds = default_lead_time_seconds
        self.tick_seconds = tick_seconds
        self.clock = clock
        self.memory: dict[tuple[str, str], _Memory] = defaultdict(_Memory)
        self.queries_sent = 0

    async def run(self, stop: asyncio.Event) -> None:
        log.info("floor loop started (window %s)", self.window)
        while not stop.is_set():
            try:
                await self.tick()
            except Exception:  # the loop must outlive any one bad evaluation
                log.exception("floor loop tick failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.tick_seconds)

    async def tick(self) -> int:
        """Evaluate every service that is due; returns how many were evaluated."""
        now = self.clock()
        due: list[tuple[ClaudeCodeService, Mapping[str, Any], float]] = []
        for key, body in list(self.reconciler.services.items()):
            memory = self.memory[key]
            if memory.next_due > now:
                continue
            try:
                ccs = parse_service(body)
            except SpecError:
                continue  # the reconcile reports invalid specs
            interval = ccs.spec.autoscaling.floor.evaluation_interval_seconds
            # Align to interval boundaries so services sharing an interval share a query.
            memory.next_due = (math.floor(now / interval) + 1) * interval
            due.append((ccs, body, now - (memory.next_due - interval)))
        if not due:
            return 0
        readings = await self._read_latencies([ccs for ccs, _, _ in due if _active(ccs)])
        history = await self._read_prewarm_history(
            [(ccs, self._lead_time(ccs, body)) for ccs, body, _ in due if _active(ccs)]
        )
        await self._check_external_metrics([ccs for ccs, _, _ in due], now)
        await asyncio.gather(
            *(
                self._evaluate(ccs, body, readings.get(_key(ccs)), history.get(_key(ccs)), lag)
                for ccs, body, lag in due
            )
        )
        return len(due)

    async def _query(self, call: Callable[[], Any]) -> Any:
        started = time.perf_counter()
        self.queries_sent += 1
        try:
            return await asyncio.to_thread(call)
        finally:
            metrics.PROM_QUERY_DURATION.observe(time.perf_counter() - started)

    async def _read_latencies(self, services: list[ClaudeCodeService]) -> dict[ServiceKey, Reading]:
        readings: dict[ServiceKey, Reading] = {}
        batched = [s for s in services if s.spec.autoscaling.floor.query is None]
        if batched:
            try:
                found: dict[ServiceKey, QueueLatency] = await self._query(
                    lambda: self.prometheus.queue_latency_all(self.window)
                )
            except PrometheusError as exc:
                problem = _prometheus_problem(exc)
                readings.update({_key(s): Reading(None, problem) for s in batched})
            else:
                for ccs in batched:
                    latency = found.get(_key(ccs))
                    readings[_key(ccs)] = (
                        Reading(latency.signal(prefer_p99=True))
                        if latency is not None
                        else Reading(None, _no_series(ccs, self.window))
                    )
        for ccs in services:
            template = ccs.spec.autoscaling.floor.query
            if template is None:
                continue
            try:
                latency = await self._query(
                    functools.partial(
                        self.prometheus.queue_latency,
                        ccs.namespace,
                        ccs.name,
                        model=ccs.spec.model.name,
                        window=self.window,
                        template=template,
                    )
                )
                readings[_key(ccs)] = Reading(latency.mean_ms)
            except NoData as exc:
                readings[_key(ccs)] = Reading(
                    None,
                    Condition(
                        FLOOR_ACTIVE,
                        False,
                        "NoData",
                        f"{exc}; the floor is held. Check spec.autoscaling.floor.query",
                    ),
                )
            except PrometheusError as exc:
                readings[_key(ccs)] = Reading(None, _prometheus_problem(exc))
        return readings

    def _lead_time(self, ccs: ClaudeCodeService, body: Mapping[str, Any]) -> int:
        """Pre-warm looks ahead by the spec's lead time, else by the measured p95 cold start
        (status.coldStart) plus one evaluation, else by the operator's default."""
        floor = ccs.spec.autoscaling.floor
        if floor.prewarm.lead_time_seconds is not None:
            return floor.prewarm.lead_time_seconds
        return lead_time_seconds(
            (body.get("status") or {}).get("coldStart"),
            fallback=self.default_lead_time_seconds,
            evaluation_interval=floor.evaluation_interval_seconds,
        )

    async def _check_external_metrics(self, services: list[ClaudeCodeService], now: float) -> None:
        """Whether the HPA can read its requests-per-second External metric, per service."""
        for ccs in services:
            memory = self.memory[_key(ccs)]
            if ccs.spec.autoscaling.requests_per_second <= 0:
                memory.external_problem = None
                continue
            if (
                memory.external_checked_at is not None
                and now - memory.external_checked_at < EXTERNAL_METRIC_CHECK_SECONDS
            ):
                continue
            memory.external_checked_at = now
            selector = {"service": ccs.name}
            try:
                items = await self.reconciler.kube.external_metric(
                    ccs.namespace, EXTERNAL_RPS_METRIC, selector
                )
            except Transient as exc:
                memory.external_checked_at = None  # ask again next interval
                log.info("external metrics API of %s/%s unreachable: %s", *_key(ccs), exc)
                continue
            except KubeError as exc:
                items = None
                log.info("external metric of %s/%s unreadable: %s", *_key(ccs), exc)
            memory.external_problem = _external_metric_problem(ccs, items)

    async def _read_prewarm_history(
        self, services: list[tuple[ClaudeCodeService, int]]
    ) -> dict[ServiceKey, int]:
        """Demand one period ago, per service; one query per (period, lead time) in use."""
        groups: dict[tuple[int, int], set[ServiceKey]] = defaultdict(set)
        for ccs, lead in services:
            prewarm = ccs.spec.autoscaling.floor.prewarm
            if prewarm.enabled:
                groups[(prewarm.period_seconds, lead)].add(_key(ccs))
        history: dict[ServiceKey, int] = {}
        for (period, lead), members in groups.items():
            try:
                found: dict[ServiceKey, int] = await self._query(
                    functools.partial(self.prometheus.prewarm_history_all, period, lead)
                )
                history.update({k: v for k, v in found.items() if k in members})
            except PrometheusError as exc:
                log.warning("pre-warm history unavailable: %s", exc)
        return history

    async def _evaluate(
        self,
        ccs: ClaudeCodeService,
        body: Mapping[str, Any],
        reading: Reading | None,
        prewarm_history: int | None,
        lag: float,
    ) -> None:
        key = (ccs.namespace, ccs.name)
        memory = self.memory[key]
        status = dict(body.get("status") or {})
        policy = FloorPolicy.from_spec(ccs.spec, lead_time_seconds=self._lead_time(ccs, body))
        state = FloorState(
            current_floor=status.get("floor", policy.min_replicas),
            last_change_at=_parse_time(status.get("floorLastChangeTime")),
            last_scale_up_at=memory.last_scale_up_at,
            below_watermark_since=memory.below_watermark_since,
        )
        reading = reading or Reading(None)
        now = self.clock()
        decision = decide(
            policy,
            state,
            FloorObservation(
                queue_latency_ms=reading.latency_ms,
                ready_replicas=int(status.get("readyReplicas", 0)),
                now=now,
                prewarm_history=prewarm_history,
            ),
        )
        memory.last_scale_up_at = _epoch_or_none(decision.state.last_scale_up_at)
        memory.below_watermark_since = _epoch_or_none(decision.state.below_watermark_since)
        self._export(ccs, decision, reading)
        metrics.FLOOR_LAG.observe(max(0.0, lag))
        await self._store(ccs, decision, reading, state.current_floor, now)

    def _export(self, ccs: ClaudeCodeService, decision: FloorDecision, reading: Reading) -> None:
        labels = (ccs.namespace, ccs.name)
        metrics.FLOOR.labels(*labels).set(decision.floor)
        metrics.FLOOR_MAX.labels(*labels).set(ccs.spec.replicas.max)
        metrics.FLOOR_DEMAND.labels(*labels).set(decision.demand)
        metrics.FLOOR_DECISIONS.labels(decision.reason.value).inc()
        if reading.latency_ms is not None and math.isfinite(reading.latency_ms):
            metrics.QUEUE_LATENCY.labels(*labels).set(reading.latency_ms)

    async def _store(
        self,
        ccs: ClaudeCodeService,
        decision: FloorDecision,
        reading: Reading,
        previous_floor: int,
        now: float,
    ) -> None:
        key = (ccs.namespace, ccs.name)
        async with self.reconciler.lock(key):
            body = self.reconciler.services.get(key)
            if body is None:
                return  # deleted meanwhile
            current = dict(body.get("status") or {})
            moment = datetime.fromtimestamp(now, UTC)
            active = reading.problem or (
                Condition(
                    FLOOR_ACTIVE, False, "Disabled", "spec.autoscaling.floor.enabled is false"
                )
                if decision.reason == FloorReason.FLOOR_DISABLED
                else Condition(FLOOR_ACTIVE, True, "Evaluating", decision.message)
            )
            available = _metrics_available(
                ccs, reading, self.memory[key].external_problem, current.get("conditions")
            )
            patch: dict[str, Any] = {}
            conditions = merge_conditions(
                current.get("conditions"),
                [active, available],
                body["metadata"].get("generation"),
                moment,
            )
            if any(
                _condition_differs(current.get("conditions"), conditions, type_)
                for type_ in (FLOOR_ACTIVE, METRICS_AVAILABLE)
            ):
                patch["conditions"] = conditions
            if current.get("floor") != decision.floor:
                patch["floor"] = decision.floor
            if current.get("floorReason") != decision.reason.value and (
                decision.changed or reading.problem is None
            ):
                patch["floorReason"] = decision.reason.value
            latency = _rounded(reading.latency_ms)
            if _latency_changed(current.get("queueLatencyMs"), latency):
                patch["queueLatencyMs"] = latency
            changed = decision.floor != previous_floor
            if changed:
                patch["floorLastChangeTime"] = timestamp(moment)
                entry = {
                    "time": timestamp(moment),
                    "from": previous_floor,
                    "to": decision.floor,
                    "reason": decision.reason.value,
                }
                if latency is not None:
                    entry["signal"] = latency
                history = [*(current.get("scalingHistory") or []), entry]
                patch["scalingHistory"] = history[-HISTORY_LENGTH:]
            if not patch:
                return
            try:
                written = await self.reconciler.kube.patch_service_status(
                    ccs.namespace, ccs.name, patch
                )
            except KubeError as exc:
                log.warning("floor of %s/%s not stored: %s", *key, exc)
                return
            metrics.STATUS_WRITES.inc()
            self.reconciler.remember_service(written)
        if changed:
            # The reconcile renders the HPA's minReplicas from the stored floor.
            self.reconciler.enqueue(key, delay=0.0)
            verb = "FloorRaised" if decision.floor > previous_floor else "FloorLowered"
            self.reconciler.post_event(
                body,
                "Normal",
                verb,
                f"replica floor {previous_floor} -> {decision.floor}: {decision.message}",
            )
        if reading.problem is not None and "conditions" in patch:
            self.reconciler.post_event(
                body, "Warning", reading.problem.reason, reading.problem.message
            )
        if (
            available.status is False
            and "conditions" in patch
            and _condition_differs(
                current.get("conditions"), patch["conditions"], METRICS_AVAILABLE
            )
        ):
            self.reconciler.post_event(body, "Warning", available.reason, available.message)


def _active(ccs: ClaudeCodeService) -> bool:
    return ccs.spec.autoscaling.floor.enabled


def _key(ccs: ClaudeCodeService) -> ServiceKey:
    return ServiceKey(ccs.namespace, ccs.name)


def _epoch_or_none(value: datetime | float | None) -> float | None:
    if value is None:
        return None
    return value.timestamp() if isinstance(value, datetime) else float(value)


def _condition_differs(before: Any, after: list[dict[str, Any]], type_: str) -> bool:
    def pick(items: Any) -> dict[str, Any] | None:
        return next((dict(c) for c in items or () if c.get("type") == type_), None)

    return pick(before) != pick(after)


def _prometheus_problem(exc: PrometheusError) -> Condition:
    reason = "PrometheusUnavailable" if isinstance(exc, PrometheusUnavailable) else "QueryFailed"
    return Condition(
        FLOOR_ACTIVE,
        False,
        reason,
        f"{exc}; the floor is held at its current value until Prometheus answers again",
    )


def _no_series(ccs: ClaudeCodeService, window: str) -> Condition:
    query = p99_queue_latency_query({"namespace": ccs.namespace, "service": ccs.name})
    return Condition(
        FLOOR_ACTIVE,
        False,
        "NoData",
        f"Prometheus has no Triton queue series for service {ccs.namespace}/{ccs.name} "
        f"(nv_inference_queue_duration_us over {window}, e.g. {query}); the floor is held. "
        "Check that the ServiceMonitor is picked up by Prometheus",
    )


EXTERNAL_RPS_METRIC = "requests_per_second"


def _external_metric_problem(
    ccs: ClaudeCodeService, items: list[dict[str, Any]] | None
) -> Condition | None:
    """Why the HPA cannot read its External metric (None: it can)."""
    where = f"{EXTERNAL_RPS_METRIC}{{service={ccs.name}}} in namespace {ccs.namespace}"
    if items is None:
        return Condition(
            METRICS_AVAILABLE,
            False,
            "ExternalMetricsAPIMissing",
            f"the HPA scales on the External metric {where}, but no adapter serves "
            "external.metrics.k8s.io (the HPA reports FailedGetExternalMetric and scales on "
            "CPU only); install prometheus-adapter or KEDA with a rule for "
            f"{EXTERNAL_RPS_METRIC}, or set spec.autoscaling.requestsPerSecond: 0",
        )
    if not items:
        return Condition(
            METRICS_AVAILABLE,
            False,
            "ExternalMetricMissing",
            f"external.metrics.k8s.io is served but returns no value for {where}; add an "
            f"adapter rule that exposes {EXTERNAL_RPS_METRIC} with the label service, or set "
            "spec.autoscaling.requestsPerSecond: 0",
        )
    return None


def _metrics_available(
    ccs: ClaudeCodeService,
    reading: Reading,
    external_problem: Condition | None,
    conditions: Any,
) -> Condition:
    """MetricsAvailable: do the series the floor and the HPA depend on exist for this ccs?"""
    problems: list[Condition] = []
    if _active(ccs) and reading.problem is not None:
        if reading.problem.reason != "NoData":
            return Condition(
                METRICS_AVAILABLE,
                None,
                reading.problem.reason,
                f"cannot tell: {reading.problem.message}",
            )
        was_available = any(
            c.get("type") == METRICS_AVAILABLE and c.get("status") == "True"
            for c in conditions or ()
        )
        if was_available:
            problems.append(
                Condition(
                    METRICS_AVAILABLE,
                    False,
                    "MetricsStale",
                    "Triton's queue series stopped arriving (pods not scraped any more?): "
                    + reading.problem.message,
                )
            )
        else:
            problems.append(
                Condition(METRICS_AVAILABLE, False, "SeriesMissing", reading.problem.message)
            )
    if external_problem is not None:
        problems.append(external_problem)
    if problems:
        return Condition(
            METRICS_AVAILABLE,
            False,
            problems[0].reason,
            "; and ".join(p.message for p in problems),
        )
    sources = []
    if _active(ccs):
        sources.append("Triton queue latency in Prometheus")
    if ccs.spec.autoscaling.requests_per_second > 0:
        sources.append(f"the HPA's External metric {EXTERNAL_RPS_METRIC}")
    return Condition(
        METRICS_AVAILABLE,
        True,
        "MetricsPresent" if sources else "NotRequired",
        ("present: " + ", ".join(sources)) if sources else "no metric is needed by this spec",
    )
