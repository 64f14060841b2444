"""bench/serving_bench.py and the real-compute model it serves.

The benchmark's pure parts (measuring order, Poisson schedule, length mix, percentiles,
spreads, the goal's clauses, the throughput window) are checked as functions; the model's
computation in process (deterministic, [batch, seq, 50257], batching does not change a
row's answer); and, marked `triton`, one end-to-end run at a tiny size on the real server.
Behaviour only: no timing is asserted.
"""

from __future__ import annotations

import asyncio
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import serving_bench as sb  # noqa: E402

# -- pure parts ------------------------------------------------------------------------------


def test_alternation_order_measures_each_mode_once_per_alternation_in_abba_order() -> None:
    order = sb.alternation_order(4)
    assert [mode for _, mode in order] == ["off", "on", "on", "off", "off", "on", "on", "off"]
    assert [i for i, _ in order] == [0, 0, 1, 1, 2, 2, 3, 3]
    assert sb.alternation_order(0) == []


def test_poisson_arrivals_are_sorted_inside_the_window_at_the_asked_rate() -> None:
    rng = np.random.default_rng(7)
    times = sb.poisson_arrivals(200.0, 50.0, rng)
    assert np.all(np.diff(times) > 0)
    assert times[0] >= 0 and times[-1] < 50.0
    # 10000 expected; a Poisson count has sd 100.
    assert abs(len(times) - 10000) < 500
    gaps = np.diff(times)
    # Exponential gaps: mean 1/rate, coefficient of variation 1 (not a fixed period).
    assert gaps.mean() == pytest.approx(1 / 200, rel=0.05)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, rel=0.1)
    assert len(sb.poisson_arrivals(0.0, 5.0, rng)) == 0


def test_poisson_arrivals_are_reproducible_from_the_seed() -> None:
    a = sb.poisson_arrivals(50, 2, np.random.default_rng(3))
    b = sb.poisson_arrivals(50, 2, np.random.default_rng(3))
    assert np.array_equal(a, b)


def test_length_mix_is_parsed_normalised_and_drawn_in_proportion() -> None:
    mix = sb.parse_mix("4:1,1:2,2:1")
    assert mix == {1: 0.5, 2: 0.25, 4: 0.25}
    lengths = sb.draw_lengths(mix, 8000, np.random.default_rng(1))
    share = {n: lengths.count(n) / len(lengths) for n in mix}
    assert share[1] == pytest.approx(0.5, abs=0.03)
    assert share[4] == pytest.approx(0.25, abs=0.03)
    with pytest.raises(ValueError):
        sb.parse_mix("0:1")


def test_percentile_is_nearest_rank_and_unanswered_requests_count_as_slowest() -> None:
    values = [float(x) for x in range(1, 101)]
    assert sb.percentile(values, 50) == 50
    assert sb.percentile(values, 99) == 99
    # Nearest rank rounds up: of 10 values the p99 is the largest, of 9 the p50 the 5th.
    assert sb.percentile(values[:10], 99) == 10
    assert sb.percentile(values[:9], 50) == 5
    assert sb.percentile([*values[:98], math.inf, math.inf], 99) == math.inf
    assert sb.percentile([*values[:99], math.inf], 99) == 99
    assert math.isnan(sb.percentile([], 99))


def test_spread_is_the_median_with_min_and_max_and_skips_nan() -> None:
    s = sb.spread([3.0, 1.0, 10.0, math.nan])
    assert (s.median, s.low, s.high, s.n) == (3.0, 1.0, 10.0, 3)
    assert s.format(1) == "3.0 (1.0-10.0)"
    assert s.range(1, "x") == "1.0x-10.0x over 3"
    assert sb.spread([2.0]).format(2, "x") == "2.00x"
    assert sb.spread([]).format() == "n/a"
    assert sb.spread([math.inf, 1.0, math.inf]).format() == "sat. (1.0-sat.)"


def test_p99_clause_is_queue_delay_plus_one_batch_and_says_met_or_missed() -> None:
    clause = sb.p99_clause(p99_ms=50.0, queue_delay_ms=2.0, batch_ms=52.0)
    assert clause.bound == 54.0 and clause.met and clause.verdict == "met"
    # The figures: 96.9 ms against <= 54 ms is a miss.
    assert sb.p99_clause(96.9, 2.0, 52.0).verdict == "missed"
    assert sb.p99_clause(54.0, 2.0, 52.0).met
    assert not sb.p99_clause(math.inf, 2.0, 52.0).met
    assert not sb.p99_clause(math.nan, 2.0, 52.0).met


def test_speedup_clause_needs_at_least_the_target() -> None:
    assert sb.speedup_clause(4.0).met
    assert sb.speedup_clause(3.99).verdict == "missed"
    assert not sb.speedup_clause(math.nan).met


def test_throughput_window_counts_only_completions_inside_it() -> None:
    records = [(0.0, 0.5), (0.9, 1.0), (1.2, 1.5), (1.9, 2.0), (1.95, 2.1)]
    assert sb.in_window(records, 1.0, 2.0) == pytest.approx([100.0, 300.0, 100.0])


def test_ratios_pair_off_and_on_of_the_same_alternation() -> None:
    row = sb.Row("r", "closed", 10.0)
    for i, (off, on) in enumerate([(10, 40), (20, 40), (10, 50)]):
        row.windows["off"].append(sb.Window("r", "off", i, 1.0, [], off))
        row.windows["on"].append(sb.Window("r", "on", i, 1.0, [], on))
    ratios = row.ratios()
    # Per alternation 4x, 2x, 5x: median 4x (not median(on) / median(off) = 4x by chance:
    # the range shows the pairing).
    assert (ratios.median, ratios.low, ratios.high) == (4.0, 2.0, 5.0)
    assert row.figure("on", "rps").median == 40


def test_split_cores_gives_the_client_one_core_and_the_server_the_rest() -> None:
    assert sb.split_cores([0, 1]) == ({0}, {1})
    assert sb.split_cores([3, 1, 2]) == ({1}, {2, 3})
    assert sb.split_cores([0]) is None


# -- the real-compute model in process -------------------------------------------------------


@pytest.fixture(scope="module")
def block() -> object:
    return sb.load_compute_module().Block(vocab=sb.VOCAB, d_model=64)


def test_compute_model_output_is_logits_per_position_and_deterministic(block: object) -> None:
    ids = np.array([[1, 2, 3], [50256, 7, 50257 + 5]], dtype=np.int32)
    first = block.forward(ids)  # type: ignore[attr-defined]
    assert first.shape == (2, 3, 50257) and first.dtype == np.float32
    assert np.isfinite(first).all() and first.std() > 0
    again = sb.load_compute_module().Block(vocab=sb.VOCAB, d_model=64).forward(ids)
    assert np.array_equal(first, again)
    # Ids are taken modulo the vocabulary; different tokens give different logits.
    assert np.allclose(first[1, 2], block.forward(np.array([[50256, 7, 5]]))[0, 2], atol=1e-5)  # type: ignore[attr-defined]
    assert not np.allclose(first[0, 0], first[1, 0])


def test_compute_model_batching_does_not_change_a_rows_answer(block: object) -> None:
    ids = np.random.default_rng(0).integers(0, 50257, size=(8, 4))
    batched = block.forward(ids)  # type: ignore[attr-defined]
    for row in range(8):
        alone = block.forward(ids[row : row + 1])  # type: ignore[attr-defined]
        assert np.allclose(batched[row], alone[0], atol=1e-4)


def test_compute_model_is_causal(block: object) -> None:
    a = block.forward(np.array([[5, 6, 7, 8]]))  # type: ignore[attr-defined]
    b = block.forward(np.array([[5, 6, 9, 9]]))  # type: ignore[attr-defined]
    assert np.allclose(a[0, :2], b[0, :2], atol=1e-5)
    assert not np.allclose(a[0, 2], b[0, 2])


def test_cost_curve_has_every_size_and_length() -> None:
    curve = sb.cost_curve(d_model=32, sizes=[1, 2], lengths=[1, 3], repeats=1)
    assert set(curve) == {1, 3} and all(set(row) == {1, 2} for row in curve.values())
    assert all(ms > 0 for row in curve.values() for ms in row.values())


# -- end to end on the real Triton -----------------------------------------------------------


@pytest.mark.triton
@pytest.mark.timeout(300)
def test_compute_model_served_by_triton_batches_and_answers_as_in_process() -> None:
    import tritonclient.grpc as grpcclient
    import tritonclient.grpc.aio as grpcaio

    from serving_image.local import LocalTriton

    rng = np.random.default_rng(5)
    rows = [rng.integers(0, 50257, size=(1, 3), dtype=np.int32) for _ in range(12)]
    rows.append(np.array([[7]], dtype=np.int32))  # another length in the same burst
    expected = sb.load_compute_module().Block(vocab=sb.VOCAB, d_model=32)

    async def burst(url: str) -> list[np.ndarray]:
        client = grpcaio.InferenceServerClient(url)

        async def one(ids: np.ndarray) -> np.ndarray:
            tensor = grpcclient.InferInput("input_ids", list(ids.shape), "INT32")
            tensor.set_data_from_numpy(ids)
            output = (await client.infer(sb.MODEL, [tensor])).as_numpy("output")
            assert output is not None
            return output

        try:
            return list(await asyncio.gather(*(one(ids) for ids in rows)))
        finally:
            await client.close()

    ccs = yaml.safe_load(sb.SAMPLE.read_text())
    # A long queue delay so that the burst is batched however slowly this host sends it.
    ccs["spec"]["batching"]["maxQueueDelayMicroseconds"] = 200_000
    triton = LocalTriton.for_service(
        ccs, repository=str(sb.COMPUTE_MODEL_DIR), env={"CCS_COMPUTE_D_MODEL": "32"}
    )
    with triton:
        first = asyncio.run(burst(triton.grpc_url))
        again = asyncio.run(burst(triton.grpc_url))
        inferences, executions = sb.counters(triton)
    for ids, out, out2 in zip(rows, first, again, strict=True):
        assert out.shape == (1, ids.shape[1], 50257) and out.dtype == np.float32
        assert np.allclose(out, expected.forward(ids), atol=1e-4)
        assert np.allclose(out, out2, atol=1e-4)
    # The burst was batched: fewer executions than requests.
    assert executions < inferences


@pytest.mark.triton
@pytest.mark.timeout(300)
def test_benchmark_runs_end_to_end_and_writes_its_section(tmp_path: Path) -> None:
    results = tmp_path / "RESULTS.md"
    results.write_text("# Benchmark results\n\n## Other\n\nkept\n")
    tiny = "--alternations 2 --concurrency 4 --window 0.5 --warmup 0.2 --drain 1 --rates 10"
    args = [*tiny.split(), "--repeats", "1", "--d-model", "32", "--write", str(results)]
    assert sb.main(args) == 0
    text = results.read_text()
    assert "## Other\n\nkept" in text
    section = text[text.index(sb.RESULTS_HEADING) :]
    for label in (
        "closed loop c=4, mixed lengths",
        "closed loop c=4, length 1 only",
        "open loop Poisson 10 req/s, mixed",
        "GPU-like cost model",
    ):
        assert f"| {label}" in section
    goal = next(line for line in section.splitlines() if line.startswith("Goal:"))
    assert goal.count("**met**") + goal.count("**missed**") == 2
    assert "at commit" in section and "| 32 |" in section  # cost curve up to max batch
