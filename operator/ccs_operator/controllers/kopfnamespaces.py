"""kopf's namespace observation, made to see a namespace created while it lists.

kopf (1.45) lists the namespaces once to fill its view, then starts a watch, which lists
again and watches from that second listing; the watch's listing arrives as events of type
None, and kopf's namespace processor drops those. A namespace created between the two
listings (the operator starting while a tenant's namespace is created), or while a watch
re-lists after its resourceVersion expired, is in neither the first listing nor the watch,
so kopf never serves it: its services are never handled until the operator restarts. Seen
in the e2e suite: a namespace created as the operator came up, no service in it handled.

The fix is the missing step: a listed namespace that matches the operator's patterns is
added like an ADDED event. Listings are level-based, so this is always right; the
orchestrator is woken only when the set of namespaces changes. kopf's processor is looked
up by name at call time (a functools.partial of the module attribute is made when the
observer starts), so replacing the module attribute before the operator starts is enough.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from kopf._core.reactor import observation

_KOPF_PROCESSOR = observation.process_discovered_namespace_event


async def process_namespace_event(
    *,
    raw_event: Any,
    namespaces: Collection[Any],
    insights: Any,
    **kwargs: Any,
) -> None:
    """kopf's processor for watch events; listed namespaces (type None) are revised too."""
    if raw_event["type"] is not None:
        await _KOPF_PROCESSOR(
            raw_event=raw_event, namespaces=namespaces, insights=insights, **kwargs
        )
        return
    async with insights.revised:
        before = set(insights.namespaces)
        observation.revise_namespaces(
            raw_events=[raw_event], insights=insights, namespaces=namespaces
        )
        if insights.namespaces != before:
            insights.revised.notify_all()


def see_namespaces_in_every_listing() -> None:
    """Install the processor (idempotent); call before kopf's operator starts."""
    observation.process_discovered_namespace_event = process_namespace_event
