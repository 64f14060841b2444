"""Leader election over a coordination.k8s.io/v1 Lease, as client-go does it.

Only the holder runs the controllers, so two replicas never fight over the same children.
Expiry is judged on this process's monotonic clock from when the lease record last changed
(never by comparing clocks across machines), like client-go's leaderelection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kubernetes import client as k8s

log = logging.getLogger(__name__)


def default_identity() -> str:
    return f"{socket.gethostname()}_{os.getpid()}_{uuid.uuid4().hex[:6]}"


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass
class _Observed:
    record: tuple[Any, ...]
    at: float


class LeaseElector:
    def __init__(
        self,
        api_client: k8s.ApiClient,
        name: str,
        namespace: str,
        identity: str | None = None,
        lease_seconds: int = 15,
    ) -> None:
        self._api = k8s.CoordinationV1Api(api_client)
        self.name = name
        self.namespace = namespace
        self.identity = identity or default_identity()
        self.lease_seconds = lease_seconds
        self.retry_seconds = max(1.0, lease_seconds / 5)
        # No lease call may outlive a third of the lease: a hung renew is a failed renew.
        self.request_timeout = max(1.0, lease_seconds / 3)
        self._observed: _Observed | None = None

    def _try_acquire_or_renew(self) -> bool:
        """One attempt (blocking I/O); True while we hold the lease."""
        try:
            lease = self._api.read_namespaced_lease(
                self.name, self.namespace, _request_timeout=self.request_timeout
            )
        except k8s.ApiException as exc:
            if exc.status != 404:
                raise
            body = k8s.V1Lease(
                metadata=k8s.V1ObjectMeta(name=self.name, namespace=self.namespace),
                spec=self._spec(transitions=0, acquire=True),
            )
            try:
                self._api.create_namespaced_lease(
                    self.namespace, body, _request_timeout=self.request_timeout
                )
            except k8s.ApiException as create_exc:
                if create_exc.status == 409:
                    return False  # another candidate created it first
                raise
            return True
        spec = lease.spec or k8s.V1LeaseSpec()
        record = (spec.holder_identity, spec.renew_time, spec.lease_transitions)
        now = time.monotonic()
        if self._observed is None or self._observed.record != record:
            self._observed = _Observed(record, now)
        holder = spec.holder_identity
        duration = spec.lease_duration_seconds or self.lease_seconds
        expired = now - self._observed.at > duration
        if holder and holder != self.identity and not expired:
            return False
        transitions = spec.lease_transitions or 0
        lease.spec = self._spec(
            transitions=transitions if holder == self.identity else transitions + 1,
            acquire=holder != self.identity,
            previous=spec,
        )
        try:
            # The resourceVersion in `lease` makes this a compare-and-swap.
            self._api.replace_namespaced_lease(
                self.name, self.namespace, lease, _request_timeout=self.request_timeout
            )
        except k8s.ApiException as exc:
            if exc.status == 409:
                return False
            raise
        return True

    def _spec(self, transitions: int, acquire: bool, previous: Any = None) -> k8s.V1LeaseSpec:
        now = _now()
        return k8s.V1LeaseSpec(
            holder_identity=self.identity,
            lease_duration_seconds=self.lease_seconds,
            acquire_time=now if acquire or previous is None else previous.acquire_time,
            renew_time=now,
            lease_transitions=transitions,
        )

    async def _attempt(self) -> bool:
        """One try; any failure (API error, refused connection, urllib3's MaxRetryError or
        ProtocolError, a hung call) is a failed try, never an exception."""
        try:
            return await asyncio.wait_for(
                asyncio.to_thread(self._try_acquire_or_renew), timeout=self.request_timeout + 1
            )
        except Exception as exc:
            log.warning(
                "leader election: lease %s/%s: %s: %s",
                self.namespace,
                self.name,
                type(exc).__name__,
                exc,
            )
            return False

    async def acquire(self, stop: asyncio.Event) -> bool:
        """Wait until this process holds the lease (True) or `stop` is set (False)."""
        log.info(
            "leader election: waiting for lease %s/%s as %s",
            self.namespace,
            self.name,
            self.identity,
        )
        while not stop.is_set():
            if await self._attempt():
                log.info("leader election: acquired lease %s/%s", self.namespace, self.name)
                return True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.retry_seconds)
        return False

    async def keep(
        self,
        lost: asyncio.Event,
        stop: asyncio.Event,
        on_lost: Callable[[], None] | None = None,
    ) -> None:
        """Renew until stopped; when the lease cannot be renewed within the renew deadline
        (two thirds of the lease, so before another candidate may take it), call `on_lost`
        (which must stop all writing at once) and set `lost`. If this task ends for any
        other reason than `stop`, that counts as lost too: nobody renews any more."""
        last_renewed = time.monotonic()
        renew_every = self.lease_seconds / 3
        deadline = self.lease_seconds * 2 / 3
        try:
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=renew_every)
                    return
                if await self._attempt():
                    last_renewed = time.monotonic()
                elif time.monotonic() - last_renewed > deadline:
                    log.error("leader election: lost lease %s/%s", self.namespace, self.name)
                    return
        finally:
            if not stop.is_set():
                if on_lost is not None:
                    on_lost()
                lost.set()

    def release(self) -> None:
        """Hand the lease over at once on a clean shutdown instead of waiting for expiry."""
        try:
            lease = self._api.read_namespaced_lease(
                self.name, self.namespace, _request_timeout=self.request_timeout
            )
            spec = lease.spec
            if spec is None or spec.holder_identity != self.identity:
                return
            spec.holder_identity = None
            spec.lease_duration_seconds = 1
            self._api.replace_namespaced_lease(
                self.name, self.namespace, lease, _request_timeout=self.request_timeout
            )
        except Exception as exc:
            log.warning("leader election: could not release lease: %s", exc)
