"""The operator's rendered config on the real Triton (nvidia-pytriton's tritonserver, CPU).

Every sample in samples/ is rendered by ccs-operator exactly as for a cluster, assembled by
the model loader and served by the real tritonserver with the operator's flags. Two local
differences, asserted below so they are never silent (serving_image.local.local_model_config):
KIND_GPU instance groups run as KIND_CPU with the same count, and samples whose platform is
pytorch_libtorch (claude-code, prewarm, queue-policy) are served by the Python-backend sample
model, because nvidia-pytriton ships no libtorch backend. Everything else in the config
(max_batch_size, tensors, dynamic batching, queue policy, instance count, warm-up) is
checked against what the server reports it loaded.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
import tritonclient.http as httpclient
import tritonclient.http.aio as httpaio
import yaml
from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2 as pb
from tritonclient.utils import InferenceServerException

from ccs_operator.core.api import ClaudeCodeService, parse_service
from serving_image.local import LocalTriton, free_port, local_model_config

pytestmark = [pytest.mark.triton, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = sorted(p.name for p in (ROOT / "samples").glob("*.yaml"))
VOCAB = 50257


def load_sample(name: str, **model: Any) -> ClaudeCodeService:
    body = yaml.safe_load((ROOT / "samples" / name).read_text())
    body["spec"]["model"].update(model)
    return parse_service(body)


def served_config(triton: LocalTriton, model: str) -> pb.ModelConfig:
    """GET /v2/models/<model>/config, parsed into Triton's own schema."""
    raw = httpclient.InferenceServerClient(triton.http_url).get_model_config(model)
    return json_format.ParseDict(raw, pb.ModelConfig(), ignore_unknown_fields=True)


def http_infer(url: str, ids: np.ndarray) -> np.ndarray:
    client = httpclient.InferenceServerClient(url)
    tensor = httpclient.InferInput("input_ids", list(ids.shape), "INT32")
    tensor.set_data_from_numpy(ids)
    output = client.infer("claude_code", [tensor]).as_numpy("output")
    assert output is not None
    return output


def grpc_infer(url: str, ids: np.ndarray) -> np.ndarray:
    client = grpcclient.InferenceServerClient(url)
    tensor = grpcclient.InferInput("input_ids", list(ids.shape), "INT32")
    tensor.set_data_from_numpy(ids)
    output = client.infer("claude_code", [tensor]).as_numpy("output")
    assert output is not None
    return output


@pytest.fixture(scope="module", params=SAMPLES)
def sample_server(
    request: pytest.FixtureRequest,
) -> Iterator[tuple[ClaudeCodeService, LocalTriton]]:
    ccs = load_sample(request.param)
    # A fast model: this fixture checks loading and contracts, not timing.
    with LocalTriton.for_service(ccs, env={"CCS_SAMPLE_BATCH_COST_MS": "1"}) as triton:
        yield ccs, triton


def test_sample_config_loads_and_matches_what_the_operator_rendered(
    sample_server: tuple[ClaudeCodeService, LocalTriton],
) -> None:
    ccs, triton = sample_server
    name = ccs.spec.model.name
    assert triton.is_model_ready(name), triton.log_tail()
    rendered, notes = local_model_config(ccs)
    served = served_config(triton, name)

    # The local substitutions are explicit, and only these.
    if ccs.spec.model.platform != "python":
        assert any(f"platform {ccs.spec.model.platform}" in n for n in notes)
    if any(g.kind == "KIND_GPU" for g in ccs.spec.instance_groups):
        assert any("KIND_GPU" in n and "KIND_CPU" in n for n in notes)
    assert served.backend == "python"

    assert served.name == name
    assert served.max_batch_size == ccs.spec.batching.max_batch_size
    assert list(served.input) == list(rendered.input)
    assert list(served.output) == list(rendered.output)
    assert served.version_policy == rendered.version_policy
    assert [(g.count, g.kind) for g in served.instance_group] == [
        (g.count, pb.ModelInstanceGroup.KIND_CPU) for g in ccs.spec.instance_groups
    ]
    assert served.HasField("dynamic_batching") == ccs.spec.batching.enabled
    dynamic, wanted = served.dynamic_batching, rendered.dynamic_batching
    assert dynamic.max_queue_delay_microseconds == wanted.max_queue_delay_microseconds
    assert dynamic.preserve_ordering == wanted.preserve_ordering
    # Triton fills an empty preferred_batch_size with max_batch_size (auto-complete).
    preferred = list(wanted.preferred_batch_size) or [ccs.spec.batching.max_batch_size]
    assert list(dynamic.preferred_batch_size) == preferred
    queue = ccs.spec.batching.queue_policy
    if queue is not None:
        policy = dynamic.default_queue_policy
        assert policy.max_queue_size == queue.max_queue_size
        assert policy.default_timeout_microseconds == queue.timeout_microseconds
        assert policy.allow_timeout_override == queue.allow_timeout_override
        assert pb.ModelQueuePolicy.TimeoutAction.Name(policy.timeout_action) == (
            queue.timeout_action
        )
    assert list(served.model_warmup) == list(rendered.model_warmup)
    assert bool(served.model_warmup) == ccs.spec.model.warmup.enabled


def test_inference_over_http_and_grpc_returns_the_declared_shape(
    sample_server: tuple[ClaudeCodeService, LocalTriton],
) -> None:
    _, triton = sample_server
    ids = np.array([[1, 2, 3, 4, 5], [6, 7, 8, 9, 10]], dtype=np.int32)
    over_http = http_infer(triton.http_url, ids)
    over_grpc = grpc_infer(triton.grpc_url, ids)
    for output in (over_http, over_grpc):
        assert output.shape == (2, 5, VOCAB)  # [batch] + dims [-1, 50257], -1 = 5 tokens
        assert output.dtype == np.float32
    # Deterministic: same tokens, same logits, whichever protocol.
    np.testing.assert_array_equal(over_http, over_grpc)
    assert not np.array_equal(over_http[0, 0], over_http[0, 1])


def test_metrics_port_serves_queue_duration_and_summary_latencies(
    sample_server: tuple[ClaudeCodeService, LocalTriton],
) -> None:
    ccs, triton = sample_server
    grpc_infer(triton.grpc_url, np.ones((1, 4), dtype=np.int32))
    model = ccs.spec.model.name
    queue = triton.metric_values("nv_inference_queue_duration_us")
    assert any(dict(labels).get("model") == model for labels in queue), queue
    counts = triton.metric_values("nv_inference_count")
    assert sum(v for k, v in counts.items() if dict(k).get("model") == model) >= 1
    # --metrics-config=summary_latencies=true, as the operator passes: quantile series exist.
    text = triton.metrics_text()
    assert 'nv_inference_queue_summary_us{' in text and 'quantile="0.99"' in text


# -- degradation: the queue policy rejects instead of queueing without bound ----------------

QUEUE_SAMPLE = "queue-policy.yaml"
FLOOD = 200  # requests sent at once; 2 instances x 32 in flight + 64 queued fit at most


@pytest.fixture(scope="module")
def bounded_server() -> Iterator[tuple[ClaudeCodeService, LocalTriton]]:
    ccs = load_sample(QUEUE_SAMPLE)
    assert ccs.spec.batching.queue_policy is not None
    assert ccs.spec.batching.queue_policy.max_queue_size == 64
    # 300 ms per batch: the flood arrives far faster than the two instances can drain it.
    with LocalTriton.for_service(ccs, env={"CCS_SAMPLE_BATCH_COST_MS": "300"}) as triton:
        yield ccs, triton


def _grpc_flood(url: str, count: int) -> list[Any]:
    async def run() -> list[Any]:
        client = grpcaio.InferenceServerClient(url)
        ids = np.ones((1, 1), dtype=np.int32)

        async def one() -> Any:
            tensor = grpcclient.InferInput("input_ids", [1, 1], "INT32")
            tensor.set_data_from_numpy(ids)
            started = time.monotonic()
            try:
                await client.infer("claude_code", [tensor], client_timeout=30)
                return ("ok", None, time.monotonic() - started)
            except InferenceServerException as exc:
                return (exc.status(), exc.message(), time.monotonic() - started)

        try:
            return list(await asyncio.gather(*(one() for _ in range(count))))
        finally:
            await client.close()

    return asyncio.run(run())


def _http_flood(url: str, count: int) -> list[Any]:
    async def run() -> list[Any]:
        client = httpaio.InferenceServerClient(url, conn_limit=count)
        ids = np.ones((1, 1), dtype=np.int32)

        async def one() -> Any:
            tensor = httpaio.InferInput("input_ids", [1, 1], "INT32")
            tensor.set_data_from_numpy(ids)
            try:
                await client.infer("claude_code", [tensor])
                return ("ok", None)
            except InferenceServerException as exc:
                return (exc.status(), exc.message())

        try:
            return list(await asyncio.gather(*(one() for _ in range(count))))
        finally:
            await client.close()

    return asyncio.run(run())


def test_over_the_queue_limit_grpc_requests_are_rejected_at_once_with_unavailable(
    bounded_server: tuple[ClaudeCodeService, LocalTriton],
) -> None:
    _, triton = bounded_server
    results = _grpc_flood(triton.grpc_url, FLOOD)
    outcomes = Counter((status, (message or "").split("] ")[-1]) for status, message, _ in results)
    full = [r for r in results if r[1] and "Exceeds maximum queue size" in r[1]]
    # Documented degradation: UNAVAILABLE "Exceeds maximum queue size" (or, for a request
    # that waited past timeoutMicroseconds, "Request timeout expired"); nothing else fails.
    assert full, outcomes
    assert all(status == "StatusCode.UNAVAILABLE" for status, _, _ in full)
    allowed = {"Exceeds maximum queue size", "Request timeout expired", ""}
    assert {message for _, message in outcomes} <= allowed, outcomes
    assert outcomes[("ok", "")] > 0, outcomes
    # The bound holds: at most 2 instances x 32 executing + 64 queued were ever accepted
    # (accepted = served + timed out in the queue); everything beyond was refused.
    accepted = len(results) - len(full)
    assert accepted <= 2 * 32 + 64, outcomes
    assert len(full) >= FLOOD - (2 * 32 + 64), outcomes
    # Rejection is immediate: it does not wait for the 300 ms batches ahead of it, so the
    # first refusal comes back before the first answer.
    served = [elapsed for status, _, elapsed in results if status == "ok"]
    assert min(elapsed for *_, elapsed in full) < min(served)


def test_over_the_queue_limit_http_requests_are_rejected(
    bounded_server: tuple[ClaudeCodeService, LocalTriton],
) -> None:
    _, triton = bounded_server
    results = _http_flood(triton.http_url, FLOOD)
    full = [r for r in results if r[1] and "Exceeds maximum queue size" in r[1]]
    assert full, Counter(results)
    # Triton maps UNAVAILABLE to HTTP 503 Service Unavailable.
    assert {status for status, _ in full} == {"503"}, Counter(results)


# -- warm-up: the model is ready only after its warm-up requests ran ------------------------

WARMUP_COUNT = 3
WARMUP_BATCH_COST_MS = 400


def test_warmup_runs_on_every_instance_before_the_model_is_ready(tmp_path: Path) -> None:
    warmup = {"enabled": True, "batchSize": 1, "count": WARMUP_COUNT}
    ccs = load_sample("prewarm.yaml", warmup=warmup)
    instances = sum(g.count for g in ccs.spec.instance_groups)
    trace = tmp_path / "trace.jsonl"
    http_port = free_port()
    polls: list[tuple[float, bool]] = []
    stop = threading.Event()

    def poll() -> None:
        import urllib.request

        url = f"http://127.0.0.1:{http_port}/v2/models/claude_code/ready"
        while not stop.is_set():
            try:
                with urllib.request.urlopen(url, timeout=1) as response:
                    ok = response.status == 200
            except OSError:  # refused while loading, or HTTP 400 "not ready"
                ok = False
            polls.append((time.time(), ok))
            time.sleep(0.02)

    server = LocalTriton.for_service(
        ccs,
        http_port=http_port,
        env={
            "CCS_SAMPLE_BATCH_COST_MS": str(WARMUP_BATCH_COST_MS),
            "CCS_SAMPLE_TRACE_FILE": str(trace),
        },
    )
    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    try:
        with server as triton:
            served = served_config(triton, "claude_code")
            assert [(w.batch_size, w.count) for w in served.model_warmup] == [(1, WARMUP_COUNT)]
            time.sleep(0.2)
            first_ready = next(t for t, ok in polls if ok)
            # A real request after READY is recorded too, and is not a warm-up one.
            grpc_infer(triton.grpc_url, np.full((1, 2), 7, dtype=np.int32))
    finally:
        stop.set()
        poller.join(timeout=5)

    records = [json.loads(line) for line in trace.read_text().splitlines()]
    warmups = [r for r in records if r["zero_input"]]
    real = [r for r in records if not r["zero_input"]]
    # count warm-up executions on each instance (Triton warms every instance)...
    assert Counter(r["instance"] for r in warmups) == {
        f"claude_code_0_{i}": WARMUP_COUNT for i in range(instances)
    }, records
    assert all(r["batch"] == 1 for r in warmups)
    # ...all finished before the server ever reported the model ready...
    assert max(r["t_end"] for r in warmups) < first_ready, (records, first_ready)
    # ...and the model was not ready while they ran (polled from before the server started).
    assert polls[0][0] < min(r["t_start"] for r in warmups)
    assert not any(ok for t, ok in polls if t <= max(r["t_end"] for r in warmups))
    # Each instance spent its warm-up time (count x batch cost) before READY.
    assert first_ready - min(r["t_start"] for r in warmups) >= (
        WARMUP_COUNT * WARMUP_BATCH_COST_MS / 1000
    )
    assert len(real) == 1 and real[0]["t_start"] > first_ready


def test_without_warmup_no_warmup_request_runs(tmp_path: Path) -> None:
    """The control: the zero-input executions above come from model_warmup, nothing else."""
    ccs = load_sample("prewarm.yaml", warmup={"enabled": False})
    trace = tmp_path / "trace.jsonl"
    env = {"CCS_SAMPLE_BATCH_COST_MS": "1", "CCS_SAMPLE_TRACE_FILE": str(trace)}
    with LocalTriton.for_service(ccs, env=env) as triton:
        assert not served_config(triton, "claude_code").model_warmup
        assert triton.is_model_ready("claude_code")
    assert not trace.exists() or trace.read_text() == ""
