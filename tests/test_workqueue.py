"""The work queue: dedupe, one worker per key, backoff with jitter, Retry-After, shutdown."""

from __future__ import annotations

import asyncio
import random

import pytest

from ccs_operator.controllers.workqueue import (
    Backoff,
    Permanent,
    Requeue,
    Result,
    ShutDown,
    Workers,
    WorkQueue,
)


@pytest.mark.asyncio
async def test_a_key_added_many_times_while_waiting_is_processed_once() -> None:
    queue: WorkQueue[str] = WorkQueue()
    for _ in range(5):
        queue.add("a")
    queue.add("b")
    assert len(queue) == 2
    assert await queue.get() == "a"
    assert await queue.get() == "b"


@pytest.mark.asyncio
async def test_a_key_added_while_processing_runs_again_after_and_never_twice_at_once() -> None:
    queue: WorkQueue[str] = WorkQueue()
    queue.add("a")
    key = await queue.get()
    queue.add("a")  # an event arrives while a worker holds the key
    assert len(queue) == 0  # not handed to a second worker
    queue.done(key)
    assert len(queue) == 1
    assert await queue.get() == "a"


@pytest.mark.asyncio
async def test_add_after_keeps_the_earliest_delay() -> None:
    queue: WorkQueue[str] = WorkQueue()
    queue.add_after("a", 5.0)
    queue.add_after("a", 0.01)
    queue.add_after("a", 3.0)
    key = await asyncio.wait_for(queue.get(), timeout=1.0)
    assert key == "a"
    queue.done(key)
    await asyncio.sleep(0.05)
    assert len(queue) == 0  # the later ones were dropped, not queued again


def test_backoff_grows_exponentially_with_jitter_and_is_capped() -> None:
    backoff = Backoff(base=1.0, cap=60.0, rng=random.Random(1))
    delays = [backoff.delay(n) for n in range(1, 10)]
    for n, delay in enumerate(delays, start=1):
        ceiling = min(60.0, 2.0 ** (n - 1))
        assert ceiling / 2 <= delay <= ceiling
    assert max(delays) <= 60.0
    # Jitter: a fleet failing together does not retry in lockstep.
    assert len({round(Backoff(base=1.0, rng=random.Random(s)).delay(4), 6) for s in range(20)}) > 10


def test_retry_after_is_a_lower_bound() -> None:
    backoff = Backoff(base=0.5, cap=300.0, rng=random.Random(2))
    assert backoff.delay(1, not_before=7.0) >= 7.0
    assert backoff.delay(1, not_before=10_000.0) == 300.0  # never beyond the cap


@pytest.mark.asyncio
async def test_workers_retry_every_error_with_backoff_and_forget_on_success() -> None:
    queue: WorkQueue[str] = WorkQueue(Backoff(base=0.01, cap=0.05))
    calls: list[str] = []
    outcomes: list[tuple[str, str]] = []

    async def reconcile(key: str) -> None:
        calls.append(key)
        if len(calls) == 1:
            raise RuntimeError("boom")  # an unexpected error class
        if len(calls) == 2:
            raise Requeue("throttled", after=0.02)

    workers = Workers(
        queue, reconcile, workers=2, on_result=lambda k, o, d: outcomes.append((k, o))
    )
    workers.start()
    queue.add("a")
    for _ in range(100):
        if len(calls) >= 3:
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)
    await workers.stop()
    assert calls == ["a", "a", "a"]
    assert [o for _, o in outcomes] == ["error", "retry", "ok"]
    assert queue.failures("a") == 0
    assert workers.alive() is False


@pytest.mark.asyncio
async def test_permanent_errors_are_not_retried_and_results_requeue_after() -> None:
    queue: WorkQueue[str] = WorkQueue(Backoff(base=0.01))
    calls: list[str] = []

    async def reconcile(key: str) -> Result | None:
        calls.append(key)
        if key == "bad":
            raise Permanent("invalid spec")
        return Result(requeue_after=0.02) if calls.count("good") == 1 else None

    workers = Workers(queue, reconcile, workers=1)
    workers.start()
    queue.add("bad")
    queue.add("good")
    await asyncio.sleep(0.2)
    assert calls.count("bad") == 1
    assert calls.count("good") == 2  # asked for one more pass, got exactly one
    assert workers.alive()
    await workers.stop()


@pytest.mark.asyncio
async def test_fenced_workers_process_nothing() -> None:
    queue: WorkQueue[str] = WorkQueue()
    calls: list[str] = []

    async def reconcile(key: str) -> None:
        calls.append(key)

    workers = Workers(queue, reconcile, workers=1)
    workers.start()
    queue.add("a")
    await asyncio.sleep(0.02)
    assert calls == ["a"]  # positive control
    workers.fenced = True
    queue.add("b")
    await asyncio.sleep(0.02)
    assert calls == ["a"]
    await workers.stop()


@pytest.mark.asyncio
async def test_discard_drops_pending_retries_and_shutdown_wakes_getters() -> None:
    queue: WorkQueue[str] = WorkQueue(Backoff(base=0.05))
    queue.add_rate_limited("a")
    queue.discard("a")
    await asyncio.sleep(0.1)
    assert len(queue) == 0
    getter = asyncio.create_task(queue.get())
    await asyncio.sleep(0)
    queue.shut_down()
    with pytest.raises(ShutDown):
        await asyncio.wait_for(getter, timeout=1.0)
