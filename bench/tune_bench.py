"""`ccs-operator tune` against a full grid search, at the same SLO and load shape.

    python bench/tune_bench.py                           # prints the section
    python bench/tune_bench.py --write bench/RESULTS.md  # and updates it there

For each load shape of `--loads` (default: mixed request lengths, and one length only, each
with its p99 SLO at the sample configuration's own p99, the median of three measurements
taken first: a pick must keep the sample's tail and serve more; a fixed number of
milliseconds would be met by every configuration on a fast host and by none on a slow one),
both searches measure with the same serving_image.tune.TritonMeasure:
samples/claude-code.yaml re-rendered per candidate, the real-compute model
(serving_image/models/claude_code_compute) on the real tritonserver (CPU), a closed loop of
`--concurrency` gRPC clients, a candidate feasible when its p99 meets the SLO. The grid
measures every distinct configuration of the space once; the tuner (coordinate descent from
the sample's own values, budget a quarter of the grid) runs first, then the grid.

Goal (issue 18): the tuner's pick within 5% of the best throughput the grid found, in at
most 25% of the grid's measuring time. Measuring time is wall time per candidate, server
start included.

How the pick is judged. Each search measures a configuration once, and on a shared host one
measurement carries several percent of noise: the grid's best figure is the largest of 30
noisy figures, so it is biased upwards (the winner's curse), and the grid's figure for the
pick is one more noisy draw. So after both searches the pick and the grid's best are
measured again, side by side, `--confirm-rounds` times each in alternating order (A B, B A,
...), and the verdict compares their medians (both must still meet the SLO at the median
p99). The single-measurement comparison (the grid's own figure for the pick against the
grid's best figure) is printed beside it. The confirmation is the judge's cost, not the
tuner's: it is not counted in either search's time, nor is the reference measurement.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from results import commit, write_section

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "operator"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from ccs_operator.core.api import ClaudeCodeService, parse_service  # noqa: E402
from ccs_operator.tune import (  # noqa: E402
    Progress,
    Space,
    confirm,
    confirmed_rps,
    coordinate_descent,
    default_budget,
    describe_runs,
    grid_search,
    spec_block,
)
from serving_image.tune import COMPUTE_MODEL_DIR, Load, TritonMeasure, measure_notes  # noqa: E402

RESULTS_HEADING = "## Tuner: `ccs-operator tune` against a full grid"
SAMPLE = ROOT / "samples" / "claude-code.yaml"


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Slo:
    """A load's p99 SLO: `value` milliseconds, or (relative) `value` times the sample's own p99."""

    value: float
    relative: bool


def parse_loads(text: str) -> list[tuple[str, Slo]]:
    """`lengths@slo;...` -> [(lengths, Slo)]: `@250` is 250 ms, `@x1` the sample's own p99."""
    loads = []
    for part in text.split(";"):
        lengths, sep, slo = part.partition("@")
        if not sep or not lengths:
            raise SystemExit(f"--loads: {part!r} is not lengths@slo (e.g. 1:1@x1 or 1:1@100)")
        relative = slo.startswith("x")
        try:
            value = float(slo[1:] if relative else slo)
        except ValueError:
            raise SystemExit(
                f"--loads: SLO {slo!r} is neither milliseconds nor x<factor>"
            ) from None
        loads.append((lengths, Slo(value, relative)))
    return loads


def reference_p99(
    ccs: ClaudeCodeService, space: Space, load: Load, rounds: int
) -> tuple[float, list[float]]:
    """The sample's own configuration measured `rounds` times: the median p99 and every p99
    (a relative SLO is a multiple of the median)."""
    measure = TritonMeasure(ccs, load, math.inf, str(COMPUTE_MODEL_DIR))
    start = space.start(ccs)
    p99s = [measure(start).p99_ms for _ in range(rounds)]
    return statistics.median(p99s), p99s


def compare(
    ccs: ClaudeCodeService, space: Space, args: argparse.Namespace, lengths: str, spec: Slo
) -> tuple[list[str], str]:
    """Tuner then grid for one load shape: the subsection's lines and a one-line verdict."""
    load = Load(args.concurrency, lengths, args.warmup, args.window)
    slo, slo_note = spec.value, ""
    if spec.relative:
        progress(f"reference: the sample's configuration, {args.reference_rounds} rounds")
        reference, p99s = reference_p99(ccs, space, load, args.reference_rounds)
        slo = round(spec.value * reference, 1)
        slo_note = (
            f" ({spec.value:g}x the sample's own p99, median of {len(p99s)} measurements "
            "first: " + ", ".join(f"{p:.1f}" for p in p99s) + " ms)"
        )
    measure = TritonMeasure(ccs, load, slo, str(COMPUTE_MODEL_DIR))
    grid_size = len(space.grid())
    budget = default_budget(space)
    progress(f"load: lengths {lengths}, SLO p99 <= {slo:g} ms")
    progress(f"tuner: coordinate descent, budget {budget} of {grid_size}")
    tuned = coordinate_descent(space, space.start(ccs), measure, budget, Progress(budget))
    progress(f"grid: {grid_size} configurations")
    grid = grid_search(space, measure, Progress(grid_size))

    pick, best = tuned.best, grid.best
    by_key = {m.candidate.key: m for m in grid.measurements}
    title = f"c={args.concurrency}, lengths {lengths}, SLO p99 <= {slo:g} ms"
    lines = [f"### Load: closed loop {title}", ""]
    if slo_note:
        lines += [f"SLO: {slo:g} ms{slo_note}.", ""]
    if pick is None or best is None:
        verdict = f"{title}: no candidate met the SLO (goal not evaluated)"
        lines += [
            f"No candidate met the SLO (tuner: {pick is not None}, grid: {best is not None}): "
            "goal not evaluated.",
            "",
        ]
    else:
        in_grid = by_key.get(pick.candidate.key)
        single_rps = in_grid.rps if in_grid is not None and in_grid.feasible else 0.0
        single_share = single_rps / best.rps
        time_share = tuned.seconds / grid.seconds
        same = pick.candidate.key == best.candidate.key
        if same:
            share = 1.0
            judged = "the pick is the grid's best configuration"
        else:
            progress(f"confirm: pick and grid's best, {args.confirm_rounds} rounds each")
            confirmed = confirm(measure, [pick.candidate, best.candidate], args.confirm_rounds)
            pick_runs, best_runs = confirmed[pick.candidate.key], confirmed[best.candidate.key]
            share = confirmed_rps(pick_runs, slo) / max(confirmed_rps(best_runs, slo), 1e-9)
            judged = (
                f"re-measured side by side {args.confirm_rounds} times each, the pick "
                f"{describe_runs(pick_runs)} against the grid's best "
                f"{describe_runs(best_runs)} = **{share:.1%}**"
            )
        met = share >= 0.95 and time_share <= 0.25
        spread = sorted(m.rps for m in grid.measurements if m.feasible)
        verdict = (
            f"{title}: pick at {share:.1%} of the grid's best (confirmed; single measurements "
            f"{single_share:.1%}) in {time_share:.1%} of its time -> "
            f"{'met' if met else 'missed'}"
        )
        lines += [
            f"Goal: pick within 5% of the grid's best throughput, in <= 25% of its measuring "
            f"time. Throughput: {judged} ({'met' if share >= 0.95 else 'missed'}). From the "
            f"searches' single measurements: the pick {single_rps:.1f} req/s in the grid (the "
            f"tuner's own: {pick.rps:.1f}) against the grid's best {best.rps:.1f} req/s = "
            f"{single_share:.1%}. Time: {tuned.seconds:.0f}s for "
            f"{len(tuned.measurements)} configurations against {grid.seconds:.0f}s for "
            f"{len(grid.measurements)} = **{time_share:.1%}** "
            f"({'met' if time_share <= 0.25 else 'missed'}). Overall: "
            f"**{'met' if met else 'missed'}**. The grid's feasible configurations ranged "
            f"from {spread[0]:.1f} to {spread[-1]:.1f} req/s ({len(spread)} of "
            f"{len(grid.measurements)} within the SLO): the narrower that range, the weaker "
            "the 5% test.",
            "",
            "The tuner's pick (what `ccs-operator tune` prints):",
            "",
            "```yaml",
            yaml.safe_dump(spec_block(ccs, pick.candidate), sort_keys=False).rstrip(),
            "```",
            "",
            f"The grid's best: {best.describe()}.",
            "",
        ]
    lines += [
        "Tuner's measurements, in order:",
        "",
        "| # | configuration | req/s | p50 ms | p99 ms | mean exec batch | SLO |",
        "|---:|---|---:|---:|---:|---:|---|",
    ]
    for i, m in enumerate(tuned.measurements, 1):
        lines.append(
            f"| {i} | {m.candidate.describe()} | {m.rps:.1f} | {m.p50_ms:.1f} | "
            f"{m.p99_ms:.1f} | {m.mean_batch:.2f} | {'ok' if m.feasible else 'over'} |"
        )
    top = sorted(grid.measurements, key=lambda m: (m.feasible, m.rps), reverse=True)[:8]
    lines += [
        "",
        f"Grid, best {len(top)} of {len(grid.measurements)} (feasible first):",
        "",
        "| configuration | req/s | p50 ms | p99 ms | mean exec batch | SLO |",
        "|---|---:|---:|---:|---:|---|",
        *(
            f"| {m.candidate.describe()} | {m.rps:.1f} | {m.p50_ms:.1f} | {m.p99_ms:.1f} | "
            f"{m.mean_batch:.2f} | {'ok' if m.feasible else 'over'} |"
            for m in top
        ),
        "",
    ]
    return lines, verdict


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument(
        "--loads",
        default="1:2,2:1,4:1@x1;1:1@x1",
        help=(
            "load shapes, `lengths@slo` separated by `;` (lengths as length:weight; the p99 "
            "SLO in ms, or x<factor> of the sample configuration's own p99 measured first)"
        ),
    )
    parser.add_argument(
        "--reference-rounds", type=int, default=3, help="measurements of the sample for x SLOs"
    )
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--window", type=float, default=2.0)
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument("--max-batch", default="8,16,32")
    parser.add_argument("--preferred", default="max,ladder")
    parser.add_argument("--queue-delay", default="0,2000,8000")
    parser.add_argument("--instances", default="1,2")
    parser.add_argument(
        "--confirm-rounds", type=int, default=3, help="re-measurements of pick and best each"
    )
    parser.add_argument("--write", type=Path, help="update this RESULTS.md's section")
    args = parser.parse_args(argv)
    started = time.monotonic()
    load_average = " ".join(f"{x:.2f}" for x in os.getloadavg())
    ccs = parse_service(yaml.safe_load(SAMPLE.read_text()))
    space = Space(
        max_batch_size=tuple(int(x) for x in args.max_batch.split(",")),
        preferred=tuple(args.preferred.split(",")),
        queue_delay_us=tuple(int(x) for x in args.queue_delay.split(",")),
        instances=tuple(int(x) for x in args.instances.split(",")),
    )
    loads = parse_loads(args.loads)
    notes = measure_notes(TritonMeasure(ccs, Load(), 0.0))
    parts = [compare(ccs, space, args, lengths, slo) for lengths, slo in loads]
    elapsed = time.monotonic() - started
    lines = [
        RESULTS_HEADING,
        "",
        "Command: `python bench/tune_bench.py"
        + "".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:]))
        + f"` at commit {commit()} ({elapsed:.0f}s, load average {load_average} at the start). "
        "Method: the docstring of `bench/tune_bench.py`.",
        "",
        f"Space: maxBatchSize {args.max_batch}; preferredBatchSizes policies {args.preferred} "
        "(max = [maxBatchSize], ladder = 8, 16, ... up to it; no preferred size is served by "
        f"Triton as max); maxQueueDelayMicroseconds {args.queue_delay}; instances "
        f"{args.instances}: {len(space.grid())} distinct configurations, coordinate descent "
        f"budget {default_budget(space)}. Per candidate {args.window:g}s measured after "
        f"{args.warmup:g}s warm-up, server start included in its time. {'; '.join(notes)}. "
        "No GPU machine was available: Triton on CPU with the real-compute model.",
        "",
        *(f"- {verdict}" for _, verdict in parts),
        "",
        *(line for part, _ in parts for line in part),
        f"Reading: one measurement per configuration on a shared {os.cpu_count()}-core host, "
        "so each figure carries the host's noise (the serving section shows its spread); "
        "the grid's best is the largest of many noisy figures and so is biased upwards, which "
        "is why the verdict rests on the side-by-side re-measurement. With "
        "mixed lengths Triton batches only equal shapes, executed batches stay small "
        "whatever the settings, and the configurations differ little.",
        "",
    ]
    section = "\n".join(lines)
    print(section)
    if args.write:
        write_section(args.write, RESULTS_HEADING, section)
        progress(f"updated {args.write}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
