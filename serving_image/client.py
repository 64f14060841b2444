"""A Triton gRPC client with deadlines and retries that only retry what is worth retrying.

Replaces the write-up's naive retry loop (retry anything, fixed sleep, no deadline):

- every attempt has a deadline (`attempt_timeout_s`, sent as the gRPC deadline), and all
  attempts together stay within `total_timeout_s`;
- only UNAVAILABLE (server down, restarting, or shedding load: Triton's
  "Exceeds maximum queue size"), DEADLINE_EXCEEDED and RESOURCE_EXHAUSTED are retried;
  INVALID_ARGUMENT and every other code fail at once: a bad request stays bad;
- the wait between attempts is exponential backoff with full jitter
  (uniform in [0, min(max_backoff, initial * multiplier**n)]), so a fleet of clients does
  not retry in lockstep against a recovering server.

    client = TritonClient("127.0.0.1:8001", "claude_code")
    logits = client.infer(np.array([[1, 2, 3]], dtype=np.int32))   # -> [1, 3, 50257]

    async with AsyncTritonClient(url, "claude_code") as client:    # for load generation
        logits = await client.infer(ids)

Channel options: `channel_args()` (tritonclient's defaults and a reconnect backoff capped
at 2 s) plus `extra_channel_args`. `on_retry(attempt, code, delay_s)` is called before
each wait; `InferenceFailed` carries the final gRPC code and the number of attempts.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
from tritonclient.grpc import KeepAliveOptions
from tritonclient.grpc._client import MAX_GRPC_MESSAGE_SIZE
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

RETRYABLE_CODES = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED"})
MAX_RECONNECT_BACKOFF_MS = 2000


def channel_args(overrides: list[tuple[str, Any]] | None = None) -> list[tuple[str, Any]]:
    """tritonclient's default channel options, a short reconnect backoff, then `overrides`.

    tritonclient drops *all* its defaults (2 GB message limits, keepalive) as soon as any
    channel_args are given; these keep them. gRPC's own reconnect backoff grows to 120 s
    after a server restart, far beyond this client's retry budget; it is capped at 2 s.
    """
    keepalive = KeepAliveOptions()
    args: dict[str, Any] = {
        "grpc.max_send_message_length": MAX_GRPC_MESSAGE_SIZE,
        "grpc.max_receive_message_length": MAX_GRPC_MESSAGE_SIZE,
        "grpc.keepalive_time_ms": keepalive.keepalive_time_ms,
        "grpc.keepalive_timeout_ms": keepalive.keepalive_timeout_ms,
        "grpc.keepalive_permit_without_calls": keepalive.keepalive_permit_without_calls,
        "grpc.http2.max_pings_without_data": keepalive.http2_max_pings_without_data,
        "grpc.initial_reconnect_backoff_ms": 100,
        "grpc.min_reconnect_backoff_ms": 100,
        "grpc.max_reconnect_backoff_ms": MAX_RECONNECT_BACKOFF_MS,
    }
    args.update(dict(overrides or []))
    return list(args.items())

OnRetry = Callable[[int, str, float], None]


class InferenceFailed(Exception):
    """The inference failed for good: `code` is the last gRPC status name."""

    def __init__(self, code: str, attempts: int, message: str) -> None:
        super().__init__(f"{code} after {attempts} attempt(s): {message}")
        self.code = code
        self.attempts = attempts
        self.message = message


def status_code(exc: InferenceServerException) -> str:
    """`StatusCode.UNAVAILABLE` (tritonclient's form) -> `UNAVAILABLE`."""
    status = exc.status() or "UNKNOWN"
    return str(status).removeprefix("StatusCode.")


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 4
    initial_backoff_s: float = 0.05
    max_backoff_s: float = 2.0
    multiplier: float = 2.0
    attempt_timeout_s: float = 5.0
    total_timeout_s: float = 30.0
    retryable: frozenset[str] = field(default=RETRYABLE_CODES)

    def backoff(self, retry: int, rng: random.Random) -> float:
        """Full-jitter delay before retry number `retry` (1 for the first retry)."""
        cap = min(self.max_backoff_s, self.initial_backoff_s * self.multiplier ** (retry - 1))
        return rng.uniform(0.0, cap)


class _Retrying:
    """What the sync and async clients share: inputs, outputs and the retry decision."""

    def __init__(
        self,
        model: str,
        *,
        input_name: str,
        output_name: str,
        policy: RetryPolicy | None,
        rng: random.Random | None,
        on_retry: OnRetry | None,
    ) -> None:
        self.model = model
        self.input_name = input_name
        self.output_name = output_name
        self.policy = policy or RetryPolicy()
        self.rng = rng or random.Random()
        self.on_retry = on_retry

    def _inputs(self, data: np.ndarray) -> list[grpcclient.InferInput]:
        dtype = np_to_triton_dtype(data.dtype)
        tensor = grpcclient.InferInput(self.input_name, list(data.shape), dtype)
        tensor.set_data_from_numpy(data)
        return [tensor]

    def _next_delay(self, attempt: int, exc: InferenceServerException, started: float) -> float:
        """Delay before the next attempt, or raise InferenceFailed when not to retry."""
        code = status_code(exc)
        policy = self.policy
        if code not in policy.retryable or attempt >= policy.max_attempts:
            raise InferenceFailed(code, attempt, exc.message() or str(exc)) from exc
        delay = policy.backoff(attempt, self.rng)
        remaining = policy.total_timeout_s - (time.monotonic() - started)
        if delay >= remaining:
            raise InferenceFailed(code, attempt, f"retry budget spent: {exc.message()}") from exc
        if self.on_retry is not None:
            self.on_retry(attempt, code, delay)
        return delay

    def _timeout(self, started: float) -> float:
        remaining = self.policy.total_timeout_s - (time.monotonic() - started)
        return max(0.001, min(self.policy.attempt_timeout_s, remaining))


class TritonClient(_Retrying):
    """Blocking client; one channel, reused."""

    def __init__(
        self,
        url: str,
        model: str,
        *,
        input_name: str = "input_ids",
        output_name: str = "output",
        policy: RetryPolicy | None = None,
        rng: random.Random | None = None,
        on_retry: OnRetry | None = None,
        extra_channel_args: list[tuple[str, Any]] | None = None,
    ) -> None:
        super().__init__(
            model,
            input_name=input_name,
            output_name=output_name,
            policy=policy,
            rng=rng,
            on_retry=on_retry,
        )
        options = channel_args(extra_channel_args)
        self.client = grpcclient.InferenceServerClient(url, channel_args=options)

    def infer(self, data: np.ndarray) -> np.ndarray:
        started = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            try:
                result = self.client.infer(
                    self.model, self._inputs(data), client_timeout=self._timeout(started)
                )
            except InferenceServerException as exc:
                time.sleep(self._next_delay(attempt, exc, started))
                continue
            output = result.as_numpy(self.output_name)
            assert output is not None, f"response has no output {self.output_name!r}"
            return output

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> TritonClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class AsyncTritonClient(_Retrying):
    """asyncio client (tritonclient.grpc.aio) with the same policy, for load generation."""

    def __init__(
        self,
        url: str,
        model: str,
        *,
        input_name: str = "input_ids",
        output_name: str = "output",
        policy: RetryPolicy | None = None,
        rng: random.Random | None = None,
        on_retry: OnRetry | None = None,
        extra_channel_args: list[tuple[str, Any]] | None = None,
    ) -> None:
        super().__init__(
            model,
            input_name=input_name,
            output_name=output_name,
            policy=policy,
            rng=rng,
            on_retry=on_retry,
        )
        options = channel_args(extra_channel_args)
        self.client = grpcaio.InferenceServerClient(url, channel_args=options)

    async def infer(self, data: np.ndarray) -> np.ndarray:
        started = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            try:
                result = await self.client.infer(
                    self.model, self._inputs(data), client_timeout=self._timeout(started)
                )
            except InferenceServerException as exc:
                await asyncio.sleep(self._next_delay(attempt, exc, started))
                continue
            output = result.as_numpy(self.output_name)
            assert output is not None, f"response has no output {self.output_name!r}"
            return output

    async def close(self) -> None:
        await self.client.close()

    async def __aenter__(self) -> AsyncTritonClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
