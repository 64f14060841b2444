"""The floor loop: one shared scheduler that reads queue latency and moves each service's floor.

Services with the same evaluation interval are evaluated together on interval boundaries, so
one batched Prometheus query serves all of them (not one query per service). A decision is
stored in the service's status and applied to the HPA by the ordinary reconcile, which
renders minReplicas from status.floor: there is exactly one writer of the HPA.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import math
import time
import zlib
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ccs_operator import metrics
from ccs_operator.clients.kube import KubeError, Transient
from ccs_operator.clients.prometheus import PrometheusClient
from ccs_operator.controllers.reconcile import Reconciler
from ccs_operator.core.api import ClaudeCodeService, SpecError, duration_seconds, parse_service
from ccs_operator.core.coldstart import lead_time_seconds
from ccs_operator.core.confine import OverridePolicy, QueryRefused, confine_override
from ccs_operator.core.floor import (
    DEFAULT_LEAD_TIME_SECONDS,
    PREWARM_HISTORY_PERIODS,
    PREWARM_SLACK_SECONDS,
    FloorAccounting,
    FloorDecision,
    FloorObservation,
    FloorPolicy,
    FloorReason,
    FloorState,
    PrewarmState,
    decide,
)
from ccs_operator.core.hpastatus import hpa_alone_replicas
from ccs_operator.core.promql import (
    FloorSignals,
    NoData,
    PrometheusError,
    PrometheusUnavailable,
    QueryTooExpensive,
    ServiceKey,
    arrival_rate_query,
    p99_queue_latency_query,
)
from ccs_operator.core.render import ChildNames
from ccs_operator.core.status import (
    FLOOR_ACTIVE,
    FLOOR_STATUS,
    METRICS_AVAILABLE,
    Condition,
    merge_conditions,
    timestamp,
)

log = logging.getLogger(__name__)

HISTORY_LENGTH = 20
# status.floorAccounting alone (without a floor or condition change) is rewritten at most
# this often per service: its figures move every evaluation under live traffic.
ACCOUNTING_WRITE_SECONDS = 300.0
# The External metric the HPA scales on is checked this often per service (an API call each).
EXTERNAL_METRIC_CHECK_SECONDS = 300.0
# While the metric is not served, it is asked for this often instead: an adapter installed
# (or a rule added) shows in MetricsAvailable within seconds, not minutes.
EXTERNAL_METRIC_RECHECK_SECONDS = 15.0
EXTERNAL_METRIC_PARALLELISM = 8
# Query overrides in flight at once; each has its own timeout (OverridePolicy).
OVERRIDE_PARALLELISM = 8
# Reasons of a query override that does not run; the floor is held.
OVERRIDE_PROBLEMS = ("QueryOverrideDisabled", "QueryRefused", "QueryTooExpensive")
# KEDA's HPA (for the floor's accounting only) is read at most this often per service.
KEDA_HPA_READ_SECONDS = 60.0


@dataclass
class _Memory:
    """What the loop keeps between evaluations besides the status (lost on restart: safe,
    a restart only delays the next lowering by one cooldown)."""

    next_due: float = 0.0
    # The policy's memory beyond what status holds (forecast, burst memory, ledgers).
    state: FloorState | None = None
    accounting_written_at: float | None = None
    prewarm: PrewarmState | None = None
    external_checked_at: float | None = None
    # KEDA mode: the status of KEDA's HPA, and when it was read.
    keda_hpa_status: Mapping[str, Any] | None = None
    keda_hpa_read_at: float | None = None
    # Why the HPA's External requests-per-second metric is unusable; None when it is fine.
    external_problem: Condition | None = None
    # The evaluation slot (time // interval) of the last query override sent, and what it
    # read: at most one override query per service per interval, whatever calls tick.
    override_slot: int | None = None
    override_reading: Reading | None = None


@dataclass(frozen=True)
class Reading:
    """The signals of one service, or why there are none."""

    latency_ms: float | None
    problem: Condition | None = None
    signals: FloorSignals | None = None
    # latency_ms is Triton's p99 (not a mean, nor a user's query): the gain may learn from it.
    p99: bool = False


def _parse_time(value: str | None) -> float | None:
    if not value:
        return None
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()


def _latency_changed(old: float | None, new: float | None) -> bool:
    """Status shows latency for people; rewriting it for every wobble would flood etcd."""
    if old is None or new is None:
        return old != new
    return abs(new - old) > max(1.0, 0.1 * abs(old))


def _refresh_offset(key: tuple[str, str]) -> float:
    """A service's fixed place in the accounting refresh period, [0, period): spread by a
    hash of its name, the same in every process."""
    digest = zlib.crc32("/".join(key).encode())
    return ACCOUNTING_WRITE_SECONDS * digest / 2**32


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
        default_lead_time_seconds: int = DEFAULT_LEAD_TIME_SECONDS,
        tick_seconds: float = 1.0,
        clock: Callable[[], float] = time.time,
        overrides: OverridePolicy | None = None,
    ) -> None:
        self.reconciler = reconciler
        self.prometheus = prometheus
        self.window = window
        self.window_seconds = duration_seconds(window)
        self.default_lead_time_seconds = default_lead_time_seconds
        self.tick_seconds = tick_seconds
        self.clock = clock
        self.memory: dict[tuple[str, str], _Memory] = defaultdict(_Memory)
        self.queries_sent = 0
        self.overrides = overrides if overrides is not None else OverridePolicy()

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
        for gone in [k for k in self.memory if k not in self.reconciler.services]:
            del self.memory[gone]  # deleted services leave nothing behind
        due: list[tuple[ClaudeCodeService, Mapping[str, Any], float]] = []
        for key in list(self.reconciler.services):
            memory = self.memory[key]
            if memory.next_due > now:
                continue
            body = self.reconciler.services.get(key)
            if body is None:
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
        readings = await self._read_signals([ccs for ccs, _, _ in due if _active(ccs)])
        history = await self._read_prewarm_history(
            [(ccs, self._prewarm_lead(ccs, body)) for ccs, body, _ in due if _active(ccs)]
        )
        await self._check_external_metrics([ccs for ccs, _, _ in due], now)
        await self._read_keda_hpas([ccs for ccs, _, _ in due if _active(ccs)], now)
        await asyncio.gather(
            *(
                self._evaluate_isolated(
                    ccs, body, readings.get(_key(ccs)), history.get(_key(ccs)), lag
                )
                for ccs, body, lag in due
            )
        )
        return len(due)

    async def _evaluate_isolated(
        self,
        ccs: ClaudeCodeService,
        body: Mapping[str, Any],
        reading: Reading | None,
        history: float | None,
        lag: float,
    ) -> None:
        """One service's evaluation; whatever goes wrong in it never reaches the others."""
        try:
            await self._evaluate(ccs, body, reading, history, lag)
        except Exception:
            metrics.FLOOR_ERRORS.inc()
            log.exception("floor evaluation of %s/%s failed; the floor is held", *_key(ccs))

    async def _query(self, call: Callable[[], Any]) -> Any:
        started = time.perf_counter()
        self.queries_sent += 1
        try:
            return await asyncio.to_thread(call)
        finally:
            metrics.PROM_QUERY_DURATION.observe(time.perf_counter() - started)

    async def _read_signals(self, services: list[ClaudeCodeService]) -> dict[ServiceKey, Reading]:
        """One batched query for every service's signals, plus one per query override."""
        readings: dict[ServiceKey, Reading] = {}
        if not services:
            return readings
        try:
            found: dict[ServiceKey, FloorSignals] = await self._query(
                lambda: self.prometheus.floor_signals_all(self.window)
            )
        except PrometheusError as exc:
            problem = _prometheus_problem(exc, self.prometheus.settings.url)
            log.warning("floor signals unavailable: %s", exc)
            return {_key(s): Reading(None, problem) for s in services}
        overridden = []
        for ccs in services:
            signals = found.get(_key(ccs))
            if ccs.spec.autoscaling.floor.query is None:
                latency = signals.latency if signals is not None else None
                readings[_key(ccs)] = (
                    Reading(
                        latency.signal(prefer_p99=True), None, signals, latency.p99_ms is not None
                    )
                    if latency is not None
                    else Reading(None, _no_series(ccs, self.window), signals)
                )
            else:
                overridden.append((ccs, signals))
        limit = asyncio.Semaphore(OVERRIDE_PARALLELISM)

        async def one(ccs: ClaudeCodeService, signals: FloorSignals | None) -> None:
            async with limit:
                readings[_key(ccs)] = await self._read_override(ccs, signals)

        # Side by side (bounded): one slow override never delays another service.
        await asyncio.gather(*(one(ccs, signals) for ccs, signals in overridden))
        return readings

    async def _read_override(
        self, ccs: ClaudeCodeService, signals: FloorSignals | None
    ) -> Reading:
        """The service's query override, if the admin allows it there, confined to its own
        namespace and service, at most once per evaluation interval."""
        floor = ccs.spec.autoscaling.floor
        assert floor.query is not None
        policy = self.overrides
        if not policy.permits(ccs.namespace):
            return Reading(
                None,
                Condition(
                    FLOOR_ACTIVE, False, "QueryOverrideDisabled", policy.refusal(ccs.namespace)
                ),
                signals,
            )
        try:
            confined = confine_override(
                floor.query,
                namespace=ccs.namespace,
                service=ccs.name,
                model=ccs.spec.model.name,
                window=self.window,
            )
        except QueryRefused as exc:
            log.info("query override of %s/%s refused: %s", *_key(ccs), exc)
            return Reading(None, Condition(FLOOR_ACTIVE, False, "QueryRefused", str(exc)), signals)
        memory = self.memory[_key(ccs)]
        slot = math.floor(self.clock() / floor.evaluation_interval_seconds)
        if memory.override_slot == slot and memory.override_reading is not None:
            return dataclasses.replace(memory.override_reading, signals=signals)
        memory.override_slot = slot
        try:
            value = await self._query(
                functools.partial(
                    self.prometheus.queue_latency,
                    ccs.namespace,
                    ccs.name,
                    query=confined,
                    window=self.window,
                    max_series=policy.max_series,
                    timeout_seconds=policy.timeout_seconds,
                )
            )
            reading = Reading(value.mean_ms, None, signals)
        except QueryTooExpensive as exc:
            log.warning("query override of %s/%s too expensive: %s", *_key(ccs), exc)
            reading = Reading(None, _too_expensive(exc, policy), signals)
        except NoData as exc:
            log.info("query override of %s/%s: %s", *_key(ccs), exc)
            reading = Reading(
                None,
                Condition(
                    FLOOR_ACTIVE,
                    False,
                    "NoData",
                    "spec.autoscaling.floor.query returned no series; the floor is held. "
                    "Check the query against Prometheus",
                ),
                signals,
            )
        except PrometheusError as exc:
            log.warning("query override of %s/%s failed: %s", *_key(ccs), exc)
            reading = Reading(
                None, _prometheus_problem(exc, self.prometheus.settings.url), signals
            )
        memory.override_reading = reading
        return reading

    def _horizon(self, ccs: ClaudeCodeService, body: Mapping[str, Any]) -> int:
        """How far the floor looks ahead: the measured p95 cold start (status.coldStart)
        plus one evaluation, else the operator's default."""
        return lead_time_seconds(
            (body.get("status") or {}).get("coldStart"),
            fallback=self.default_lead_time_seconds,
            evaluation_interval=ccs.spec.autoscaling.floor.evaluation_interval_seconds,
        )

    def _prewarm_lead(self, ccs: ClaudeCodeService, body: Mapping[str, Any]) -> int:
        """Pre-warm's lead time: the spec's, else the horizon."""
        lead = ccs.spec.autoscaling.floor.prewarm.lead_time_seconds
        return lead if lead is not None else self._horizon(ccs, body)

    async def _read_keda_hpas(self, services: list[ClaudeCodeService], now: float) -> None:
        """KEDA mode: the status of the HPA KEDA creates (keda-hpa-<name>), for the floor's
        accounting. Not watched (it is KEDA's, labelled as KEDA's), so read on demand."""
        limit = asyncio.Semaphore(EXTERNAL_METRIC_PARALLELISM)

        async def read(ccs: ClaudeCodeService) -> None:
            memory = self.memory[_key(ccs)]
            if ccs.spec.autoscaling.engine != "KEDA":
                memory.keda_hpa_status = None
                return
            if (
                memory.keda_hpa_read_at is not None
                and now - memory.keda_hpa_read_at < KEDA_HPA_READ_SECONDS
            ):
                return
            memory.keda_hpa_read_at = now
            name = ChildNames.of(ccs.name).keda_hpa
            try:
                async with limit:
                    hpa = await self.reconciler.kube.get(
                        "HorizontalPodAutoscaler", ccs.namespace, name
                    )
            except KubeError as exc:
                log.info("KEDA's HPA of %s/%s unreadable: %s", *_key(ccs), exc)
                return
            memory.keda_hpa_status = (hpa or {}).get("status")

        await asyncio.gather(*(read(ccs) for ccs in services))

    async def _check_external_metrics(self, services: list[ClaudeCodeService], now: float) -> None:
        """Whether the HPA can read its requests-per-second External metric, per service;
        the reads run side by side (bounded), never one after another."""
        limit = asyncio.Semaphore(EXTERNAL_METRIC_PARALLELISM)

        async def check(ccs: ClaudeCodeService) -> None:
            memory = self.memory[_key(ccs)]
            if (
                ccs.spec.autoscaling.requests_per_second <= 0
                or ccs.spec.autoscaling.engine == "KEDA"
            ):
                # KEDA's triggers query Prometheus themselves and its metrics server serves
                # them under its own names (s0-prometheus): requests_per_second is not used.
                memory.external_problem = None
                return
            period = (
                EXTERNAL_METRIC_CHECK_SECONDS
                if memory.external_problem is None
                else EXTERNAL_METRIC_RECHECK_SECONDS
            )
            if memory.external_checked_at is not None and now - memory.external_checked_at < period:
                return
            memory.external_checked_at = now
            selector = {"service": ccs.name}
            try:
                async with limit:
                    items = await self.reconciler.kube.external_metric(
                        ccs.namespace, EXTERNAL_RPS_METRIC, selector
                    )
            except Transient as exc:
                memory.external_checked_at = None  # ask again next interval
                log.info("external metrics API of %s/%s unreachable: %s", *_key(ccs), exc)
                if exc.status == 503:
                    # The aggregation layer's answer when the APIService is registered but
                    # its adapter does not respond: the HPA cannot read the metric either.
                    memory.external_problem = _external_metric_unavailable(ccs, str(exc))
                return
            except KubeError as exc:
                items = None
                log.info("external metric of %s/%s unreadable: %s", *_key(ccs), exc)
            memory.external_problem = _external_metric_problem(ccs, items)

        await asyncio.gather(*(check(ccs) for ccs in services))

    async def _read_prewarm_history(
        self, services: list[tuple[ClaudeCodeService, int]]
    ) -> dict[ServiceKey, float]:
        """The relative rise of the arrival rate one and two periods ago, per service; one
        query per (period, lead)."""
        groups: dict[tuple[int, int], set[ServiceKey]] = defaultdict(set)
        for ccs, lead in services:
            prewarm = ccs.spec.autoscaling.floor.prewarm
            if prewarm.enabled:
                groups[(prewarm.period_seconds, lead)].add(_key(ccs))
        history: dict[ServiceKey, float] = {}
        for (period, lead), members in groups.items():
            try:
                found: dict[ServiceKey, float] = await self._query(
                    functools.partial(
                        self.prometheus.prewarm_history_all,
                        period,
                        lead,
                        slack_seconds=PREWARM_SLACK_SECONDS,
                        periods=PREWARM_HISTORY_PERIODS,
                        window=self.window,
                    )
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
        prewarm_history: float | None,
        lag: float,
    ) -> None:
        key = (ccs.namespace, ccs.name)
        memory = self.memory[key]
        status = dict(body.get("status") or {})
        policy = FloorPolicy.from_spec(
            ccs.spec,
            lead_time_seconds=self._horizon(ccs, body),
            window_seconds=self.window_seconds,
        )
        now = self.clock()
        current = status.get("floor", policy.min_replicas)
        changed_at = _parse_time(status.get("floorLastChangeTime"))
        if memory.state is None:
            state = FloorState.resumed(current, changed_at, now)
        else:
            # status holds the floor and when it changed: they win over memory (another
            # operator may have moved them while this one was standby).
            state = dataclasses.replace(
                memory.state,
                current_floor=current,
                last_change_at=changed_at or memory.state.last_change_at,
            )
        reading = reading or Reading(None)
        signals = reading.signals
        arrival_rps = signals.arrival_rps if signals else None
        if asleep(ccs, status) and (reading.problem is None or reading.problem.reason == "NoData"):
            # Scaled to zero by design: no pod, so no Triton series; that is no arrival
            # counted, not missing data. Pre-warm may wake it (floor.py).
            reading = Reading(None, None, signals)
            if arrival_rps is None:
                arrival_rps = 0.0
        decision = decide(
            policy,
            state,
            FloorObservation(
                queue_latency_ms=reading.latency_ms,
                ready_replicas=int(status.get("readyReplicas", 0)),
                now=now,
                arrival_rps=arrival_rps,
                pending_requests=signals.pending_requests if signals else None,
                busy_instances=signals.busy_instances if signals else None,
                executions_per_s=signals.executions_per_s if signals else None,
                prewarm_rise=prewarm_history,
                hpa_replicas=self._hpa_alone(ccs),
                latency_is_p99=reading.p99,
            ),
        )
        memory.state = decision.state
        self._export(ccs, decision, reading)
        metrics.FLOOR_LAG.observe(max(0.0, lag))
        await self._store(ccs, decision, reading, state.current_floor, now)

    def _hpa_alone(self, ccs: ClaudeCodeService) -> int | None:
        """What the HPA alone would run, from its status: ours (watched), or in KEDA mode
        the one KEDA creates and owns, read at most every KEDA_HPA_READ_SECONDS."""
        if ccs.spec.autoscaling.engine == "KEDA":
            hpa_status = self.memory[_key(ccs)].keda_hpa_status
        else:
            record = self.reconciler.children.get(
                ("HorizontalPodAutoscaler", ccs.namespace, ccs.name)
            )
            hpa_status = record.status if record is not None else None
        if hpa_status is None:
            return None
        return hpa_alone_replicas(
            hpa_status,
            cpu_target_percent=ccs.spec.autoscaling.cpu_utilization,
            rps_target=ccs.spec.autoscaling.requests_per_second,
            min_replicas=ccs.spec.replicas.min,
            max_replicas=ccs.spec.replicas.max,
        )

    def _export(self, ccs: ClaudeCodeService, decision: FloorDecision, reading: Reading) -> None:
        labels = (ccs.namespace, ccs.name)
        metrics.FLOOR.labels(*labels).set(decision.floor)
        metrics.FLOOR_MAX.labels(*labels).set(ccs.spec.replicas.max)
        metrics.FLOOR_DEMAND.labels(*labels).set(decision.demand)
        metrics.FLOOR_DECISIONS.labels(decision.reason.value).inc()
        if reading.latency_ms is not None and math.isfinite(reading.latency_ms):
            metrics.QUEUE_LATENCY.labels(*labels).set(reading.latency_ms)
        acc = decision.accounting
        for gauge, value in (
            (metrics.FLOOR_FORECAST, acc.forecast_rps),
            (metrics.FLOOR_FORECAST_ERROR, acc.forecast_error),
            (metrics.FLOOR_HEADROOM, acc.headroom),
            (metrics.FLOOR_CAPACITY, acc.capacity_rps),
            (metrics.FLOOR_UTILISATION_GAIN, acc.utilisation_gain),
            (metrics.FLOOR_ABOVE_HPA, acc.replica_hours_above_hpa),
            (metrics.FLOOR_BREACH, acc.breach_minutes),
        ):
            if value is not None:
                gauge.labels(*labels).set(value)
        for state in PrewarmState:
            metrics.FLOOR_PREWARM.labels(*labels, state.value).set(acc.prewarm == state)

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
            memory = self.memory[key]
            active = reading.problem or (
                Condition(
                    FLOOR_ACTIVE, False, "Disabled", "spec.autoscaling.floor.enabled is false"
                )
                if decision.reason == FloorReason.FLOOR_DISABLED
                else Condition(FLOOR_ACTIVE, True, "Evaluating", _active_message(decision))
            )
            available = _metrics_available(
                ccs,
                reading,
                memory.external_problem,
                current.get("conditions"),
                _prewarm_problem(ccs, body, decision, reading, now),
                asleep=asleep(ccs, current),
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
            accounting = accounting_status(decision.accounting)
            if memory.accounting_written_at is None and current.get("floorAccounting"):
                # Figures an earlier process stored (a restart, a new leader): refreshed
                # within one period, each service at its own offset, not every service's
                # status rewritten in the first interval.
                memory.accounting_written_at = now - _refresh_offset(key)
            due = (
                memory.accounting_written_at is None
                or now - memory.accounting_written_at >= ACCOUNTING_WRITE_SECONDS
            )
            if current.get("floorAccounting") != accounting and (patch or due):
                patch["floorAccounting"] = accounting
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
            # What changed decides whether to write; what is written is the whole part of
            # status this writer owns, server-side applied with its own field manager.
            ours = FLOOR_STATUS.part({**current, **patch})
            try:
                written = await self.reconciler.kube.apply_service_status(
                    ccs.namespace, ccs.name, ours, FLOOR_STATUS.manager
                )
            except KubeError as exc:
                log.warning("floor of %s/%s not stored: %s", *key, exc)
                return
            metrics.STATUS_WRITES.inc()
            if "floorAccounting" in patch:
                memory.accounting_written_at = now
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
        prewarm = decision.accounting.prewarm
        if memory.prewarm is not None and prewarm != memory.prewarm:
            if prewarm == PrewarmState.GATED:
                self.reconciler.post_event(
                    body,
                    "Normal",
                    "PrewarmGated",
                    "pre-warm paused: its recent predictions of a recurring rise did not come "
                    "true; it resumes by itself when they do",
                )
            elif memory.prewarm == PrewarmState.GATED and prewarm == PrewarmState.ACTIVE:
                self.reconciler.post_event(
                    body, "Normal", "PrewarmResumed", "pre-warm resumed: the pattern recurs again"
                )
        memory.prewarm = prewarm
        if (
            available.status is False
            # An override's problem was posted above under the same reason.
            and (reading.problem is None or reading.problem.reason != available.reason)
            and "conditions" in patch
            and _condition_differs(
                current.get("conditions"), patch["conditions"], METRICS_AVAILABLE
            )
        ):
            self.reconciler.post_event(body, "Warning", available.reason, available.message)


def asleep(ccs: ClaudeCodeService, status: Mapping[str, Any]) -> bool:
    """Scaled to zero by design: spec.replicas.min 0, the floor at 0 and no replica exists,
    so no pod exports Triton's series."""
    return (
        ccs.spec.replicas.min == 0
        and not status.get("floor")
        and not status.get("replicas")
        and not status.get("readyReplicas")
    )


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


def _prometheus_problem(exc: PrometheusError, url: str) -> Condition:
    """One short sentence: what failed, where, and the fix (details are in the log)."""
    if isinstance(exc, PrometheusUnavailable):
        return Condition(
            FLOOR_ACTIVE,
            False,
            "PrometheusUnavailable",
            f"Prometheus at {url} does not answer; the floor is held until it does "
            "(check CCS_PROMETHEUS_URL)",
        )
    return Condition(
        FLOOR_ACTIVE,
        False,
        "QueryFailed",
        f"Prometheus at {url} refused the floor's query; the floor is held "
        "(the operator log has the query and the answer)",
    )


def _too_expensive(exc: QueryTooExpensive, policy: OverridePolicy) -> Condition:
    why = {
        "slow": f"ran longer than its {policy.timeout_seconds:g}s budget",
        "samples": "loads more samples than Prometheus allows (--query.max-samples)",
        "series": f"returns more than {policy.max_series} series",
    }.get(exc.what, "is too expensive")
    return Condition(
        FLOOR_ACTIVE,
        False,
        "QueryTooExpensive",
        f"spec.autoscaling.floor.query {why}; the floor is held. Aggregate it to one series "
        "(e.g. max(...)), shorten its ranges, or remove the field to use Triton's queue series",
    )


def _active_message(decision: FloorDecision) -> str:
    acc = decision.accounting
    notes = {
        PrewarmState.GATED: "; pre-warm paused (its recent predictions did not come true)",
        PrewarmState.NO_HISTORY: (
            f"; pre-warm waits for arrival history on each of the last "
            f"{PREWARM_HISTORY_PERIODS} periods"
        ),
        PrewarmState.UNSIZED: "; pre-warm waits for a measured service time",
    }
    # Stable while the decision's kind is: live figures would rewrite status every interval
    # (they are in status.floorAccounting, the metrics, and the events of each change).
    return (
        f"floor {decision.floor} ({decision.reason.value}); figures in status.floorAccounting"
        + notes.get(acc.prewarm, "")
    )


def _age_seconds(body: Mapping[str, Any], now: float) -> float | None:
    created = _parse_time((body.get("metadata") or {}).get("creationTimestamp"))
    return None if created is None else now - created


def _prewarm_problem(
    ccs: ClaudeCodeService,
    body: Mapping[str, Any],
    decision: FloorDecision,
    reading: Reading,
    now: float,
) -> Condition | None:
    """Pre-warm is on, old enough to have history, Triton's series are there now, and yet
    Prometheus holds no history: pre-warm is blind, and says so with the fix."""
    prewarm = ccs.spec.autoscaling.floor.prewarm
    if decision.accounting.prewarm != PrewarmState.NO_HISTORY or reading.signals is None:
        return None
    if reading.signals.arrival_rps is None:
        return None
    needed = PREWARM_HISTORY_PERIODS * prewarm.period_seconds + PREWARM_SLACK_SECONDS
    age = _age_seconds(body, now)
    if age is None or age < needed:
        return None
    days = needed / 86_400
    return Condition(
        METRICS_AVAILABLE,
        False,
        "PrewarmHistoryMissing",
        f"pre-warm is on but Prometheus has no arrival history for {ccs.namespace}/"
        f"{ccs.name} one and two periods ago ({arrival_rate_query()} with offset); keep "
        f"Prometheus retention above {math.ceil(days)}d. The floor runs without pre-warm",
    )


def _round(value: float | None, digits: int) -> float | None:
    """`digits` significant digits: status shows figures, not noise."""
    if value is None or not math.isfinite(value):
        return None
    if value == 0:
        return 0.0
    return float(f"{value:.{digits}g}")


def accounting_status(acc: FloorAccounting) -> dict[str, Any]:
    """status.floorAccounting: coarse enough that it changes only when the figures do."""
    out: dict[str, Any] = {
        "serviceTimeMs": _round(acc.service_seconds and acc.service_seconds * 1000, 2),
        "capacityPerReplicaRps": _round(acc.capacity_rps, 2),
        "plannedUtilizationPercent": _round(
            acc.planned_utilisation and acc.planned_utilisation * 100, 2
        ),
        "forecastRps": _round(acc.forecast_rps, 2),
        "forecastErrorPercent": _round(acc.forecast_error and acc.forecast_error * 100, 1),
        "headroomPercent": round(acc.headroom * 100),
        "modelCorrection": _round(acc.correction, 2),
        "utilizationGain": _round(acc.utilisation_gain, 2),
        "replicaHoursAboveHpa": _round(acc.replica_hours_above_hpa, 2),
        "breachMinutes": _round(acc.breach_minutes, 2),
        "prewarm": acc.prewarm.value,
        "prewarmHitPercent": _round(acc.prewarm_hit_rate and acc.prewarm_hit_rate * 100, 2),
    }
    return {k: v for k, v in out.items() if v is not None}


def _no_series(ccs: ClaudeCodeService, window: str) -> Condition:
    """One sentence for status; the query itself goes to the log."""
    query = p99_queue_latency_query({"namespace": ccs.namespace, "service": ccs.name})
    log.info("no queue series for %s/%s over %s; query: %s", ccs.namespace, ccs.name, window, query)
    where = (
        f"ServiceMonitor {ccs.name}"
        if ccs.spec.monitoring.service_monitor
        else "a scrape job for its pods (spec.monitoring.serviceMonitor is off)"
    )
    return Condition(
        FLOOR_ACTIVE,
        False,
        "NoData",
        f"Prometheus has no nv_inference_queue series for {ccs.namespace}/{ccs.name}; the "
        f"floor is held; check that Prometheus selects {where} and scrapes port metrics",
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


def _external_metric_unavailable(ccs: ClaudeCodeService, error: str) -> Condition:
    """The API is registered, but whatever serves it does not answer."""
    return Condition(
        METRICS_AVAILABLE,
        False,
        "ExternalMetricsAPIUnavailable",
        f"the HPA scales on the External metric {EXTERNAL_RPS_METRIC}{{service={ccs.name}}}, "
        "but the adapter registered for external.metrics.k8s.io does not answer "
        f"({error[:200]}); check `kubectl get apiservice v1beta1.external.metrics.k8s.io` "
        "and the adapter's pods",
    )


def _metrics_available(
    ccs: ClaudeCodeService,
    reading: Reading,
    external_problem: Condition | None,
    conditions: Any,
    prewarm_problem: Condition | None = None,
    *,
    asleep: bool = False,
) -> Condition:
    """MetricsAvailable: do the series the floor and the HPA depend on exist for this ccs?"""
    problems: list[Condition] = []
    if asleep and external_problem is None and prewarm_problem is None:
        return Condition(
            METRICS_AVAILABLE,
            None,
            "ScaledToZero",
            "no replica runs (scaled to zero), so Triton's series are absent by design; "
            "they are checked again once a replica runs",
        )
    if _active(ccs) and reading.problem is not None:
        if reading.problem.reason in OVERRIDE_PROBLEMS:
            return Condition(
                METRICS_AVAILABLE, False, reading.problem.reason, reading.problem.message
            )
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
    if prewarm_problem is not None:
        problems.append(prewarm_problem)
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
        sources.append(
            "KEDA's requests-per-second trigger (Prometheus)"
            if ccs.spec.autoscaling.engine == "KEDA"
            else f"the HPA's External metric {EXTERNAL_RPS_METRIC}"
        )
    return Condition(
        METRICS_AVAILABLE,
        True,
        "MetricsPresent" if sources else "NotRequired",
        ("present: " + ", ".join(sources)) if sources else "no metric is needed by this spec",
    )
