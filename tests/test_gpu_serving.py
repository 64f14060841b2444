"""bench/gpu_serving.py, the prepared GPU script, checked where there is no GPU.

The batcher's rule (take_batch) is pure and checked case by case; the threaded batcher is
checked to answer every request with the model's own logits for it; the device check is
seen refusing a backend whose answers differ; and the whole script runs at `--tiny` on the
host CPU (`--allow-cpu`), writing its section. Behaviour only: no timing is asserted.
"""

from __future__ import annotations

import math
import sys
from collections import deque
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "operator"))

import gpu_serving as gs  # noqa: E402
from ccs_operator.tune import Candidate  # noqa: E402


def queue_of(shapes: list[int], queued: list[float]) -> deque[gs.Request]:
    return deque(
        gs.Request(np.zeros((1, n), dtype=np.int32), t) for n, t in zip(shapes, queued, strict=True)
    )


LADDER = Candidate(16, "ladder", 1000, 1)  # preferred 8 and 16 (the tuner's ladder)


def test_take_batch_without_batching_sends_the_oldest_alone_at_once() -> None:
    queue = queue_of([1, 1, 1], [0.0, 0.0, 0.0])
    batch, wait = gs.take_batch(queue, LADDER, batching=False, now=0.0)
    assert batch == [queue[0]] and wait == 0.0


def test_take_batch_waits_for_the_queue_delay_below_a_preferred_size() -> None:
    queue = queue_of([1], [10.0])
    batch, wait = gs.take_batch(queue, LADDER, batching=True, now=10.0004)
    assert batch == []
    assert wait == pytest.approx(0.0006)
    batch, wait = gs.take_batch(queue, LADDER, batching=True, now=10.001)
    assert batch == [queue[0]] and wait == 0.0  # the delay is spent: what has gathered goes


def test_take_batch_sends_at_once_at_a_preferred_size_of_the_oldest_shape_only() -> None:
    queue = queue_of([2, 1] * 8, [0.0] * 16)
    batch, wait = gs.take_batch(queue, LADDER, batching=True, now=0.0)
    assert [r.ids.shape for r in batch] == [(1, 2)] * 8  # length 1 waits its turn
    assert batch == list(queue)[::2] and wait == 0.0
    seven = queue_of([1] * 7, [0.0] * 7)
    assert gs.take_batch(seven, LADDER, batching=True, now=0.0)[0] == []  # 7 is not preferred


def test_take_batch_caps_a_batch_at_max_batch_size() -> None:
    queue = queue_of([1] * 21, [0.0] * 21)
    batch, _ = gs.take_batch(queue, LADDER, batching=True, now=5.0)
    assert batch == list(queue)[:16]


def test_take_batch_of_an_empty_queue_waits_for_a_request() -> None:
    assert gs.take_batch(deque(), LADDER, batching=True, now=0.0) == ([], math.inf)


def test_batcher_answers_each_request_with_its_own_logits_and_counts_executions() -> None:
    model = gs.NumpyBackend(d_model=16)
    batcher = gs.Batcher(model, Candidate(4, "max", 50_000, 2), batching=True)
    try:
        rng = np.random.default_rng(3)
        inputs = [rng.integers(0, 50257, size=(1, n), dtype=np.int32) for n in (1, 2, 1, 1, 2, 1)]
        requests = [batcher.submit(ids) for ids in inputs]
        for request in requests:
            assert request.done.wait(30)
    finally:
        batcher.stop()
    assert batcher.inferences == len(inputs)
    assert batcher.executions < len(inputs)  # equal shapes were batched
    for request, ids in zip(requests, inputs, strict=True):
        assert request.finished >= request.queued
        assert request.logits is not None
        np.testing.assert_allclose(request.logits, model.forward(ids)[0], rtol=1e-5, atol=1e-6)


def test_a_device_whose_answers_differ_from_the_model_is_refused() -> None:
    block = gs.sb.load_compute_module().Block(vocab=gs.sb.VOCAB, d_model=16)
    right = gs.NumpyBackend(d_model=16)
    gs.check_same_answers(right, block)  # the positive control: same weights pass

    class Wrong(gs.NumpyBackend):
        def forward(self, ids: np.ndarray) -> np.ndarray:
            return super().forward(ids) * 1.01

    with pytest.raises(SystemExit, match="logits differ"):
        gs.check_same_answers(Wrong(d_model=16), block)


def test_without_a_gpu_the_script_refuses_unless_allowed_on_the_cpu() -> None:
    pytest.importorskip("numpy")
    try:
        import torch  # noqa: F401

        pytest.skip("torch is installed here; the refusal is for machines without it")
    except ImportError:
        pass
    with pytest.raises(SystemExit, match="--allow-cpu"):
        gs.main(["--tiny"])


def test_tiny_run_on_the_cpu_writes_its_section(tmp_path: Path) -> None:
    results = tmp_path / "RESULTS.md"
    results.write_text("# Results\n\n## Another section\n\nkept\n")
    assert gs.main(["--allow-cpu", "--tiny", "--commit", "abc1234", "--write", str(results)]) == 0
    text = results.read_text()
    assert "## Another section\n\nkept" in text
    section = text[text.index(gs.RESULTS_HEADING) :]
    assert "at commit abc1234" in section
    assert "numpy on the host CPU (no GPU" in section
    for size in gs.SIZES:
        assert f"\n| {size} | " in section  # one cost row per batch size
    assert section.count("closed loop c=4") >= 4  # two rows and two verdicts
    assert "Tuner (mixed lengths" in section and "of the grid's best" in section
