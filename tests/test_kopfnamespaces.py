"""kopf's namespace view takes in the namespaces a watch lists, not only its events.

The e2e counterpart (e2e/tests/test_kopf_namespaces.py) runs kopf against the real API
server with a namespace created between kopf's two listings.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from kopf._cogs.structs import references
from kopf._core.reactor import observation

from ccs_operator.config import OperatorConfig
from ccs_operator.controllers import handlers
from ccs_operator.controllers.kopfnamespaces import (
    process_namespace_event,
    see_namespaces_in_every_listing,
)
from ccs_operator.controllers.reconcile import Reconciler
from ccs_operator.core.render import RenderSettings
from fakekube import FakeKube


def _listed(name: str, **metadata: Any) -> dict[str, Any]:
    return {"type": None, "object": {"metadata": {"name": name, **metadata}}}


def _terminating(name: str) -> dict[str, Any]:
    """A namespace whose deletion nothing blocks any more (kopf's test for gone)."""
    event = _listed(name, deletionTimestamp="2026-12-04T00:00:00Z")
    event["object"]["status"] = {
        "phase": "Terminating",
        "conditions": [{"type": "NamespaceContentRemaining", "status": "False"}],
    }
    return event


async def _revisions(insights: references.Insights) -> list[int]:
    """Count the orchestrator's wake-ups while a test feeds events."""
    woken: list[int] = []

    async def wait() -> None:
        async with insights.revised:
            await insights.revised.wait()
            woken.append(1)

    asyncio.get_running_loop().create_task(wait())
    await asyncio.sleep(0)
    return woken


@pytest.mark.asyncio
async def test_a_listed_namespace_that_matches_is_served_and_wakes_the_orchestrator() -> None:
    insights = references.Insights()
    woken = await _revisions(insights)
    await process_namespace_event(
        raw_event=_listed("op-new"), namespaces=["op-*"], insights=insights
    )
    await process_namespace_event(
        raw_event=_listed("kube-system"), namespaces=["op-*"], insights=insights
    )
    await asyncio.sleep(0)
    assert insights.namespaces == {"op-new"}
    assert woken == [1]


@pytest.mark.asyncio
async def test_a_relisting_of_known_namespaces_wakes_nothing() -> None:
    insights = references.Insights()
    insights.namespaces.add("op-known")
    woken = await _revisions(insights)
    await process_namespace_event(
        raw_event=_listed("op-known"), namespaces=["op-*"], insights=insights
    )
    await asyncio.sleep(0.01)
    assert woken == []


@pytest.mark.asyncio
async def test_a_listed_namespace_being_deleted_is_dropped() -> None:
    insights = references.Insights()
    insights.namespaces.add("op-old")
    await process_namespace_event(
        raw_event=_terminating("op-old"),
        namespaces=["op-*"],
        insights=insights,
    )
    assert insights.namespaces == set()


@pytest.mark.asyncio
async def test_watch_events_still_go_through_kopf() -> None:
    insights = references.Insights()
    await process_namespace_event(
        raw_event={"type": "ADDED", "object": {"metadata": {"name": "op-a"}}},
        namespaces=["op-*"],
        insights=insights,
    )
    assert insights.namespaces == {"op-a"}


def test_the_operator_registry_installs_the_processor(monkeypatch: Any) -> None:
    monkeypatch.setattr(
        observation,
        "process_discovered_namespace_event",
        observation.process_discovered_namespace_event,
    )
    see_namespaces_in_every_listing()
    assert observation.process_discovered_namespace_event is process_namespace_event
    monkeypatch.setattr(observation, "process_discovered_namespace_event", lambda **_: None)
    reconciler = Reconciler(FakeKube(), RenderSettings(), lambda *_: None)  # type: ignore[arg-type]
    handlers.build_registry(reconciler, OperatorConfig())
    assert observation.process_discovered_namespace_event is process_namespace_event
