"""The autoscaling engines: HPA (default) or KEDA's ScaledObject, rendered by one pure path
with the floor as the minimum; the switch between them leaves exactly one autoscaler; KEDA's
CRD absent applies nothing; scale to zero renders 0 and reports ScaledToZero.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ccs_operator.config import OperatorConfig
from ccs_operator.controllers.reconcile import Reconciler
from ccs_operator.controllers.workqueue import Backoff, WorkQueue
from ccs_operator.core.api import SpecError, parse_service, parse_spec
from ccs_operator.core.render import (
    KEDA_EXCLUDED_LABELS_ANNOTATION,
    RenderSettings,
    autoscaler_min_replicas,
    autoscaling_behavior,
    render_children,
    requests_per_second_query,
)
from ccs_operator.core.status import build_status, scaled_to_zero_condition
from fakekube import FakeKube

from helpers import apply_structural_defaults, crd_schema, minimal_service

NS = "ns"
PROM = "http://prometheus.example:9090"


def _kinds(ccs: Any, **kwargs: Any) -> dict[str, dict[str, Any]]:
    return {m["kind"]: m for m in render_children(ccs, **kwargs)}


def keda(**spec: Any) -> Any:
    autoscaling = {"engine": "KEDA", **spec.pop("autoscaling", {})}
    return parse_service(minimal_service(autoscaling=autoscaling, **spec))


# --- the spec -----------------------------------------------------------------------------


def test_engine_defaults_to_hpa_as_the_crd_does() -> None:
    assert parse_service(minimal_service()).spec.autoscaling.engine == "HPA"
    body = minimal_service(autoscaling={"engine": "KEDA"})
    defaulted = apply_structural_defaults(crd_schema()["properties"]["spec"], body["spec"])
    assert parse_spec(defaulted) == parse_spec(body["spec"])
    assert defaulted["autoscaling"]["activationRequestsPerSecond"] == 0


@pytest.mark.parametrize(
    ("spec", "path", "words"),
    [
        ({"autoscaling": {"engine": "Keda"}}, "spec.autoscaling.engine", "'HPA' or 'KEDA'"),
        (
            {"replicas": {"min": 0, "max": 3}, "autoscaling": {"requestsPerSecond": 0}},
            "spec",
            "set autoscaling.requestsPerSecond above 0",
        ),
        (
            {
                "replicas": {"min": 0, "max": 3},
                "autoscaling": {"engine": "KEDA", "requestsPerSecond": 0},
            },
            "spec",
            "raise replicas.min to 1",
        ),
        (
            {"autoscaling": {"engine": "KEDA", "requestsPerSecond": 0, "cpuUtilization": 0}},
            "spec.autoscaling",
            "needs at least one trigger",
        ),
        (
            {"autoscaling": {"activationRequestsPerSecond": -1}},
            "spec.autoscaling.activationRequestsPerSecond",
            "greater than or equal to 0",
        ),
    ],
)
def test_bad_autoscaling_specs_name_the_field(spec: dict[str, Any], path: str, words: str) -> None:
    with pytest.raises(SpecError) as err:
        parse_service(minimal_service(**spec))
    assert err.value.path == path
    assert words in err.value.message


# --- rendering ----------------------------------------------------------------------------


def test_hpa_engine_renders_an_hpa_and_no_scaled_object() -> None:
    children = _kinds(parse_service(minimal_service()))
    assert "HorizontalPodAutoscaler" in children and "ScaledObject" not in children


def test_keda_engine_renders_a_scaled_object_instead_of_an_hpa() -> None:
    ccs = keda(replicas={"min": 2, "max": 7}, autoscaling={"requestsPerSecond": 250})
    children = render_children(ccs, floor=4, settings=RenderSettings(prometheus_url=PROM))
    assert [m["kind"] for m in children] == [
        "ConfigMap", "Deployment", "Service", "ScaledObject", "ServiceMonitor",
    ]
    scaled = children[3]
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    assert scaled["metadata"]["name"] == "svc"
    # KEDA copies the labels to the HPA it creates: that HPA is KEDA's, not ours.
    assert scaled["metadata"]["annotations"] == {
        KEDA_EXCLUDED_LABELS_ANNOTATION: "app.kubernetes.io/managed-by"
    }
    spec = scaled["spec"]
    assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "svc"}
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (4, 7)
    assert spec["cooldownPeriod"] == 300
    assert spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"] == (
        autoscaling_behavior(ccs.spec)
    )
    rps, cpu = spec["triggers"]
    assert rps == {
        "type": "prometheus",
        "name": "requests-per-second",
        "metricType": "AverageValue",
        "metadata": {
            "serverAddress": PROM,
            "query": requests_per_second_query(ccs),
            "threshold": "250",
            "activationThreshold": "0",
            "ignoreNullValues": "true",
        },
    }
    assert cpu == {
        "type": "cpu", "name": "cpu", "metricType": "Utilization", "metadata": {"value": "60"},
    }
    # KEDA's metadata values are strings, everywhere.
    assert all(isinstance(v, str) for t in spec["triggers"] for v in t["metadata"].values())


def test_the_rps_query_counts_successes_and_failures_of_this_service_only() -> None:
    query = requests_per_second_query(keda())
    assert query == (
        'sum(rate(nv_inference_request_success{namespace="ns", service="svc"}[1m]))'
        ' + (sum(rate(nv_inference_request_failure{namespace="ns", service="svc"}[1m]))'
        " or vector(0))"
    )
    windowed = render_children(keda(), settings=RenderSettings(rate_window="2m"))
    (scaled,) = [m for m in windowed if m["kind"] == "ScaledObject"]
    assert "[2m]" in scaled["spec"]["triggers"][0]["metadata"]["query"]


def test_cpu_trigger_only_where_set_and_latency_trigger_only_without_the_floor() -> None:
    def triggers(**autoscaling: Any) -> list[str]:
        (scaled,) = [
            m for m in render_children(keda(autoscaling=autoscaling)) if m["kind"] == "ScaledObject"
        ]
        return [t["name"] for t in scaled["spec"]["triggers"]]

    assert triggers() == ["requests-per-second", "cpu"]
    assert triggers(cpuUtilization=0) == ["requests-per-second"]
    assert triggers(requestsPerSecond=0) == ["cpu"]
    off = {"floor": {"enabled": False, "queueLatencyTargetMs": 80}}
    assert triggers(**off) == ["requests-per-second", "cpu", "queue-latency"]
    (scaled,) = [m for m in render_children(keda(autoscaling=off)) if m["kind"] == "ScaledObject"]
    latency = scaled["spec"]["triggers"][2]
    assert latency["metricType"] == "Value"  # replicas in proportion to the wait
    assert latency["metadata"]["threshold"] == "80"
    assert 'quantile="0.99"' in latency["metadata"]["query"]


def test_trigger_authentication_from_the_operator_settings() -> None:
    config = OperatorConfig.from_env(
        {"CCS_PROMETHEUS_URL": PROM, "CCS_KEDA_TRIGGER_AUTHENTICATION": "prometheus-token"}
    )
    settings = config.render_settings()
    assert settings.prometheus_url == PROM and settings.rate_window == config.floor_window
    children = render_children(keda(), settings=settings)
    (scaled,) = [m for m in children if m["kind"] == "ScaledObject"]
    for trigger in scaled["spec"]["triggers"]:
        if trigger["type"] == "prometheus":
            assert trigger["metadata"]["serverAddress"] == PROM
            assert trigger["authenticationRef"] == {
                "name": "prometheus-token", "kind": "ClusterTriggerAuthentication",
            }
        else:
            assert "authenticationRef" not in trigger


def test_scale_to_zero_in_keda_mode_renders_zero_and_the_activation_threshold() -> None:
    ccs = keda(replicas={"min": 0, "max": 3}, autoscaling={"activationRequestsPerSecond": 2})
    scaled = _kinds(ccs, floor=0)["ScaledObject"]["spec"]
    assert scaled["minReplicaCount"] == 0
    assert scaled["triggers"][0]["metadata"]["activationThreshold"] == "2"
    assert _kinds(ccs, floor=2)["ScaledObject"]["spec"]["minReplicaCount"] == 2  # woken


@settings(max_examples=150, deadline=None)
@given(
    st.integers(0, 20), st.integers(1, 40), st.one_of(st.none(), st.integers(0, 60)), st.booleans()
)
def test_both_engines_carry_the_same_floor(
    low: int, high: int, floor: int | None, floor_on: bool
) -> None:
    """One render path: the HPA's minReplicas and the ScaledObject's minReplicaCount are the
    same number for the same spec and floor, and the other children are identical (a switch
    of engine rolls no pod)."""
    low, high = min(low, high), max(low, high)
    spec = {
        "replicas": {"min": low, "max": high},
        "autoscaling": {"floor": {"enabled": floor_on}},
    }
    hpa_mode = parse_service(minimal_service(**copy.deepcopy(spec)))
    keda_spec = copy.deepcopy(spec)
    keda_spec["autoscaling"]["engine"] = "KEDA"
    keda_mode = parse_service(minimal_service(**keda_spec))
    hpa = render_children(hpa_mode, floor=floor)
    scaled = render_children(keda_mode, floor=floor)
    want = autoscaler_min_replicas(hpa_mode.spec, floor)
    assert hpa[3]["spec"]["minReplicas"] == scaled[3]["spec"]["minReplicaCount"] == want
    assert hpa[3]["spec"]["maxReplicas"] == scaled[3]["spec"]["maxReplicaCount"] == high
    assert hpa[:3] == scaled[:3] and hpa[4:] == scaled[4:]


# --- status: ScaledToZero -----------------------------------------------------------------


def _deployment(replicas: int, generation: int = 2, observed: int = 2) -> dict[str, Any]:
    return {
        "metadata": {"generation": generation},
        "status": {
            "observedGeneration": observed,
            "replicas": replicas,
            "readyReplicas": replicas,
            "updatedReplicas": replicas,
        },
    }


def test_scaled_to_zero_condition() -> None:
    zero = scaled_to_zero_condition(_deployment(0), minimum=0)
    assert (zero.status, zero.reason) == (True, "ScaledToZero")
    waking = scaled_to_zero_condition(_deployment(0), minimum=2)
    assert (waking.status, waking.reason) == (False, "Waking")
    serving = scaled_to_zero_condition(_deployment(3), minimum=0)
    assert (serving.status, serving.reason) == (False, "Serving")
    # The Deployment controller has not caught up yet: not zero by design (yet).
    assert scaled_to_zero_condition(_deployment(0, observed=1), minimum=0).status is False
    assert scaled_to_zero_condition(None, minimum=0).status is False


def test_status_of_a_service_at_zero_and_of_one_that_cannot_scale_to_zero() -> None:
    from datetime import UTC, datetime

    from ccs_operator.core.status import ApplyOutcome

    now = datetime(2026, 1, 1, tzinfo=UTC)
    kwargs = {"generation": 2, "outcome": ApplyOutcome(), "endpoint": {}, "now": now}
    at_zero = build_status({}, deployment=_deployment(0), zero_minimum=0, **kwargs)
    types = {c["type"]: c for c in at_zero["conditions"]}
    assert types["ScaledToZero"]["status"] == "True"
    assert (types["Ready"]["status"], types["Ready"]["reason"]) == ("False", "ScaledToZero")
    assert at_zero["phase"] == "ScaledToZero"
    # min raised to 1 afterwards: the condition goes away (not left behind as stale).
    later = build_status(at_zero, deployment=_deployment(1), zero_minimum=None, **kwargs)
    assert "ScaledToZero" not in {c["type"] for c in later["conditions"]}
    assert later["phase"] == "Ready"


# --- the controller: the switch, KEDA absent ----------------------------------------------


def service(name: str = "svc", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "serving.claudecode.io/v1alpha1",
        "kind": "ClaudeCodeService",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"model": {"name": "m", "repository": "/models"}, **spec},
    }


class Events:
    def __init__(self) -> None:
        self.posted: list[tuple[str, str, str]] = []

    def __call__(self, body: Any, type_: str, reason: str, message: str) -> None:
        self.posted.append((body["metadata"]["name"], reason, message))


def controller(kube: FakeKube | None = None) -> tuple[Reconciler, FakeKube, Events]:
    kube = kube or FakeKube()
    events = Events()
    reconciler = Reconciler(
        kube,  # type: ignore[arg-type]
        RenderSettings(prometheus_url=PROM),
        events,
        workers=1,
        queue=WorkQueue(Backoff(base=0.01, cap=0.2)),
    )
    reconciler.watched_kinds.update(
        {"ConfigMap", "Deployment", "Service", "HorizontalPodAutoscaler"}
    )
    return reconciler, kube, events


async def reconcile(reconciler: Reconciler, kube: FakeKube, name: str = "svc") -> dict[str, Any]:
    body = kube.service(NS, name)
    reconciler.remember_service(body)
    await reconciler.reconcile(body)
    return kube.service(NS, name)


def autoscalers(kube: FakeKube) -> set[str]:
    return {
        f"{kind}/{name}"
        for kind, ns, name in kube.objects
        if ns == NS and kind in ("HorizontalPodAutoscaler", "ScaledObject")
    }


def set_engine(kube: FakeKube, engine: str, name: str = "svc") -> None:
    live = kube.objects[("ClaudeCodeService", NS, name)]
    live["spec"].setdefault("autoscaling", {})["engine"] = engine
    live["metadata"]["generation"] += 1
    live["metadata"]["resourceVersion"] = str(int(live["metadata"]["resourceVersion"]) + 1000)


def condition(body: dict[str, Any], type_: str) -> dict[str, Any]:
    return next(c for c in body["status"]["conditions"] if c["type"] == type_)


@pytest.mark.asyncio
async def test_engine_switch_hpa_keda_hpa_leaves_exactly_one_autoscaler() -> None:
    reconciler, kube, events = controller()
    kube.scaledobjects_served = True
    kube.add_service(service())
    await reconcile(reconciler, kube)
    assert autoscalers(kube) == {"HorizontalPodAutoscaler/svc"}

    set_engine(kube, "KEDA")
    kube.log.clear()
    body = await reconcile(reconciler, kube)
    assert autoscalers(kube) == {"ScaledObject/svc"}
    deleted = kube.log.index(("DELETE", "HorizontalPodAutoscaler", NS, "svc"))
    applied = kube.log.index(("APPLY", "ScaledObject", NS, "svc"))
    assert deleted < applied  # never two autoscalers on the Deployment at once
    assert condition(body, "Degraded")["status"] == "False"
    assert ("svc", "Deleted", "Deleted HorizontalPodAutoscaler svc: spec.autoscaling.engine is "
            "KEDA") in events.posted

    set_engine(kube, "HPA")
    kube.log.clear()
    await reconcile(reconciler, kube)
    assert autoscalers(kube) == {"HorizontalPodAutoscaler/svc"}
    assert kube.log.index(("DELETE", "ScaledObject", NS, "svc")) < kube.log.index(
        ("APPLY", "HorizontalPodAutoscaler", NS, "svc")
    )
    # Steady again: the next reconcile sends no delete and no apply.
    kube.log.clear()
    await reconcile(reconciler, kube)
    assert [e for e in kube.log if e[0] in ("APPLY", "DELETE")] == []


@pytest.mark.asyncio
async def test_a_switch_made_while_the_operator_was_down_is_completed_after_a_restart() -> None:
    reconciler, kube, _ = controller()
    kube.scaledobjects_served = True
    kube.add_service(service(autoscaling={"engine": "KEDA"}))
    await reconcile(reconciler, kube)
    assert autoscalers(kube) == {"ScaledObject/svc"}
    set_engine(kube, "HPA")
    fresh, _, _ = controller(kube)  # a new process: no cache of the ScaledObject
    await reconcile(fresh, kube)
    assert autoscalers(kube) == {"HorizontalPodAutoscaler/svc"}


@pytest.mark.asyncio
async def test_a_switch_to_keda_while_down_deletes_the_hpa_the_watch_listed() -> None:
    reconciler, kube, _ = controller()
    kube.scaledobjects_served = True
    kube.add_service(service())
    await reconcile(reconciler, kube)
    set_engine(kube, "KEDA")
    fresh, _, _ = controller(kube)  # a new process, its HPA cache filled by the watch's listing
    for (kind, ns, _name), obj in list(kube.objects.items()):
        if kind == "HorizontalPodAutoscaler" and ns == NS:
            fresh.child_event(kind, None, obj)
    kube.log.clear()
    await reconcile(fresh, kube)
    assert autoscalers(kube) == {"ScaledObject/svc"}
    assert kube.log.index(("DELETE", "HorizontalPodAutoscaler", NS, "svc")) < kube.log.index(
        ("APPLY", "ScaledObject", NS, "svc")
    )


@pytest.mark.asyncio
async def test_only_owned_autoscalers_are_deleted_and_kedas_own_hpa_is_never_touched() -> None:
    reconciler, kube, _ = controller()
    kube.scaledobjects_served = True
    kube.add_service(service(autoscaling={"engine": "KEDA"}))
    # KEDA's HPA for our ScaledObject, and someone else's ScaledObject-less HPA elsewhere.
    kube.objects[("HorizontalPodAutoscaler", NS, "keda-hpa-svc")] = {
        "kind": "HorizontalPodAutoscaler",
        "metadata": {
            "name": "keda-hpa-svc",
            "namespace": NS,
            "uid": "keda-uid",
            "resourceVersion": "7",
            "ownerReferences": [
                {"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject", "name": "svc",
                 "uid": "so-uid", "controller": True}
            ],
        },
        "spec": {"minReplicas": 1},
    }
    await reconcile(reconciler, kube)
    set_engine(kube, "HPA")
    await reconcile(reconciler, kube)
    set_engine(kube, "KEDA")
    await reconcile(reconciler, kube)
    touched = [e for e in kube.log if e[3] == "keda-hpa-svc" and e[0] in ("APPLY", "DELETE")]
    assert touched == []


@pytest.mark.asyncio
async def test_keda_absent_is_a_condition_and_nothing_is_applied() -> None:
    reconciler, kube, events = controller()
    assert not kube.scaledobjects_served
    kube.add_service(service(autoscaling={"engine": "KEDA"}))
    body = await reconcile(reconciler, kube)
    assert [e for e in kube.log if e[0] in ("APPLY", "DELETE")] == []
    degraded = condition(body, "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "KEDAMissing")
    assert "install KEDA" in degraded["message"] and "engine: HPA" in degraded["message"]
    assert body["status"]["phase"] == "Degraded"
    assert any(reason == "KEDAMissing" for _, reason, _ in events.posted)


@pytest.mark.asyncio
async def test_switching_to_keda_without_keda_keeps_the_whole_hpa_set() -> None:
    """Nothing half-applies: not the Deployment's new template without its autoscaler, not
    the HPA deleted with no ScaledObject to follow it."""
    reconciler, kube, _ = controller()
    kube.add_service(service())
    await reconcile(reconciler, kube)
    before = copy.deepcopy({k: v for k, v in kube.objects.items() if k[0] != "ClaudeCodeService"})
    live = kube.objects[("ClaudeCodeService", NS, "svc")]
    live["spec"]["image"] = "triton:next"  # a change that would roll the pods
    set_engine(kube, "KEDA")
    kube.log.clear()
    body = await reconcile(reconciler, kube)
    assert [e for e in kube.log if e[0] in ("APPLY", "DELETE")] == []
    assert {k: v for k, v in kube.objects.items() if k[0] != "ClaudeCodeService"} == before
    assert condition(body, "Degraded")["reason"] == "KEDAMissing"
    # KEDA installed: the switch goes through in one reconcile.
    kube.scaledobjects_served = True
    body = await reconcile(reconciler, kube)
    assert autoscalers(kube) == {"ScaledObject/svc"}
    assert condition(body, "Degraded")["status"] == "False"
    deployment = kube.objects[("Deployment", NS, "svc")]
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == "triton:next"


@pytest.mark.asyncio
async def test_kedas_crd_removed_between_discovery_and_apply() -> None:
    reconciler, kube, _ = controller()
    kube.scaledobjects_served = True
    kube.add_service(service(autoscaling={"engine": "KEDA"}))
    real_served = kube.served

    async def stale_discovery(api_version: str, plural: str, ttl_seconds: float = 30.0) -> bool:
        if plural == "scaledobjects":
            return True  # the cached answer; the CRD is gone already
        return await real_served(api_version, plural, ttl_seconds)

    kube.served = stale_discovery  # type: ignore[method-assign]
    kube.scaledobjects_served = False
    body = await reconcile(reconciler, kube)
    assert condition(body, "Degraded")["reason"] == "KEDAMissing"
    assert "ScaledObject" not in kube.kinds(NS)


@pytest.mark.asyncio
async def test_a_service_at_zero_reports_scaled_to_zero() -> None:
    reconciler, kube, _ = controller()
    kube.add_service(service(replicas={"min": 0, "max": 3}))
    await reconcile(reconciler, kube)
    hpa = kube.objects[("HorizontalPodAutoscaler", NS, "svc")]
    assert hpa["spec"]["minReplicas"] == 0
    # The HPA scaled the Deployment to zero and the Deployment controller caught up.
    deployment = kube.objects[("Deployment", NS, "svc")]
    deployment["status"] = {"observedGeneration": deployment["metadata"]["generation"],
                            "replicas": 0, "readyReplicas": 0}
    reconciler.remember_child("Deployment", deployment, deleted=False)
    body = await reconcile(reconciler, kube)
    zero = condition(body, "ScaledToZero")
    assert (zero["status"], zero["reason"]) == ("True", "ScaledToZero")
    assert body["status"]["phase"] == "ScaledToZero"
    # The floor wakes it ahead of a peak: minReplicas follows, the condition says Waking.
    live = kube.objects[("ClaudeCodeService", NS, "svc")]
    live["status"]["floor"] = 2
    body = await reconcile(reconciler, kube)
    assert kube.objects[("HorizontalPodAutoscaler", NS, "svc")]["spec"]["minReplicas"] == 2
    assert condition(body, "ScaledToZero")["reason"] == "Waking"
