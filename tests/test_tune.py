"""`ccs-operator tune`: the search on a synthetic measure, its YAML, and one tiny real run.

The search is checked as behaviour: it finds the grid's best on a well-behaved objective
while measuring at most its budget, never measures a configuration twice, never picks a
candidate over the latency SLO, and prints a block that parses into a valid service with
the chosen values. The `triton` test runs the command end to end on a tiny search.
"""

from __future__ import annotations

import io
import math
import re
from pathlib import Path

import pytest
import yaml

from ccs_operator import cli
from ccs_operator.core.api import ClaudeCodeService, parse_service
from ccs_operator.core.tritonconfig import build_model_config
from ccs_operator.tune import (
    Candidate,
    Measurement,
    Progress,
    Space,
    confirm,
    confirmed_rps,
    coordinate_descent,
    default_budget,
    describe_runs,
    grid_search,
    report,
    with_candidate,
)

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "samples" / "claude-code.yaml"


def sample() -> ClaudeCodeService:
    return parse_service(yaml.safe_load(SAMPLE.read_text()))


class Synthetic:
    """rps peaks at maxBatch 16, delay 8000, 1 instance, ladder (three axes away from the
    sample's 32, 2000, 2); p99 grows with the delay and the batch. Counts calls."""

    def __init__(self, slo: float = 1e9) -> None:
        self.slo = slo
        self.calls: dict[object, int] = {}

    def rps(self, c: Candidate) -> float:
        mb = {8: 300, 16: 500, 32: 450}[c.max_batch_size]
        delay = {0: 0.8, 2000: 0.9, 8000: 1.0}[c.queue_delay_us]
        inst = {1: 1.0, 2: 0.7}[c.instances]
        sizes = c.preferred_batch_sizes  # what is rendered, not the policy's name
        pref = 0.95 if not sizes else 0.97 if len(sizes) == 1 else 1.0
        return mb * delay * inst * pref

    def p99(self, c: Candidate) -> float:
        return c.queue_delay_us / 1000 + 2 * c.max_batch_size

    def __call__(self, c: Candidate) -> Measurement:
        self.calls[c.key] = self.calls.get(c.key, 0) + 1
        return Measurement(c, self.rps(c), self.p99(c) / 2, self.p99(c), 4.0, 1.0, self.slo)


def test_preferred_policies_render_the_sizes_below_max_batch() -> None:
    assert Candidate(32, "ladder", 0, 1).preferred_batch_sizes == (8, 16, 32)
    assert Candidate(8, "ladder", 0, 1).preferred_batch_sizes == (8,)
    assert Candidate(12, "ladder", 0, 1).preferred_batch_sizes == (8, 12)
    assert Candidate(32, "max", 0, 1).preferred_batch_sizes == (32,)
    assert Candidate(32, "none", 0, 1).preferred_batch_sizes == ()


def test_grid_counts_equal_renderings_once() -> None:
    grid = Space().grid()
    # maxBatch 8: ladder == max, so 1 + 2 + 2 preferred choices, x 3 delays x 2 counts.
    assert len(grid) == 30
    assert len({c.key for c in grid}) == len(grid)
    # Triton serves no preferred size as preferred [maxBatchSize]: `none` adds nothing.
    assert len(Space(preferred=("none", "max", "ladder")).grid()) == 30
    assert Candidate(16, "none", 0, 1).key == Candidate(16, "max", 0, 1).key
    with pytest.raises(ValueError):
        Space(preferred=("none", "sometimes"))
    with pytest.raises(ValueError):
        Space(instances=(1, 1))


def test_start_is_the_services_own_configuration_snapped_to_the_space() -> None:
    assert Space().start(sample()) == Candidate(32, "ladder", 2000, 2)
    space = Space(max_batch_size=(4, 16), queue_delay_us=(0, 5000), instances=(1, 4))
    assert space.start(sample()) == Candidate(16, "ladder", 5000, 1)


def test_descent_finds_the_grids_best_measuring_a_quarter_of_it_or_less() -> None:
    space = Space()
    measure = Synthetic()
    grid = grid_search(space, Synthetic())
    search = coordinate_descent(space, space.start(sample()), measure)
    assert grid.best is not None and search.best is not None
    assert search.best.candidate.key == grid.best.candidate.key
    assert search.best.candidate == Candidate(16, "ladder", 8000, 1)
    assert len(search.measurements) <= len(space.grid()) // 4 == default_budget(space)
    assert all(n == 1 for n in measure.calls.values())  # memoised
    assert len(grid.measurements) == 30


def test_descent_never_picks_a_candidate_over_the_slo() -> None:
    space = Space()
    # p99 = delay + 2 * maxBatch: only maxBatch 8 stays within a 30 ms SLO.
    measure = Synthetic(slo=30.0)
    search = coordinate_descent(space, space.start(sample()), measure)
    grid = grid_search(space, Synthetic(slo=30.0))
    assert search.best is not None and search.best.feasible
    assert search.best.p99_ms <= 30.0
    assert grid.best is not None
    assert search.best.rps == pytest.approx(grid.best.rps)
    assert any(not m.feasible and m.rps > search.best.rps for m in search.measurements)


def test_a_measurement_over_the_slo_scores_below_any_within_it() -> None:
    c = Candidate(8, "none", 0, 1)
    fast_but_late = Measurement(c, 900.0, 10.0, 31.0, 8.0, 1.0, slo_p99_ms=30.0)
    slow_but_on_time = Measurement(c, 1.0, 10.0, 30.0, 1.0, 1.0, slo_p99_ms=30.0)
    assert not fast_but_late.feasible and slow_but_on_time.feasible
    assert fast_but_late.score == -math.inf < slow_but_on_time.score == 1.0


def test_descent_stops_at_its_budget() -> None:
    space = Space()
    search = coordinate_descent(space, space.start(sample()), Synthetic(), budget=3)
    assert len(search.measurements) == 3


def test_confirm_alternates_the_order_every_round() -> None:
    a, b = Candidate(8, "max", 0, 1), Candidate(32, "ladder", 2000, 2)
    order: list[Candidate] = []

    def measure(c: Candidate) -> Measurement:
        order.append(c)
        return Measurement(c, 100.0 + len(order), 25.0, 50.0, 2.0, 1.0, 100.0)

    runs = confirm(measure, [a, b], 3)
    assert order == [a, b, b, a, a, b]
    assert [m.rps for m in runs[a.key]] == [101.0, 104.0, 105.0]
    assert [m.rps for m in runs[b.key]] == [102.0, 103.0, 106.0]


def test_confirmed_rate_is_the_median_and_zero_when_the_median_p99_misses_the_slo() -> None:
    c = Candidate(8, "max", 0, 1)

    def run(rps: float, p99: float) -> Measurement:
        return Measurement(c, rps, p99 / 2, p99, 2.0, 1.0, 100.0)

    noisy = [run(300.0, 90.0), run(100.0, 99.0), run(200.0, 150.0)]
    assert confirmed_rps(noisy, 100.0) == 200.0  # one outlier each way is ignored
    assert confirmed_rps([run(300.0, 120.0), run(310.0, 101.0), run(290.0, 50.0)], 100.0) == 0
    assert describe_runs(noisy) == "200.0 req/s (100.0-300.0, p99 99.0 ms)"


def test_report_is_a_block_that_makes_a_valid_service_with_the_chosen_values() -> None:
    ccs = sample()
    search = coordinate_descent(Space(), Space().start(ccs), Synthetic())
    text, best = report(ccs, search, ["header line"])
    assert best is not None
    assert text.startswith("# header line\n")
    block = yaml.safe_load(text)
    assert set(block) == {"spec"}
    manifest = yaml.safe_load(SAMPLE.read_text())
    manifest["spec"].update(block["spec"])
    tuned = parse_service(manifest)
    assert tuned.spec.batching.max_batch_size == 16
    assert tuned.spec.batching.preferred_batch_sizes == (8, 16)
    assert tuned.spec.batching.max_queue_delay_microseconds == 8000
    assert [(g.count, g.kind) for g in tuned.spec.instance_groups] == [(1, "KIND_GPU")]
    # Every measurement behind it is listed.
    assert text.count("\n#   maxBatch") == len(search.measurements)


def test_report_says_so_when_nothing_meets_the_slo() -> None:
    ccs = sample()
    search = grid_search(Space(max_batch_size=(8,), instances=(1,)), Synthetic(slo=1.0))
    text, best = report(ccs, search)
    assert best is None and "no candidate met the latency SLO" in text
    assert yaml.safe_load(text) is None  # comments only: nothing to paste


def test_with_candidate_renders_the_candidates_triton_config() -> None:
    tuned = with_candidate(sample(), Candidate(8, "none", 0, 1))
    config = build_model_config(tuned.spec)
    assert config.max_batch_size == 8
    assert list(config.dynamic_batching.preferred_batch_size) == []
    assert config.dynamic_batching.max_queue_delay_microseconds == 0
    assert [g.count for g in config.instance_group] == [1]


def test_progress_bar_fills_with_each_step() -> None:
    stream = io.StringIO()
    progress = Progress(4, stream, width=8)
    progress.step("first")
    progress.step("second")
    lines = stream.getvalue().splitlines()
    assert lines == ["[##......] 1/4 first", "[####....] 2/4 second"]


def test_tune_rejects_a_bad_file_and_a_bad_space(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("spec: [")
    assert cli.main(["tune", "-f", str(bad)]) == 2
    assert cli.main(["tune", "-f", str(SAMPLE), "--preferred", "often"]) == 2


@pytest.mark.triton
@pytest.mark.timeout(300)
def test_tune_on_a_real_triton_prints_a_measured_block(
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = ["tune", "-f", str(SAMPLE), "--repository", "compute", "--slo-p99-ms", "60000"]
    args += ["--max-batch", "4,8", "--preferred", "max", "--queue-delay", "0,1000"]
    args += ["--instances", "1", "--concurrency", "4", "--window", "0.4", "--warmup", "0.1"]
    assert cli.main(args) == 0
    out, err = capsys.readouterr()
    block = yaml.safe_load(out)
    batching = block["spec"]["batching"]
    assert batching["maxBatchSize"] in (4, 8)
    assert batching["preferredBatchSizes"] == [batching["maxBatchSize"]]
    assert batching["maxQueueDelayMicroseconds"] in (0, 1000)
    assert block["spec"]["instanceGroups"][0]["count"] == 1
    measured = [line for line in out.splitlines() if line.startswith("#   maxBatch")]
    assert 1 <= len(measured) <= 3  # a budget of one sweep of the 2 x 2 grid
    rates = [float(m) for line in measured for m in re.findall(r"([0-9.]+) req/s", line)]
    assert len(rates) == len(measured) and all(r > 0 for r in rates)
    assert "] 1/3 " in err and "coordinate descent" in err
