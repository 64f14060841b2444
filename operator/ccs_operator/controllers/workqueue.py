"""One rate-limited work queue for every trigger, in the shape of client-go's workqueue.

Keys, not events, are queued: a key added while it waits is queued once (dedupe); a key
added while a worker holds it is processed again after that worker is done, never by two
workers at once. Failures are retried per key with exponential backoff and jitter, never
sooner than a server's Retry-After. A success forgets the key's failures.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import deque
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)

BASE_DELAY_SECONDS = 0.5
MAX_DELAY_SECONDS = 300.0


class ShutDown(Exception):
    """The queue was shut down; workers stop."""


@dataclass
class Backoff:
    """Per-key exponential backoff: base * 2^failures, capped, with jitter in [1/2, 1] so a
    fleet that failed together does not retry together."""

    base: float = BASE_DELAY_SECONDS
    cap: float = MAX_DELAY_SECONDS
    rng: random.Random | None = None

    def delay(self, failures: int, not_before: float | None = None) -> float:
        ceiling = min(self.cap, self.base * 2 ** max(0, failures - 1))
        jitter = (self.rng or random).uniform(0.5, 1.0)
        delay = ceiling * jitter
        if not_before is not None:
            delay = max(delay, min(not_before, self.cap))
        return delay


class WorkQueue(Generic[K]):
    def __init__(self, backoff: Backoff | None = None) -> None:
        self.backoff = backoff or Backoff()
        self._queue: deque[K] = deque()
        self._dirty: set[K] = set()
        self._processing: set[K] = set()
        self._waiting: dict[K, tuple[float, asyncio.TimerHandle]] = {}
        self._failures: dict[K, int] = {}
        self._ready = asyncio.Event()
        self._shut_down = False

    def __len__(self) -> int:
        return len(self._queue)

    def add(self, key: K) -> None:
        if self._shut_down or key in self._dirty:
            return
        self._dirty.add(key)
        if key not in self._processing:
            self._queue.append(key)
            self._ready.set()

    def add_after(self, key: K, delay: float) -> None:
        """Add `key` after `delay` seconds; of several pending delays the earliest wins."""
        if self._shut_down:
            return
        if delay <= 0:
            self.add(key)
            return
        loop = asyncio.get_running_loop()
        due = loop.time() + delay
        pending = self._waiting.get(key)
        if pending is not None:
            if pending[0] <= due:
                return
            pending[1].cancel()
        self._waiting[key] = (due, loop.call_at(due, self._fire, key))

    def _fire(self, key: K) -> None:
        self._waiting.pop(key, None)
        self.add(key)

    def add_rate_limited(self, key: K, not_before: float | None = None) -> float:
        """Retry `key` after its backoff (and not before `not_before` seconds); returns the
        delay chosen."""
        failures = self._failures.get(key, 0) + 1
        self._failures[key] = failures
        delay = self.backoff.delay(failures, not_before)
        self.add_after(key, delay)
        return delay

    def failures(self, key: K) -> int:
        return self._failures.get(key, 0)

    def forget(self, key: K) -> None:
        """Stop tracking a key's failures (after a success)."""
        self._failures.pop(key, None)

    def discard(self, key: K) -> None:
        """Drop everything known about a key (its object is gone)."""
        self.forget(key)
        pending = self._waiting.pop(key, None)
        if pending is not None:
            pending[1].cancel()

    async def get(self) -> K:
        while not self._queue:
            if self._shut_down:
                raise ShutDown
            self._ready.clear()
            await self._ready.wait()
        key = self._queue.popleft()
        self._dirty.discard(key)
        self._processing.add(key)
        return key

    def done(self, key: K) -> None:
        self._processing.discard(key)
        if key in self._dirty and not self._shut_down:
            self._queue.append(key)
            self._ready.set()

    def processing(self) -> frozenset[K]:
        return frozenset(self._processing)

    def shut_down(self) -> None:
        self._shut_down = True
        for _, handle in self._waiting.values():
            handle.cancel()
        self._waiting.clear()
        self._ready.set()


class Requeue(Exception):
    """Raised by a reconcile to be retried with backoff, not before `after` seconds."""

    def __init__(self, message: str, after: float | None = None) -> None:
        super().__init__(message)
        self.after = after


class Permanent(Exception):
    """Raised by a reconcile whose failure retrying cannot fix (status says why); the key is
    forgotten until its object changes."""


@dataclass(frozen=True)
class Result:
    """What a successful reconcile asks for: nothing, or another pass after a delay."""

    requeue_after: float | None = None


Reconcile = Callable[[K], Awaitable[Result | None]]


class Workers(Generic[K]):
    """N workers draining one queue through one reconcile function (controller-runtime's
    contract: every error is retried with backoff; a success forgets the failures)."""

    def __init__(
        self,
        queue: WorkQueue[K],
        reconcile: Reconcile[K],
        *,
        workers: int = 8,
        name: str = "reconcile",
        on_result: Callable[[K, str, float | None], None] | None = None,
    ) -> None:
        self.queue = queue
        self.reconcile = reconcile
        self.count = workers
        self.name = name
        self.on_result = on_result
        self.tasks: list[asyncio.Task[None]] = []
        # Set when acting must stop at once (leadership lost): keys are not processed.
        self.fenced = False

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.tasks = [
            loop.create_task(self._work(), name=f"{self.name}-{i}") for i in range(self.count)
        ]

    def alive(self) -> bool:
        return bool(self.tasks) and not any(task.done() for task in self.tasks)

    async def stop(self) -> None:
        self.queue.shut_down()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    async def _work(self) -> None:
        while True:
            try:
                key = await self.queue.get()
            except ShutDown:
                return
            try:
                if not self.fenced:
                    await self._process(key)
            finally:
                self.queue.done(key)

    async def _process(self, key: K) -> None:
        try:
            result = await self.reconcile(key)
        except asyncio.CancelledError:
            raise
        except Permanent as exc:
            self.queue.forget(key)
            self._report(key, "invalid", None)
            log.info("%s of %s not retried: %s", self.name, key, exc)
        except Requeue as exc:
            delay = self.queue.add_rate_limited(key, exc.after)
            self._report(key, "retry", delay)
            log.info("%s of %s retried in %.1f s: %s", self.name, key, delay, exc)
        except Exception:
            delay = self.queue.add_rate_limited(key)
            self._report(key, "error", delay)
            log.exception("%s of %s failed; retried in %.1f s", self.name, key, delay)
        else:
            self.queue.forget(key)
            self._report(key, "ok", None)
            if result is not None and result.requeue_after is not None:
                self.queue.add_after(key, result.requeue_after)

    def _report(self, key: K, outcome: str, delay: float | None) -> None:
        if self.on_result is not None:
            with contextlib.suppress(Exception):
                self.on_result(key, outcome, delay)
