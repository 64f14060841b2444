"""The floor loop with fake collaborators: wiring from Prometheus' signals to status.

The fakes record what the loop writes; the policy itself is tested in test_floor.py.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import pytest

from ccs_operator import metrics
from ccs_operator.controllers import floorloop
from ccs_operator.controllers.floorloop import ACCOUNTING_WRITE_SECONDS, FloorLoop
from ccs_operator.controllers.reconcile import ChildRecord
from ccs_operator.core.confine import ConfinedQuery, OverridePolicy
from ccs_operator.core.promql import (
    FloorSignals,
    PrometheusSettings,
    PrometheusUnavailable,
    QueryTooExpensive,
    QueueLatency,
)
from ccs_operator.core.status import FLOOR_STATUS
from fakekube import apply_status

T0 = 1_700_000_000.0


def body(name: str, floor_spec: dict[str, Any] | None = None, **status: Any) -> dict[str, Any]:
    return {
        "apiVersion": "serving.claudecode.io/v1alpha1",
        "kind": "ClaudeCodeService",
        "metadata": {
            "name": name,
            "namespace": "ns",
            "uid": f"uid-{name}",
            "generation": 1,
            "resourceVersion": "1",
            "creationTimestamp": "2023-11-01T00:00:00Z",
        },
        "spec": {
            "model": {"name": "m", "repository": "/models"},
            "replicas": {"min": 2, "max": 20},
            "autoscaling": {"requestsPerSecond": 0, "floor": floor_spec or {}},
            # One request per execution, as `serving` reports it (the M/M/c sizing).
            "batching": {"enabled": False},
        },
        "status": {"floor": 2, "readyReplicas": 2, **status},
    }


class FakeKube:
    def __init__(self, reconciler: FakeReconciler) -> None:
        self.reconciler = reconciler
        self.patches: list[tuple[str, dict[str, Any]]] = []

    async def apply_service_status(
        self, namespace: str, name: str, status: Mapping[str, Any], manager: str
    ) -> dict[str, Any]:
        assert manager == "ccs-operator-floor"
        self.patches.append((name, dict(status)))
        written = copy.deepcopy(self.reconciler.services[(namespace, name)])
        written["status"] = apply_status(written.get("status") or {}, status, FLOOR_STATUS)
        return written

    async def external_metric(self, *args: Any) -> list[Any]:
        return [{"value": "1"}]


class FakeReconciler:
    def __init__(self, *bodies: dict[str, Any]) -> None:
        self.services = {(b["metadata"]["namespace"], b["metadata"]["name"]): b for b in bodies}
        self.children: dict[tuple[str, str, str], ChildRecord] = {}
        self.kube = FakeKube(self)
        self.events: list[tuple[str, str, str]] = []
        self.enqueued: list[tuple[str, str]] = []
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}

    def lock(self, key: tuple[str, str]) -> asyncio.Lock:
        return self._locks.setdefault(key, asyncio.Lock())

    def remember_service(self, written: Mapping[str, Any]) -> None:
        meta = written["metadata"]
        self.services[(meta["namespace"], meta["name"])] = dict(written)

    def enqueue(self, key: tuple[str, str], delay: float = 0.2) -> None:
        self.enqueued.append(key)

    def post_event(self, body: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        self.events.append((body["metadata"]["name"], reason, message))


class FakePrometheus:
    def __init__(self) -> None:
        self.settings = PrometheusSettings("http://prometheus.test:9090")
        self.signals: dict[tuple[str, str], FloorSignals] = {}
        self.history: dict[tuple[str, str], float] = {}
        self.down = False
        self.history_queries: list[tuple[Any, ...]] = []
        self.override_calls: list[tuple[Any, ...]] = []
        self.override_error: Exception | None = None
        self.override_value = 5.0
        self.override_delay = 0.0

    def floor_signals_all(self, window: str) -> dict[Any, FloorSignals]:
        if self.down:
            raise PrometheusUnavailable("http://prometheus.test:9090: connection refused")
        return dict(self.signals)

    def prewarm_history_all(self, period: int, lead: int, **kwargs: Any) -> dict[Any, float]:
        self.history_queries.append((period, lead, kwargs))
        return dict(self.history)

    def queue_latency(self, *args: Any, **kwargs: Any) -> QueueLatency:
        self.override_calls.append((args, kwargs))
        if self.override_delay:
            time.sleep(self.override_delay)
        if self.override_error is not None:
            raise self.override_error
        return QueueLatency(self.override_value)


def serving(rate: float, latency_ms: float = 5.0) -> FloorSignals:
    return FloorSignals(QueueLatency(latency_ms, latency_ms), rate, rate * 0.02, 0.0)


def make(
    *bodies: dict[str, Any], overrides: OverridePolicy | None = None
) -> tuple[FloorLoop, FakeReconciler, FakePrometheus, list[float]]:
    reconciler = FakeReconciler(*bodies)
    prometheus = FakePrometheus()
    clock = [T0]
    loop = FloorLoop(
        reconciler,
        prometheus,  # type: ignore[arg-type]
        clock=lambda: clock[0],
        overrides=overrides,
    )
    return loop, reconciler, prometheus, clock


def status(reconciler: FakeReconciler, name: str) -> dict[str, Any]:
    return reconciler.services[("ns", name)]["status"]


def condition(reconciler: FakeReconciler, name: str, type_: str) -> dict[str, Any]:
    return next(c for c in status(reconciler, name)["conditions"] if c["type"] == type_)


@pytest.mark.asyncio
async def test_leading_signals_raise_the_floor_and_account_for_it() -> None:
    loop, reconciler, prometheus, clock = make(body("svc"))
    prometheus.signals[("ns", "svc")] = serving(300.0)
    for _ in range(3):
        await loop.tick()
        clock[0] += 30
    st = status(reconciler, "svc")
    assert st["floor"] == 6
    assert [h["reason"] for h in st["scalingHistory"]] == ["DemandForecast"] * 2
    assert reconciler.enqueued  # the reconcile renders the new minReplicas
    acc = st["floorAccounting"]
    assert acc["serviceTimeMs"] == 20.0 and acc["prewarm"] == "Off"
    assert 50 <= acc["capacityPerReplicaRps"] < 60 and acc["modelCorrection"] == 1.0
    assert condition(reconciler, "svc", "FloorControllerActive")["status"] == "True"
    assert any(reason == "FloorRaised" for _, reason, _ in reconciler.events)


@pytest.mark.asyncio
async def test_one_services_failure_never_stops_anothers(monkeypatch: pytest.MonkeyPatch) -> None:
    loop, reconciler, prometheus, _ = make(body("good"), body("bad"))
    for name in ("good", "bad"):
        prometheus.signals[("ns", name)] = serving(300.0)
    real = floorloop.decide

    def flaky(policy: Any, state: Any, observation: Any) -> Any:
        if policy.max_replicas == 20 and observation.hpa_replicas == -1:
            raise RuntimeError("boom")
        return real(policy, state, observation)

    monkeypatch.setattr(floorloop, "decide", flaky)
    monkeypatch.setattr(
        loop,
        "_hpa_alone",
        lambda ccs: -1 if ccs.name == "bad" else None,  # only "bad" hits the failure
    )
    before = metrics.FLOOR_ERRORS._value.get()
    assert await loop.tick() == 2
    assert status(reconciler, "good")["floor"] == 4
    assert status(reconciler, "bad")["floor"] == 2  # held
    assert metrics.FLOOR_ERRORS._value.get() == before + 1


@pytest.mark.asyncio
async def test_an_invalid_spec_is_skipped_and_the_others_go_on() -> None:
    bad = body("bad", {"prewarm": {"enabled": True, "leadTimeSeconds": 0}})
    loop, reconciler, prometheus, _ = make(body("good"), bad)
    prometheus.signals[("ns", "good")] = serving(300.0)
    assert await loop.tick() == 1
    assert status(reconciler, "good")["floor"] == 4


@pytest.mark.asyncio
async def test_prometheus_down_holds_with_a_short_message() -> None:
    loop, reconciler, prometheus, _ = make(body("svc", floor=6))
    prometheus.down = True
    await loop.tick()
    active = condition(reconciler, "svc", "FloorControllerActive")
    assert (active["status"], active["reason"]) == ("False", "PrometheusUnavailable")
    assert "http://prometheus.test:9090" in active["message"]
    assert len(active["message"]) < 160
    assert status(reconciler, "svc")["floor"] == 6


@pytest.mark.asyncio
async def test_prewarm_blind_says_so_with_the_fix() -> None:
    spec = {"prewarm": {"enabled": True}}
    loop, reconciler, prometheus, _ = make(body("old", spec))
    prometheus.signals[("ns", "old")] = serving(100.0)
    await loop.tick()
    available = condition(reconciler, "old", "MetricsAvailable")
    assert (available["status"], available["reason"]) == ("False", "PrewarmHistoryMissing")
    assert "retention" in available["message"]
    assert status(reconciler, "old")["floorAccounting"]["prewarm"] == "NoHistory"
    # The history query asks for two periods with the slack around the lead time.
    period, lead, kwargs = prometheus.history_queries[0]
    assert (period, lead) == (86_400, 300)
    assert kwargs["periods"] == 2 and kwargs["slack_seconds"] > 0


@pytest.mark.asyncio
async def test_prewarm_young_service_is_learning_not_blind() -> None:
    young = body("young", {"prewarm": {"enabled": True}})
    young["metadata"]["creationTimestamp"] = "2023-11-14T21:00:00Z"  # an hour before T0
    loop, reconciler, prometheus, _ = make(young)
    prometheus.signals[("ns", "young")] = serving(100.0)
    await loop.tick()
    assert condition(reconciler, "young", "MetricsAvailable")["status"] == "True"
    assert (
        "pre-warm waits for arrival history"
        in condition(reconciler, "young", "FloorControllerActive")["message"]
    )


@pytest.mark.asyncio
async def test_prewarm_history_raises_the_floor_ahead() -> None:
    loop, reconciler, prometheus, clock = make(body("svc", {"prewarm": {"enabled": True}}))
    prometheus.signals[("ns", "svc")] = serving(100.0)
    prometheus.history[("ns", "svc")] = 6.0  # the last two days rose 6x from here
    for _ in range(4):
        await loop.tick()
        clock[0] += 30
    st = status(reconciler, "svc")
    assert st["scalingHistory"][0]["reason"] == "PrewarmForRecurringPeak" and st["floor"] >= 8
    assert st["floorAccounting"]["prewarm"] == "Active"


@pytest.mark.asyncio
async def test_accounting_alone_is_written_at_most_every_few_minutes() -> None:
    loop, reconciler, prometheus, clock = make(body("svc"))
    # A mean queue wait (no p99): the utilisation gain learns nothing, the plan stays put.
    mean_only = QueueLatency(5.0, None)
    prometheus.signals[("ns", "svc")] = dataclasses.replace(serving(300.0), latency=mean_only)
    for _ in range(4):  # settle the floor
        await loop.tick()
        clock[0] += 30
    reconciler.kube.patches.clear()
    for i in range(20):  # 10 minutes of a wobbling rate that never moves the floor
        prometheus.signals[("ns", "svc")] = dataclasses.replace(
            serving(270.0 + (i % 2) * 10), latency=mean_only
        )
        await loop.tick()
        clock[0] += 30
    # Each write carries the writer's whole part of status: count those that moved the
    # accounting without the floor or a condition moving with it.
    written = [p for _, p in reconciler.kube.patches]
    accounting_only = [
        now
        for before, now in zip([{}, *written], written, strict=False)
        if now.get("floorAccounting") != before.get("floorAccounting")
        and now.get("floorReason") == before.get("floorReason")
        and now.get("conditions") == before.get("conditions")
    ]
    assert 1 <= len(accounting_only) <= 600 / ACCOUNTING_WRITE_SECONDS + 1
    assert len({p["floor"] for p in written}) == 1  # the floor itself never moved


@pytest.mark.asyncio
async def test_deleted_services_leave_no_memory() -> None:
    loop, reconciler, prometheus, _ = make(body("svc"))
    prometheus.signals[("ns", "svc")] = serving(300.0)
    await loop.tick()
    assert ("ns", "svc") in loop.memory
    del reconciler.services[("ns", "svc")]
    await loop.tick()
    assert ("ns", "svc") not in loop.memory


def test_accounting_matches_the_crd_schema() -> None:
    """What the loop writes to status.floorAccounting is what the CRD accepts."""
    from pathlib import Path

    import yaml

    from ccs_operator.controllers.floorloop import accounting_status
    from ccs_operator.core.floor import FloorAccounting, PrewarmState

    crd = yaml.safe_load(
        (Path(__file__).resolve().parent.parent / "crds" / "claudecodeservices.yaml").read_text()
    )
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    properties = schema["properties"]["status"]["properties"]["floorAccounting"]["properties"]
    for state in PrewarmState:
        written = accounting_status(
            FloorAccounting(0.02, 62.0, 0.62, 300.0, 0.1, 0.25, 1.2, 3.0, 1.5, 0.5, state, 0.75)
        )
        assert set(written) <= set(properties)
        assert written["prewarm"] in properties["prewarm"]["enum"], properties["prewarm"]
        for key, value in written.items():
            expected = {"number": (int, float), "string": str}[properties[key]["type"]]
            assert isinstance(value, expected), (key, value)


def test_the_no_series_condition_is_one_short_sentence_naming_the_fix() -> None:
    from ccs_operator.core.api import parse_service

    from helpers import minimal_service

    ccs = parse_service(minimal_service("svc"))
    condition = floorloop._no_series(ccs, "1m")
    assert condition.reason == "NoData" and condition.status is False
    message = condition.message
    assert len(message) < 200, message
    assert "{" not in message  # the query goes to the log, not into status
    assert "ns/svc" in message and "ServiceMonitor svc" in message


@pytest.mark.asyncio
async def test_an_adapter_installed_later_shows_within_the_recheck_not_the_long_period() -> None:
    served = body("rps", None)
    served["spec"]["autoscaling"]["requestsPerSecond"] = 10
    loop, reconciler, prometheus, clock = make(served)
    prometheus.signals[("ns", "rps")] = serving(5.0)
    answers: list[list[Any] | None] = [None]  # no adapter serves external.metrics.k8s.io yet

    async def external_metric(*args: Any) -> list[Any] | None:
        return answers[-1]

    reconciler.kube.external_metric = external_metric  # type: ignore[method-assign]
    await loop.tick()
    assert condition(reconciler, "rps", "MetricsAvailable")["reason"] == "ExternalMetricsAPIMissing"
    answers.append([{"value": "5"}])  # the adapter is installed
    clock[0] += floorloop.EXTERNAL_METRIC_RECHECK_SECONDS + 30
    await loop.tick()
    assert condition(reconciler, "rps", "MetricsAvailable")["status"] == "True"
    # Once served, the long period applies: a later outage is noticed only after it.
    answers.append(None)
    clock[0] += 30
    await loop.tick()
    assert condition(reconciler, "rps", "MetricsAvailable")["status"] == "True"
    clock[0] += floorloop.EXTERNAL_METRIC_CHECK_SECONDS
    await loop.tick()
    assert condition(reconciler, "rps", "MetricsAvailable")["status"] == "False"


@pytest.mark.asyncio
async def test_an_adapter_that_stops_answering_is_unavailable_not_present() -> None:
    served = body("rps", None)
    served["spec"]["autoscaling"]["requestsPerSecond"] = 10
    loop, reconciler, prometheus, clock = make(served)
    prometheus.signals[("ns", "rps")] = serving(5.0)
    await loop.tick()
    assert condition(reconciler, "rps", "MetricsAvailable")["status"] == "True"
    errors: list[Exception] = [
        floorloop.Transient("GET /apis/external.metrics.k8s.io/...: service unavailable", 503)
    ]

    async def external_metric(*args: Any) -> list[Any]:
        if errors:
            raise errors[-1]
        return [{"value": "5"}]

    reconciler.kube.external_metric = external_metric  # type: ignore[method-assign]
    clock[0] += floorloop.EXTERNAL_METRIC_CHECK_SECONDS + 30
    await loop.tick()
    unavailable = condition(reconciler, "rps", "MetricsAvailable")
    assert (unavailable["status"], unavailable["reason"]) == (
        "False",
        "ExternalMetricsAPIUnavailable",
    )
    assert "kubectl get apiservice" in unavailable["message"]
    # The API server itself timing out says nothing about the adapter: the state is kept.
    errors.append(floorloop.Transient("GET ...: timeout", 504))
    clock[0] += 30
    await loop.tick()
    assert condition(reconciler, "rps", "MetricsAvailable")["reason"] == (
        "ExternalMetricsAPIUnavailable"
    )
    errors.clear()  # the adapter answers again, and is asked at the next evaluation
    clock[0] += 30
    await loop.tick()
    assert condition(reconciler, "rps", "MetricsAvailable")["status"] == "True"
ALLOWED = OverridePolicy(mode="allowed", timeout_seconds=1.5, max_series=7)
LEGIT = "max(nv_inference_queue_summary_us{quantile=\"0.99\"}) / 1e3"
FOREIGN = 'sum(process_resident_memory_bytes{namespace="other-tenant"}) / 1e6'


def override_problem(reconciler: FakeReconciler, name: str, reason: str) -> str:
    active = condition(reconciler, name, "FloorControllerActive")
    available = condition(reconciler, name, "MetricsAvailable")
    assert (active["status"], active["reason"]) == ("False", reason), active
    assert (available["status"], available["reason"]) == ("False", reason), available
    assert "spec.autoscaling.floor.query" in active["message"]
    events = [(n, r) for n, r, _ in reconciler.events if r == reason]
    assert events == [(name, reason)], reconciler.events  # one event, not one per condition
    return str(active["message"])


@pytest.mark.asyncio
async def test_overrides_are_off_by_default_and_hold_only_their_own_floor() -> None:
    loop, reconciler, prometheus, _ = make(
        body("over", {"query": LEGIT}, floor=5), body("plain")
    )
    prometheus.signals[("ns", "plain")] = serving(300.0)
    await loop.tick()
    message = override_problem(reconciler, "over", "QueryOverrideDisabled")
    assert "CCS_QUERY_OVERRIDES=disabled" in message and "Remove the field" in message
    assert prometheus.override_calls == []  # nothing was sent
    assert status(reconciler, "over")["floor"] == 5  # held
    assert status(reconciler, "plain")["floor"] == 4  # the other service goes on


@pytest.mark.asyncio
async def test_overrides_only_in_listed_namespaces() -> None:
    listed = OverridePolicy(mode="namespaces", namespaces=frozenset({"team-a"}))
    loop, reconciler, prometheus, _ = make(body("over", {"query": LEGIT}), overrides=listed)
    await loop.tick()
    assert "does not list ns" in override_problem(reconciler, "over", "QueryOverrideDisabled")
    assert prometheus.override_calls == []
    listed = OverridePolicy(mode="namespaces", namespaces=frozenset({"ns"}))
    loop, reconciler, prometheus, _ = make(body("over", {"query": LEGIT}), overrides=listed)
    await loop.tick()
    assert len(prometheus.override_calls) == 1


@pytest.mark.asyncio
async def test_a_foreign_query_is_refused_and_never_sent() -> None:
    loop, reconciler, prometheus, _ = make(
        body("over", {"query": FOREIGN}, floor=5), overrides=ALLOWED
    )
    await loop.tick()
    message = override_problem(reconciler, "over", "QueryRefused")
    assert 'namespace="other-tenant"' in message and "namespace={namespace}" in message
    assert prometheus.override_calls == []
    assert status(reconciler, "over")["floor"] == 5
    assert "queueLatencyMs" not in status(reconciler, "over")


@pytest.mark.asyncio
async def test_a_legitimate_override_is_sent_confined_with_its_budget() -> None:
    loop, reconciler, prometheus, _ = make(body("over", {"query": LEGIT}), overrides=ALLOWED)
    prometheus.override_value = 42.0
    await loop.tick()
    [(args, kwargs)] = prometheus.override_calls
    assert args == ("ns", "over")
    query: ConfinedQuery = kwargs["query"]
    assert (query.namespace, query.service) == ("ns", "over")
    assert 'namespace="ns"' in query.promql and 'service="over"' in query.promql
    assert kwargs["timeout_seconds"] == 1.5 and kwargs["max_series"] == 7
    assert status(reconciler, "over")["queueLatencyMs"] == 42.0
    assert condition(reconciler, "over", "FloorControllerActive")["status"] == "True"


@pytest.mark.asyncio
async def test_at_most_one_override_query_per_service_per_interval() -> None:
    loop, _, prometheus, clock = make(body("over", {"query": LEGIT}), overrides=ALLOWED)
    await loop.tick()
    # Whatever makes the loop evaluate again inside the same interval, nothing is re-sent.
    loop.memory[("ns", "over")].next_due = 0.0
    clock[0] += 5  # T0 is 20 s into its 30 s interval
    await loop.tick()
    assert len(prometheus.override_calls) == 1
    clock[0] += 30
    await loop.tick()
    assert len(prometheus.override_calls) == 2


@pytest.mark.asyncio
async def test_overrides_run_side_by_side() -> None:
    names = [f"s{i}" for i in range(4)]
    loop, _, prometheus, _ = make(*(body(n, {"query": LEGIT}) for n in names), overrides=ALLOWED)
    prometheus.override_delay = 0.4
    started = time.perf_counter()
    await loop.tick()
    assert len(prometheus.override_calls) == 4
    assert time.perf_counter() - started < 1.2  # not 4 x 0.4 s one after another


@pytest.mark.parametrize(
    ("what", "words"),
    [("slow", "longer than its 1.5s budget"), ("series", "more than 7 series"),
     ("samples", "more samples")],
)
@pytest.mark.asyncio
async def test_an_expensive_override_says_so(what: str, words: str) -> None:
    loop, reconciler, prometheus, _ = make(
        body("over", {"query": LEGIT}, floor=5), overrides=ALLOWED
    )
    prometheus.override_error = QueryTooExpensive("too much", what)
    await loop.tick()
    message = override_problem(reconciler, "over", "QueryTooExpensive")
    assert words in message and "max(...)" in message
    assert status(reconciler, "over")["floor"] == 5


@pytest.mark.asyncio
async def test_a_restarted_loop_spreads_the_accounting_refresh_over_one_period() -> None:
    names = [f"svc-{i:02d}" for i in range(20)]
    loop, reconciler, prometheus, clock = make(*(body(n) for n in names))
    mean_only = QueueLatency(5.0, None)
    for n in names:
        prometheus.signals[("ns", n)] = dataclasses.replace(serving(300.0), latency=mean_only)
    for _ in range(4):  # settled, accounting stored for every service
        await loop.tick()
        clock[0] += 30
    assert all("floorAccounting" in status(reconciler, n) for n in names)
    # A new process: nothing of the loop's memory survives, the stored status does.
    loop = FloorLoop(reconciler, prometheus, clock=lambda: clock[0])  # type: ignore[arg-type]
    reconciler.kube.patches.clear()
    writes_at: dict[str, list[float]] = {n: [] for n in names}
    start = clock[0]
    # One period (and one evaluation interval) of a wobbling rate
    for i in range(int((ACCOUNTING_WRITE_SECONDS + 30) // 10)):
        for n in names:  # that never moves the floor (6 replicas either way)
            prometheus.signals[("ns", n)] = dataclasses.replace(
                serving(295.0 + (i % 2) * 10), latency=mean_only
            )
        before = len(reconciler.kube.patches)
        await loop.tick()
        for name, _ in reconciler.kube.patches[before:]:
            writes_at[name].append(clock[0] - start)
        clock[0] += 10
    first = [w[0] for w in writes_at.values() if w]
    # Nothing rewritten in the first interval; every service refreshed once in the period
    # (and the interval it is evaluated in), at times spread across it.
    assert min(first) > 10
    assert sorted(len(w) for w in writes_at.values()) == [1] * len(names)
    assert {status(reconciler, n)["floor"] for n in names} == {6}
    assert max(first) - min(first) > ACCOUNTING_WRITE_SECONDS / 2


@pytest.mark.asyncio
async def test_a_restarted_loop_holds_the_floor_it_finds_for_a_cooldown() -> None:
    """A new process finds floor 6 in status (raised a minute ago) under a load that needs
    2: it holds 6 for a cool-down, as the loop that raised it would have, then lowers."""
    changed = datetime.fromtimestamp(T0 - 60, UTC).isoformat().replace("+00:00", "Z")
    loop, reconciler, prometheus, clock = make(
        body("svc", floor=6, readyReplicas=6, floorLastChangeTime=changed)
    )
    prometheus.signals[("ns", "svc")] = serving(20.0)
    floors = []
    for _ in range(14):
        await loop.tick()
        floors.append(status(reconciler, "svc")["floor"])
        clock[0] += 30
    held = floors.index(min(floors))
    assert min(floors) == 2, floors  # positive control: it does lower
    assert held * 30 >= 300 - 30 and floors[:held] == [6] * held, floors
