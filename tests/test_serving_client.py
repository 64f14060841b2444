"""serving_image.client: deadlines, and retries on exactly the retryable gRPC codes.

The backoff arithmetic is unit-tested; every retry decision is tested against real failures
from a real tritonserver (or a real closed port): UNAVAILABLE (nothing listening yet; the
queue policy shedding load), DEADLINE_EXCEEDED (a slow model and a short deadline),
RESOURCE_EXHAUSTED (a response larger than the client's receive limit), and the codes that
must never be retried: INVALID_ARGUMENT (wrong dtype, batch too large) and NOT_FOUND.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml

from ccs_operator.core.api import parse_service
from serving_image.client import (
    MAX_RECONNECT_BACKOFF_MS,
    RETRYABLE_CODES,
    AsyncTritonClient,
    InferenceFailed,
    RetryPolicy,
    TritonClient,
    channel_args,
)
from serving_image.local import LocalTriton, free_port

ROOT = Path(__file__).resolve().parents[1]
IDS = np.array([[1, 2, 3]], dtype=np.int32)
MODEL_COST_MS = 300


def test_retryable_codes_are_exactly_the_three() -> None:
    assert frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED"}) == RETRYABLE_CODES
    assert RetryPolicy().retryable == RETRYABLE_CODES


def test_backoff_is_exponential_with_full_jitter_and_capped() -> None:
    policy = RetryPolicy(initial_backoff_s=0.1, multiplier=2.0, max_backoff_s=1.0)
    rng = random.Random(7)
    for retry, cap in [(1, 0.1), (2, 0.2), (3, 0.4), (4, 0.8), (5, 1.0), (9, 1.0)]:
        delays = [policy.backoff(retry, rng) for _ in range(400)]
        assert all(0.0 <= d <= cap for d in delays)
        # Full jitter: spread over the whole window, not clustered at the cap.
        assert min(delays) < cap * 0.1 and max(delays) > cap * 0.9


def test_channel_args_keep_tritonclient_defaults_and_cap_reconnect_backoff() -> None:
    args = dict(channel_args([("grpc.max_receive_message_length", 1000)]))
    assert args["grpc.max_receive_message_length"] == 1000  # the override wins
    assert args["grpc.max_send_message_length"] == 2**31 - 1  # tritonclient's default kept
    assert args["grpc.max_reconnect_backoff_ms"] == MAX_RECONNECT_BACKOFF_MS
    assert "grpc.keepalive_time_ms" in args


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[int, str, float]] = []

    def __call__(self, attempt: int, code: str, delay: float) -> None:
        self.calls.append((attempt, code, delay))


@pytest.mark.triton
def test_unavailable_is_retried_until_the_server_comes_up() -> None:
    """A real closed port gives UNAVAILABLE; the client backs off until Triton listens."""
    port = free_port()
    recorder = Recorder()
    policy = RetryPolicy(
        max_attempts=1000, initial_backoff_s=0.05, max_backoff_s=0.3, total_timeout_s=120
    )
    result: dict[str, object] = {}

    def call() -> None:
        url = f"127.0.0.1:{port}"
        with TritonClient(url, "claude_code", policy=policy, on_retry=recorder) as c:
            try:
                result["output"] = c.infer(IDS)
            except Exception as exc:  # reported by the assertion below
                result["error"] = exc

    caller = threading.Thread(target=call, daemon=True)
    caller.start()
    time.sleep(1.0)  # the client is failing against the closed port meanwhile
    assert caller.is_alive() and recorder.calls
    ccs = parse_service(yaml.safe_load((ROOT / "samples" / "cpu-dev.yaml").read_text()))
    with LocalTriton.for_service(ccs, grpc_port=port, env={"CCS_SAMPLE_BATCH_COST_MS": "1"}):
        ready = time.monotonic()
        caller.join(timeout=60)
        recovered_after = time.monotonic() - ready
    # Served within the capped channel reconnect backoff plus one retry wait, not the
    # up-to-120 s gRPC default backoff.
    assert recovered_after < MAX_RECONNECT_BACKOFF_MS / 1000 + 0.3 + 2.0, recovered_after
    assert "error" not in result, result
    assert getattr(result["output"], "shape", None) == (1, 3, 50257)
    assert {code for _, code, _ in recorder.calls} == {"UNAVAILABLE"}
    assert [a for a, _, _ in recorder.calls] == list(range(1, len(recorder.calls) + 1))


def test_unavailable_gives_up_after_max_attempts() -> None:
    recorder = Recorder()
    policy = RetryPolicy(max_attempts=3, initial_backoff_s=0.01)
    client = TritonClient(f"127.0.0.1:{free_port()}", "m", policy=policy, on_retry=recorder)
    with client, pytest.raises(InferenceFailed) as err:
        client.infer(IDS)
    assert (err.value.code, err.value.attempts) == ("UNAVAILABLE", 3)
    assert [(a, code) for a, code, _ in recorder.calls] == [(1, "UNAVAILABLE"), (2, "UNAVAILABLE")]


@pytest.fixture(scope="module")
def slow_server() -> Iterator[LocalTriton]:
    ccs = parse_service(yaml.safe_load((ROOT / "samples" / "queue-policy.yaml").read_text()))
    env = {"CCS_SAMPLE_BATCH_COST_MS": str(MODEL_COST_MS)}
    with LocalTriton.for_service(ccs, env=env) as triton:
        yield triton


@pytest.mark.triton
def test_deadline_exceeded_is_retried_with_a_deadline_per_attempt(slow_server: LocalTriton) -> None:
    recorder = Recorder()
    policy = RetryPolicy(max_attempts=3, initial_backoff_s=0.01, attempt_timeout_s=0.05)
    started = time.monotonic()
    client = TritonClient(slow_server.grpc_url, "claude_code", policy=policy, on_retry=recorder)
    with client, pytest.raises(InferenceFailed) as err:
        client.infer(IDS)
    assert (err.value.code, err.value.attempts) == ("DEADLINE_EXCEEDED", 3)
    assert [code for _, code, _ in recorder.calls] == ["DEADLINE_EXCEEDED"] * 2
    # Three 50 ms deadlines and two short waits: well under one 300 ms model execution x 3.
    assert time.monotonic() - started < 3 * MODEL_COST_MS / 1000


@pytest.mark.triton
def test_total_timeout_bounds_all_attempts(slow_server: LocalTriton) -> None:
    policy = RetryPolicy(
        max_attempts=100, initial_backoff_s=0.05, attempt_timeout_s=0.1, total_timeout_s=0.6
    )
    started = time.monotonic()
    client = TritonClient(slow_server.grpc_url, "claude_code", policy=policy)
    with client, pytest.raises(InferenceFailed) as err:
        client.infer(IDS)
    assert err.value.code == "DEADLINE_EXCEEDED" and err.value.attempts < 100
    assert time.monotonic() - started < 1.5


@pytest.mark.triton
def test_resource_exhausted_is_retried(slow_server: LocalTriton) -> None:
    recorder = Recorder()
    policy = RetryPolicy(max_attempts=2, initial_backoff_s=0.01)
    # The real gRPC limit: a [1, 3, 50257] fp32 response (~600 kB) exceeds 1000 bytes.
    small = [("grpc.max_receive_message_length", 1000)]
    client = TritonClient(
        slow_server.grpc_url,
        "claude_code",
        policy=policy,
        on_retry=recorder,
        extra_channel_args=small,
    )
    with client, pytest.raises(InferenceFailed) as err:
        client.infer(IDS)
    assert (err.value.code, err.value.attempts) == ("RESOURCE_EXHAUSTED", 2)
    assert [code for _, code, _ in recorder.calls] == ["RESOURCE_EXHAUSTED"]


@pytest.mark.triton
@pytest.mark.parametrize(
    ("model", "data", "code", "message"),
    [
        ("claude_code", IDS.astype(np.int64), "INVALID_ARGUMENT", "expects 'INT32'"),
        ("claude_code", np.ones((33, 1), np.int32), "INVALID_ARGUMENT", "batch-size must be <="),
        ("no_such_model", IDS, "NOT_FOUND", "unknown model"),
    ],
)
def test_non_retryable_codes_fail_on_the_first_attempt(
    slow_server: LocalTriton, model: str, data: np.ndarray, code: str, message: str
) -> None:
    recorder = Recorder()
    client = TritonClient(slow_server.grpc_url, model, on_retry=recorder)
    with client, pytest.raises(InferenceFailed) as err:
        client.infer(data)
    assert (err.value.code, err.value.attempts) == (code, 1)
    assert message in err.value.message
    assert recorder.calls == []


@pytest.mark.triton
def test_async_client_retries_load_shedding_and_not_bad_requests(
    slow_server: LocalTriton,
) -> None:
    """The queue policy sheds a flood with UNAVAILABLE; retrying clients all get served."""

    async def run() -> tuple[list[np.ndarray], Recorder, InferenceFailed]:
        recorder = Recorder()
        policy = RetryPolicy(
                max_attempts=30,
            initial_backoff_s=0.2,
            max_backoff_s=2.0,
            total_timeout_s=120,
            attempt_timeout_s=30,
        )
        async with AsyncTritonClient(
            slow_server.grpc_url, "claude_code", policy=policy, on_retry=recorder
        ) as client:
            outputs = await asyncio.gather(*(client.infer(IDS) for _ in range(200)))
            with pytest.raises(InferenceFailed) as err:
                await client.infer(IDS.astype(np.int64))
        return list(outputs), recorder, err.value

    outputs, recorder, bad = asyncio.run(run())
    assert len(outputs) == 200 and all(o.shape == (1, 3, 50257) for o in outputs)
    codes = {code for _, code, _ in recorder.calls}
    assert recorder.calls and codes == {"UNAVAILABLE"}, recorder.calls[:5]
    assert (bad.code, bad.attempts) == ("INVALID_ARGUMENT", 1)
