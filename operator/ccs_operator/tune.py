"""`ccs-operator tune`: pick `spec.batching` and `spec.instanceGroups` by measuring.

The search space is four axes, each a short ordered list:

- `maxBatchSize`                (default 8, 16, 32)
- `preferredBatchSizes` policy  `max` (only maxBatchSize) or `ladder` (8, 16, ... up to
                                maxBatchSize); `none` (no preferred size) may be asked for,
                                but Triton serves it as `max`, so it is the same candidate
- `maxQueueDelayMicroseconds`   (default 0, 2000, 8000)
- instance count of the first instance group (default 1, 2)

A candidate's score is the throughput it sustains under the load shape while its p99
latency meets the SLO; a candidate over the SLO is infeasible, whatever its throughput.

The search is a coordinate descent (a hill climb along one axis at a time): from the
service's own values (snapped to the space), sweep each axis in turn with the others held,
move to the best feasible value, and repeat passes until a pass changes nothing or the
evaluation budget (by default a quarter of the grid) is spent. Every distinct rendered
configuration is measured once (memoised). `grid_search` measures every candidate, to
check the tuner against.

This module is pure: measuring (a real tritonserver under load) is passed in as a
function, so the search is tested with a synthetic one. serving_image/tune.py measures.
It imports the typed API only where a service is handled, so the search runs where only
the standard library and PyYAML are installed (bench/gpu_serving.py on a GPU machine).
"""

from __future__ import annotations

import argparse
import itertools
import math
import statistics
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, TextIO

import yaml

if TYPE_CHECKING:
    from ccs_operator.core.api import ClaudeCodeService

PREFERRED_POLICIES = ("none", "max", "ladder")
DEFAULT_MAX_BATCH = (8, 16, 32)
DEFAULT_QUEUE_DELAY_US = (0, 2000, 8000)
DEFAULT_INSTANCES = (1, 2)


@dataclass(frozen=True)
class Candidate:
    max_batch_size: int
    preferred: str  # one of PREFERRED_POLICIES
    queue_delay_us: int
    instances: int

    @property
    def preferred_batch_sizes(self) -> tuple[int, ...]:
        if self.preferred == "none":
            return ()
        if self.preferred == "max":
            return (self.max_batch_size,)
        sizes = [8 * 2**k for k in range(12) if 8 * 2**k < self.max_batch_size]
        return (*sizes, self.max_batch_size)

    @property
    def key(self) -> tuple[int, tuple[int, ...], int, int]:
        """What Triton serves: candidates with equal keys are one configuration. (Triton
        completes an empty preferred_batch_size with max_batch_size, so `none` is `max`.)"""
        sizes = self.preferred_batch_sizes or (self.max_batch_size,)
        return (self.max_batch_size, sizes, self.queue_delay_us, self.instances)

    def describe(self) -> str:
        sizes = ",".join(str(s) for s in self.preferred_batch_sizes) or "-"
        return (
            f"maxBatch {self.max_batch_size:>2} preferred [{sizes}] "
            f"delay {self.queue_delay_us}us x{self.instances}"
        )


@dataclass(frozen=True)
class Space:
    max_batch_size: tuple[int, ...] = DEFAULT_MAX_BATCH
    preferred: tuple[str, ...] = ("max", "ladder")  # `none` is served as `max`
    queue_delay_us: tuple[int, ...] = DEFAULT_QUEUE_DELAY_US
    instances: tuple[int, ...] = DEFAULT_INSTANCES

    AXES = ("instances", "max_batch_size", "preferred", "queue_delay_us")

    def __post_init__(self) -> None:
        for axis in self.AXES:
            values = getattr(self, axis)
            if not values or len(set(values)) != len(values):
                raise ValueError(f"{axis}: needs distinct values, got {values}")
        unknown = set(self.preferred) - set(PREFERRED_POLICIES)
        if unknown:
            raise ValueError(f"preferred: unknown policies {sorted(unknown)}")

    def grid(self) -> list[Candidate]:
        """Every distinct configuration (equal renderings counted once)."""
        seen: dict[Any, Candidate] = {}
        for mb, pref, delay, inst in itertools.product(
            self.max_batch_size, self.preferred, self.queue_delay_us, self.instances
        ):
            candidate = Candidate(mb, pref, delay, inst)
            seen.setdefault(candidate.key, candidate)
        return list(seen.values())

    def start(self, ccs: ClaudeCodeService) -> Candidate:
        """The service's own configuration snapped to the nearest value on each axis."""
        batching = ccs.spec.batching
        sizes = tuple(batching.preferred_batch_sizes)
        if not sizes:
            policy = "none"
        elif sizes == (batching.max_batch_size,):
            policy = "max"
        else:
            policy = "ladder"
        if policy not in self.preferred:
            policy = self.preferred[0]
        count = ccs.spec.instance_groups[0].count if ccs.spec.instance_groups else 1
        return Candidate(
            _nearest(self.max_batch_size, batching.max_batch_size),
            policy,
            _nearest(self.queue_delay_us, batching.max_queue_delay_microseconds),
            _nearest(self.instances, count),
        )


def _nearest(values: Sequence[int], target: int) -> int:
    return min(values, key=lambda v: (abs(math.log(max(v, 1)) - math.log(max(target, 1))), v))


@dataclass(frozen=True)
class Measurement:
    candidate: Candidate
    rps: float
    p50_ms: float
    p99_ms: float
    mean_batch: float
    seconds: float  # wall time spent measuring it, server start included
    slo_p99_ms: float

    @property
    def feasible(self) -> bool:
        return self.p99_ms <= self.slo_p99_ms

    @property
    def score(self) -> float:
        return self.rps if self.feasible else -math.inf

    def describe(self) -> str:
        verdict = "ok" if self.feasible else f"over SLO {self.slo_p99_ms:g} ms"
        return (
            f"{self.candidate.describe()}: {self.rps:.1f} req/s, p50 {self.p50_ms:.1f} ms, "
            f"p99 {self.p99_ms:.1f} ms, mean batch {self.mean_batch:.2f} ({verdict})"
        )


Measure = Callable[[Candidate], Measurement]


@dataclass
class Search:
    """What a search measured, in order, and the best feasible measurement."""

    measurements: list[Measurement] = field(default_factory=list)

    @property
    def best(self) -> Measurement | None:
        feasible = [m for m in self.measurements if m.feasible]
        return max(feasible, key=lambda m: m.rps) if feasible else None

    @property
    def seconds(self) -> float:
        return sum(m.seconds for m in self.measurements)


class Progress:
    """A progress bar on a stream: one line per measurement, with the bar in front."""

    def __init__(self, total: int, stream: TextIO | None = None, width: int = 20) -> None:
        self.total = max(total, 1)
        self.done = 0
        self.stream = stream if stream is not None else sys.stderr
        self.width = width

    def bar(self) -> str:
        filled = round(self.width * min(self.done, self.total) / self.total)
        return f"[{'#' * filled}{'.' * (self.width - filled)}] {self.done}/{self.total}"

    def step(self, text: str) -> None:
        self.done += 1
        print(f"{self.bar()} {text}", file=self.stream, flush=True)


def _memoised(
    measure: Measure, search: Search, progress: Progress | None
) -> Callable[[Candidate], Measurement]:
    cache: dict[Any, Measurement] = {}

    def get(candidate: Candidate) -> Measurement:
        if candidate.key not in cache:
            result = measure(candidate)
            cache[candidate.key] = result
            search.measurements.append(result)
            if progress is not None:
                progress.step(result.describe())
        return cache[candidate.key]

    get.cache = cache  # type: ignore[attr-defined]
    return get


def default_budget(space: Space) -> int:
    """A quarter of the grid, and at least one sweep of the axes."""
    one_pass = 1 + sum(len(getattr(space, axis)) - 1 for axis in Space.AXES)
    return max(len(space.grid()) // 4, min(one_pass, len(space.grid())))


def coordinate_descent(
    space: Space,
    start: Candidate,
    measure: Measure,
    budget: int | None = None,
    progress: Progress | None = None,
) -> Search:
    """Hill climb one axis at a time from `start`; at most `budget` distinct measurements."""
    budget = default_budget(space) if budget is None else budget
    search = Search()
    get = _memoised(measure, search, progress)
    cache = get.cache  # type: ignore[attr-defined]
    current = start
    get(current)
    while True:
        moved = False
        for axis in Space.AXES:
            options = [replace(current, **{axis: value}) for value in getattr(space, axis)]
            for option in options:
                if option.key not in cache and len(cache) >= budget:
                    break
                get(option)
            measured = [get(o) for o in options if o.key in cache]
            best = max(measured, key=lambda m: (m.score, -m.p99_ms))
            if best.candidate.key != current.key and best.score > get(current).score:
                current, moved = best.candidate, True
        if not moved or len(cache) >= budget:
            return search


def grid_search(space: Space, measure: Measure, progress: Progress | None = None) -> Search:
    search = Search()
    get = _memoised(measure, search, progress)
    for candidate in space.grid():
        get(candidate)
    return search


def confirm(
    measure: Measure, candidates: Sequence[Candidate], rounds: int
) -> dict[object, list[Measurement]]:
    """Measure each candidate `rounds` times, the order reversed every round (A B, B A, ...),
    so drift on the host falls on both alike."""
    runs: dict[object, list[Measurement]] = {c.key: [] for c in candidates}
    for r in range(rounds):
        for candidate in candidates if r % 2 == 0 else list(reversed(candidates)):
            runs[candidate.key].append(measure(candidate))
    return runs


def confirmed_rps(runs: Sequence[Measurement], slo: float) -> float:
    """The median throughput of the runs, 0 if their median p99 is over the SLO."""
    if statistics.median(m.p99_ms for m in runs) > slo:
        return 0.0
    return float(statistics.median(m.rps for m in runs))


def describe_runs(runs: Sequence[Measurement]) -> str:
    rates = [m.rps for m in runs]
    p99 = statistics.median(m.p99_ms for m in runs)
    return (
        f"{statistics.median(rates):.1f} req/s ({min(rates):.1f}-{max(rates):.1f}, "
        f"p99 {p99:.1f} ms)"
    )


def spec_block(ccs: ClaudeCodeService, candidate: Candidate) -> dict[str, Any]:
    """The `spec.batching` and `spec.instanceGroups` to paste into the service."""
    batching: dict[str, Any] = {
        "enabled": True,
        "maxBatchSize": candidate.max_batch_size,
        "preferredBatchSizes": list(candidate.preferred_batch_sizes),
        "maxQueueDelayMicroseconds": candidate.queue_delay_us,
    }
    groups = [g.model_dump(by_alias=True, exclude_defaults=False) for g in ccs.spec.instance_groups]
    groups = groups or [{"count": 1, "kind": "KIND_GPU", "gpus": []}]
    groups[0]["count"] = candidate.instances
    for group in groups:
        if not group.get("gpus"):
            group.pop("gpus", None)
    return {"spec": {"batching": batching, "instanceGroups": groups}}


def with_candidate(ccs: ClaudeCodeService, candidate: Candidate) -> ClaudeCodeService:
    """The service with the candidate's batching and first instance group's count."""
    from ccs_operator.core.api import InstanceGroup

    batching = ccs.spec.batching.model_copy(
        update={
            "enabled": True,
            "max_batch_size": candidate.max_batch_size,
            "preferred_batch_sizes": candidate.preferred_batch_sizes,
            "max_queue_delay_microseconds": candidate.queue_delay_us,
        }
    )
    groups = list(ccs.spec.instance_groups) or [InstanceGroup()]
    groups[0] = groups[0].model_copy(update={"count": candidate.instances})
    spec = ccs.spec.model_copy(update={"batching": batching, "instance_groups": tuple(groups)})
    return ccs.model_copy(update={"spec": spec})


def report(
    ccs: ClaudeCodeService, search: Search, header: Iterable[str] = ()
) -> tuple[str, Measurement | None]:
    """YAML: the best block, then the measurements behind it as comments."""
    best = search.best
    lines = [f"# {h}" for h in header]
    if best is None:
        lines.append("# no candidate met the latency SLO")
    else:
        lines.append(f"# best: {best.describe()}")
        lines.append(yaml.safe_dump(spec_block(ccs, best.candidate), sort_keys=False).rstrip())
    lines.append(f"# measured {len(search.measurements)} configurations in {search.seconds:.0f}s:")
    lines.extend(f"#   {m.describe()}" for m in search.measurements)
    return "\n".join(lines) + "\n", best


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `ccs-operator tune` (serving_image/tune.py reads them)."""
    parser.add_argument("-f", "--file", required=True, help="ClaudeCodeService YAML")
    parser.add_argument("--slo-p99-ms", type=float, default=200.0, help="latency SLO (p99)")
    parser.add_argument("--concurrency", type=int, default=32, help="closed-loop clients")
    parser.add_argument("--lengths", default="1:2,2:1,4:1", help="request length:weight,...")
    parser.add_argument("--window", type=float, default=2.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=0.5, help="unmeasured seconds")
    parser.add_argument("--max-batch", default="8,16,32", help="maxBatchSize values")
    parser.add_argument("--preferred", default="max,ladder", help="policies: none, max, ladder")
    parser.add_argument("--queue-delay", default="0,2000,8000", help="microseconds")
    parser.add_argument("--instances", default="1,2", help="instance counts")
    parser.add_argument("--budget", type=int, default=0, help="most configurations measured")
    parser.add_argument("--grid", action="store_true", help="measure the full grid instead")
    parser.add_argument(
        "--repository",
        default=None,
        help="model files to serve (a local path, or `compute` for the real-compute model); "
        "default as run-local",
    )
    parser.add_argument("--no-pin", action="store_true", help="do not pin client and server")
    parser.add_argument("--seed", type=int, default=1)
