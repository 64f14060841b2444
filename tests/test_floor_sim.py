"""bench/floor_sim.py as a user runs it: any request CSV replays, --json has the agreed shape,
and the pieces the comparison rests on (the frontier, the HPA model) behave."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import floor_sim  # noqa: E402


def _write(path: Path, header: str, rows: list[str]) -> Path:
    path.write_text(header + "\n" + "\n".join(rows) + "\n")
    return path


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "bench" / "floor_sim.py"), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
        check=False,
    )


def test_trace_json_has_every_configuration(tmp_path: Path) -> None:
    # 20 minutes of requests: a steady trickle with a burst, timestamps in seconds, weights.
    rows = [f"{t / 10:.1f},{2 if 600 <= t / 10 < 660 else 1}" for t in range(0, 12_000, 3)]
    trace = _write(tmp_path / "t.csv", "timestamp,weight", rows)
    done = _run("--trace", str(trace), "--mean-rps", "150", "--seeds", "1", "--json")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    configs = out["configurations"]
    hpa = [c for c in configs if c["kind"] == "hpa"]
    assert set(range(30, 81, 5)) <= {c["hpa_cpu_target"] for c in hpa}
    assert {c["kind"] for c in configs} == {"hpa", "floor", "floor+prewarm"}
    for c in configs:
        assert set(c) >= {"name", "kind", "hpa_cpu_target", "requests", "violating", "gpu_hours"}
        assert c["requests"] > 0 and 0 <= c["violating"] <= c["requests"] and c["gpu_hours"] > 0
    # Every configuration saw the same requests (the scaled trace, after the warm-up).
    assert len({round(c["requests"]) for c in configs}) == 1
    assert "frontier_comparison" in out


def test_iso_timestamps_and_header_case(tmp_path: Path) -> None:
    rows = [
        f"2023-11-16 18:{m:02d}:{s:02d}.5000000,7,9" for m in range(20) for s in range(0, 60, 2)
    ]
    trace = _write(tmp_path / "azure.csv", "TIMESTAMP,ContextTokens,GeneratedTokens", rows)
    loaded = floor_sim.load_trace(trace, 1.0, 100.0)
    assert len(loaded.work) == pytest.approx(20 * 60, abs=2)
    assert sum(loaded.work) / len(loaded.work) == pytest.approx(100.0)
    done = _run("--trace", str(trace), "--seeds", "1", "--json")
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize(
    ("header", "rows", "message"),
    [
        ("time,weight", ["1,1"], "column named timestamp"),
        ("timestamp", ["yesterday"], "row 2"),
        ("timestamp,weight", ["1,heavy"], "weight 'heavy'"),
        ("timestamp,weight", ["1,-1"], "weight must be"),
        ("timestamp", [], "no requests"),
    ],
)
def test_bad_traces_are_refused_with_the_row(
    tmp_path: Path, header: str, rows: list[str], message: str
) -> None:
    trace = _write(tmp_path / "bad.csv", header, rows)
    done = _run("--trace", str(trace), "--json")
    assert done.returncode == 2 and message in done.stderr, done.stderr


def test_frontier_interpolates_between_pareto_points() -> None:
    points = [(10.0, 100.0), (20.0, 40.0), (15.0, 90.0), (30.0, 50.0), (40.0, 10.0)]
    # (30, 50) is beaten by (20, 40): not on the frontier.
    assert floor_sim.pareto(points) == [(10.0, 100.0), (15.0, 90.0), (20.0, 40.0), (40.0, 10.0)]
    assert floor_sim.frontier_at(points, 30.0) == pytest.approx(25.0)
    assert floor_sim.frontier_at(points, 15.0) == 90.0
    assert floor_sim.frontier_at(points, 5.0) is None
    assert floor_sim.frontier_at(points, 50.0) is None


def test_hpa_counts_unready_pods_as_idle_and_respects_its_limits() -> None:
    hpa = floor_sim.Hpa(target=0.5, spec_min=2, spec_max=20)
    # 4 pods, 2 ready at 100%: with the 2 starting pods at 0% the ratio is 1.0, no change.
    assert hpa.recommend(current=4, ready=2, utilisation=1.0) == 4
    assert hpa.recommend(current=4, ready=4, utilisation=1.0) == 8
    assert hpa.recommend(current=4, ready=4, utilisation=0.52) == 4  # within tolerance
    # Scale-up: at most max(2x, +4) per 30 s; a floor above the count is applied at once.
    assert hpa.sync(0.0, 2, 2, 1.5, floor=2) == 6
    assert hpa.sync(15.0, 6, 6, 1.5, floor=2) == 6  # the 30 s window already used
    assert hpa.sync(30.0, 6, 6, 1.0, floor=12) == 12
    # Scale-down: only after 300 s of lower recommendations, then one pod per minute.
    assert hpa.sync(45.0, 12, 12, 0.1, floor=2) == 12
    assert hpa.sync(400.0, 12, 12, 0.1, floor=2) == 11
    assert hpa.sync(415.0, 11, 11, 0.1, floor=2) == 11


def test_idle_service_has_no_violations_and_min_replicas() -> None:
    trace = floor_sim.Trace("idle", 5.0, [0.0] * 2000)
    setup = floor_sim.Setup()
    for config in floor_sim.configurations()[::6]:
        result = floor_sim.simulate(trace, config, setup, seed=1)
        assert result.violating == 0
        assert result.gpu_hours == pytest.approx(setup.min_replicas * 2000 * 5 / 3600)


def test_runs_are_reproducible() -> None:
    """The same seed gives the same figures: a result that moves between identical runs
    cannot be compared with anything."""
    trace = floor_sim.synthetic_trace(1, 3, 300.0, 5.0)
    config = floor_sim.Config("HPA + floor", "floor", 60)
    a = floor_sim.simulate(trace, config, floor_sim.Setup(), seed=3)
    b = floor_sim.simulate(trace, config, floor_sim.Setup(), seed=3)
    assert (a.violating, a.gpu_hours) == (b.violating, b.gpu_hours)
    assert a.floor_changes == b.floor_changes


def test_batching_serving_model() -> None:
    """Triton's dynamic batcher as the simulator serves it: one request per execution while
    an instance is free, back to back beyond that, saturated at the largest batch."""
    serving = floor_sim.BatchServing(0.04, 0.01, 8, 2, 0.1)
    assert serving.capacity == pytest.approx(2 * 8 / 0.12)
    assert serving.cycle(20.0) == (1.0, pytest.approx(0.05))
    batch, span = serving.cycle(100.0)
    assert span == pytest.approx(0.04 / (1 - 0.01 * 100 / 2)) and batch == pytest.approx(4.0)
    busy = serving.steady(100.0)
    # Busy all the time below saturation, and every wait within a share of one cycle.
    assert busy.busy == pytest.approx(2.0) and busy.executions == pytest.approx(25.0)
    assert busy.p99 <= serving.wait_span * span and busy.share_over == 0.0
    quiet = serving.steady(20.0)
    assert quiet.busy == pytest.approx(20 * 0.05) and quiet.executions == pytest.approx(20.0)


def test_the_floor_sizes_a_batching_service_from_its_batches() -> None:
    """Busy share alone reads a back-to-back batcher as saturated and drove the floor to
    several times the HPA's GPUs; the cost line sizes it near what the load needs."""
    trace = floor_sim.synthetic_trace(1, 1, 300.0, 5.0)
    setup = floor_sim.Setup(serving_model="batching")
    hpa = floor_sim.simulate(trace, floor_sim.Config("hpa", "hpa", 60), setup, seed=1)
    floor = floor_sim.simulate(trace, floor_sim.Config("floor", "floor", 60), setup, seed=1)
    assert floor.gpu_hours < 1.5 * hpa.gpu_hours


def test_synthetic_trace_keeps_its_demand_without_bursts() -> None:
    """`known` is the same trace without its unannounced bursts: equal outside every burst's
    window, lower somewhere inside them, and `work` itself as before (the seeds' figures)."""
    trace = floor_sim.synthetic_trace(2, 4, 300.0, 5.0)
    assert len(trace.known) == len(trace.work)
    kinds = floor_sim._step_kinds(
        floor_sim.Trace(
            "bursts", 5.0, trace.work, windows=[w for w in trace.windows if w[0] == "burst"]
        )
    )
    outside = [i for i, k in enumerate(kinds) if k == "elsewhere"]
    assert all(trace.known[i] == trace.work[i] for i in outside)
    assert all(k <= w for k, w in zip(trace.known, trace.work, strict=True))
    assert sum(trace.work) - sum(trace.known) > 0.01 * sum(trace.work)


def _oracle(headroom: float) -> floor_sim.Config:
    return floor_sim.Config(f"oracle +{headroom:.0%}", "oracle", 60, headroom)


@pytest.mark.parametrize("headroom", [0.0, 0.3])
def test_the_oracle_floor_never_reads_the_bursts(headroom: float) -> None:
    """Two traces identical but for their unannounced bursts give the oracle the same floor
    at every step (with the HPA under it seeing the bursts, and the pods starting then)."""
    trace = floor_sim.synthetic_trace(1, 2, 300.0, 5.0)
    calm = floor_sim.Trace("calm", trace.dt, list(trace.known), known=list(trace.known))
    setup = floor_sim.Setup()
    logs: list[list[tuple[float, float, int, int, float, int]]] = [[], []]
    results = [
        floor_sim.simulate(t, _oracle(headroom), setup, seed=2, log=log)
        for t, log in zip((trace, calm), logs, strict=True)
    ]
    floors = [[step[5] for step in log] for log in logs]
    assert floors[0] == floors[1]
    assert len(set(floors[0])) > 3  # the floor follows the known demand up and down
    # ...and the bursts were there: more load, and violations the known demand did not have.
    assert sum(trace.work) > 1.01 * sum(calm.work)
    assert results[0].violating > 2 * results[1].violating


def test_the_oracle_floor_buys_fewer_violations_with_gpus() -> None:
    trace = floor_sim.synthetic_trace(1, 5, 300.0, 5.0)
    setup = floor_sim.Setup()
    none, lots = (floor_sim.simulate(trace, _oracle(h), setup, seed=5) for h in (0.0, 1.0))
    assert lots.gpu_hours > 1.3 * none.gpu_hours
    assert lots.violating < 0.5 * none.violating
    # Headroom 0 still holds what the known demand needs: fewer violations than the HPA.
    hpa = floor_sim.simulate(trace, floor_sim.Config("hpa", "hpa", 60), setup, seed=5)
    assert none.violating < hpa.violating


def test_the_oracle_needs_the_split_and_a_trace_file_skips_it(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="without bursts"):
        floor_sim.simulate(
            floor_sim.Trace("file", 5.0, [1.0] * 100), _oracle(0.0), floor_sim.Setup(), seed=1
        )
    rows = [f"{t / 10:.1f}" for t in range(0, 6_000, 4)]
    trace = _write(tmp_path / "t.csv", "timestamp", rows)
    done = _run("--trace", str(trace), "--seeds", "1", "--bound", "--json")
    assert done.returncode == 0, done.stderr
    assert "--bound skipped" in done.stderr
    kinds = {c["kind"] for c in json.loads(done.stdout)["configurations"]}
    assert kinds == {"hpa", "floor", "floor+prewarm"}


def _fake_run(oracle_violating: float) -> list[tuple[int, list[floor_sim.Result], list[str], str]]:
    def result(name: str, kind: str, target: int, gpu: float, bad: float) -> floor_sim.Result:
        by_kind = {"burst": bad / 2, "peak": bad / 4, "elsewhere": bad / 4}
        return floor_sim.Result(name, kind, target, 1e6, bad, gpu, violating_by_kind=by_kind)

    results = [
        result("plain HPA, CPU 30%", "hpa", 30, 40.0, 10.0),
        result("plain HPA, CPU 45%", "hpa", 45, 20.0, 40.0),
        result("plain HPA, CPU 60%", "hpa", 60, 10.0, 100.0),
        result("HPA + floor", "floor", 60, 20.0, 30.0),
        result("oracle floor +0%, CPU 60%", "oracle", 60, 15.0, 1e6),
        result("oracle floor +50%, CPU 60%", "oracle", 60, 20.0, oracle_violating),
    ]
    return [(1, results, [], "synthetic seed 1")]


@pytest.mark.parametrize(
    ("oracle_violating", "said"),
    [
        (10.0, "reaches the goal (<= 0.5x)"),
        (24.0, "Even the bound misses the goal"),
    ],
)
def test_the_bound_section_states_its_verdict_from_the_figures(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    oracle_violating: float,
    said: str,
) -> None:
    """The bound's best point is the lowest median vs the frontier, and the section says
    whether it reaches 0.5x, and how far the floor is from it, from those figures."""
    monkeypatch.setattr(floor_sim, "run_all", lambda *_: _fake_run(oracle_violating))
    assert floor_sim.main(["--bound", "--seeds", "1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(floor_sim.BOUND_HEADING + "\n")
    ratio = oracle_violating / 40.0
    assert f"Best point: oracle floor +50%, CPU 60%, {ratio:.2f}x" in out
    assert "the floor: 0.75x" in out and said in out
    if ratio <= 0.5:
        assert f"covers {(1 - 0.75) / (1 - ratio):.0%} of the way" in out


def test_the_oracle_floor_looks_ahead_by_a_cold_start() -> None:
    """A known rise is in the floor one look-ahead (p95 cold start + one evaluation) before
    it comes, and not before that; headroom multiplies what the known demand needs."""
    setup = floor_sim.Setup()
    serving = setup.serving()
    dt = 5.0
    known = [100.0] * 200 + [400.0] * 200
    ahead = floor_sim.oracle_look_ahead(setup)
    assert 280 < ahead < 320
    needed = floor_sim.replicas_at_target(serving, 400.0, setup.max_replicas)
    assert floor_sim.replicas_at_target(serving, 100.0, setup.max_replicas) < needed
    first = 200 - int(ahead // dt)
    assert floor_sim.oracle_floor(known, first, dt, serving, setup, 0.0) == needed
    before = floor_sim.oracle_floor(known, first - 2, dt, serving, setup, 0.0)
    assert before < needed
    assert floor_sim.oracle_floor(known, first, dt, serving, setup, 0.5) == math.ceil(1.5 * needed)
