"""Dynamic batching on vs off on a real Triton, with a model whose cost is real computation.

    python bench/serving_bench.py                           # prints the section
    python bench/serving_bench.py --write bench/RESULTS.md  # and updates it there

Server: the tritonserver binary of nvidia-pytriton (CPU, Python backend) with the config
the operator renders for samples/claude-code.yaml (max batch 32, preferred 8/16/32, 2 ms
max queue delay, 2 instances); "off" is the same service with `batching.enabled: false`
(Triton's default scheduler: one request per execution).

Model: serving_image/models/claude_code_compute, a numpy decoder block (embedding, causal
attention, MLP, tied projection to [-1, 50257] logits, d_model 256, deterministic weights)
whose cost is real host computation that grows with the batch. Its per-batch cost curve is
measured first, in process, on the server's core with one BLAS thread (median of repeats).
The sleep-based sample model (models/claude_code: 20 ms per batch + 1 ms per item, slept as
a device would) appears only in a row labelled "GPU-like cost model": its speedup is set by
its constants, not measured.

Fairness:
- off and on servers run side by side, and the load alternates between them: alternation i
  measures off then on (i even) or on then off (i odd), so drift in the shared host's
  load hits both; every figure is the median over alternations with its min-max, and
  on/off ratios are taken per alternation (adjacent runs) before the median.
- the client (this process) and the server (tritonserver and its backend stubs) are pinned
  to disjoint cores when the host has two or more; BLAS threads are pinned to 1 per
  instance (OPENBLAS_NUM_THREADS / OMP_NUM_THREADS) so instances do not oversubscribe.
- throughput counts completions inside a fixed window of continuous load (after warm-up,
  before drain), the same window for both modes.

Load, request lengths drawn from a fixed mix (default 1:2, 2:1, 4:1, i.e. half one token,
a quarter two, a quarter four; Triton batches only requests of equal shape):
- closed loop, N concurrent gRPC clients each sending again when answered: throughput,
  and the goal's concurrency (32) also with one length only, for reference;
- open loop, Poisson arrivals at fixed rates (by default 0.5x and 1.5x the batching-off
  closed-loop capacity, calibrated before the measured runs): p50/p99 latency measured from
  each request's scheduled send time (no coordinated omission); a request still
  unanswered `--drain` seconds after the window counts as infinitely late.

Goal (kept from the write-up): >= 4x throughput at concurrency 32 with batching on, and
p99 <= max queue delay + one batch, one batch being the in-process cost of a full batch
(maxBatchSize rows) of the longest length in the mix. Both clauses are evaluated on the
concurrency-32 mixed-length run and printed as met or missed; the p99 clause is also shown
for each open-loop rate.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import yaml

from results import commit, write_section

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

RESULTS_HEADING = "## Serving: dynamic batching on a real Triton"
MODEL = "claude_code"
SAMPLE = ROOT / "samples" / "claude-code.yaml"
COMPUTE_MODEL_DIR = ROOT / "serving_image" / "models" / "claude_code_compute"
SLEEP_MODEL_DIR = ROOT / "serving_image" / "models" / "claude_code"
VOCAB = 50257
MODES = ("off", "on")
BLAS_ENV = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- pure parts ------------------------------------------------------------------------------


def alternation_order(alternations: int) -> list[tuple[int, str]]:
    """(alternation, mode) in measuring order: off,on then on,off, and so on (ABBA)."""
    order: list[tuple[int, str]] = []
    for i in range(alternations):
        modes = MODES if i % 2 == 0 else MODES[::-1]
        order.extend((i, mode) for mode in modes)
    return order


def poisson_arrivals(rate: float, seconds: float, rng: np.random.Generator) -> np.ndarray:
    """Send offsets (s) of a Poisson process of `rate` per second over [0, seconds)."""
    if rate <= 0 or seconds <= 0:
        return np.zeros(0)
    expected = rate * seconds
    count = int(expected + 10 * math.sqrt(expected) + 10)
    times = np.cumsum(rng.exponential(1.0 / rate, size=count))
    while times[-1] < seconds:  # vanishingly rare: extend
        more = times[-1] + np.cumsum(rng.exponential(1.0 / rate, size=count))
        times = np.concatenate([times, more])
    return times[times < seconds]


def parse_mix(text: str) -> dict[int, float]:
    """'1:2,2:1,4:1' -> {length: probability} (the tuner's own parser)."""
    from serving_image.tune import parse_mix as parse

    return dict(parse(text))


def draw_lengths(mix: dict[int, float], count: int, rng: np.random.Generator) -> list[int]:
    lengths = list(mix)
    return [int(x) for x in rng.choice(lengths, size=count, p=[mix[n] for n in lengths])]


@dataclass(frozen=True)
class Spread:
    """Median and range of one figure over alternations."""

    median: float
    low: float
    high: float
    n: int

    def format(self, digits: int = 1, suffix: str = "") -> str:
        def f(x: float) -> str:
            return "sat." if math.isinf(x) else f"{x:.{digits}f}{suffix}"

        if self.n == 0 or math.isnan(self.median):
            return "n/a"
        if self.n == 1:
            return f(self.median)
        return f"{f(self.median)} ({f(self.low)}-{f(self.high)})"

    def range(self, digits: int = 1, suffix: str = "") -> str:
        """'min-max over n' (what `format` puts in brackets), for a median shown apart."""
        if self.n < 2:
            return f"one run (n={self.n})"
        return f"{self.low:.{digits}f}{suffix}-{self.high:.{digits}f}{suffix} over {self.n}"


def spread(values: Sequence[float]) -> Spread:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return Spread(math.nan, math.nan, math.nan, 0)
    return Spread(float(statistics.median(values)), min(values), max(values), len(values))


def percentile(latencies: Sequence[float], q: float) -> float:
    """Nearest-rank percentile; inf entries (unanswered requests) count as the slowest."""
    if not latencies:
        return math.nan
    ordered = sorted(latencies)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return float(ordered[rank - 1])


@dataclass(frozen=True)
class Clause:
    name: str
    measured: float
    bound: float
    at_least: bool  # True: measured >= bound is met; False: measured <= bound is met

    @property
    def met(self) -> bool:
        if math.isnan(self.measured):
            return False
        return self.measured >= self.bound if self.at_least else self.measured <= self.bound

    @property
    def verdict(self) -> str:
        return "met" if self.met else "missed"


def p99_clause(p99_ms: float, queue_delay_ms: float, batch_ms: float) -> Clause:
    """The goal's latency clause: p99 <= max queue delay + one (full) batch."""
    return Clause("p99 <= queue delay + one batch", p99_ms, queue_delay_ms + batch_ms, False)


def speedup_clause(ratio: float, target: float = 4.0) -> Clause:
    return Clause(f">= {target:g}x throughput", ratio, target, True)


def in_window(records: Sequence[tuple[float, float]], t0: float, t1: float) -> list[float]:
    """Latencies (ms) of (sent, done) records completed inside [t0, t1]."""
    return [(done - sent) * 1000 for sent, done in records if t0 <= done <= t1]


# -- measuring -------------------------------------------------------------------------------


@dataclass
class Window:
    label: str
    mode: str
    alternation: int
    seconds: float
    latencies_ms: list[float]
    completions: int
    inferences: float = math.nan  # delta nv_inference_count
    executions: float = math.nan  # delta nv_inference_exec_count
    offered_rps: float = math.nan

    @property
    def rps(self) -> float:
        return self.completions / self.seconds

    @property
    def mean_batch(self) -> float:
        return self.inferences / self.executions if self.executions else math.nan

    def pct(self, q: float) -> float:
        return percentile(self.latencies_ms, q)


@dataclass
class Server:
    mode: str
    triton: Any  # LocalTriton


def counters(triton: Any) -> tuple[float, float]:
    def total(name: str) -> float:
        values = triton.metric_values(name)
        return sum(v for labels, v in values.items() if dict(labels).get("model") == MODEL)

    return total("nv_inference_count"), total("nv_inference_exec_count")


class Requests:
    """Pre-built request tensors by length, with random token ids (fixed seed)."""

    def __init__(self, lengths: Sequence[int], seed: int) -> None:
        import tritonclient.grpc as grpcclient

        rng = np.random.default_rng(seed)
        self.pool: dict[int, list[Any]] = {}
        for length in sorted(set(lengths)):
            tensors = []
            for _ in range(16):
                ids = rng.integers(0, VOCAB, size=(1, length), dtype=np.int32)
                tensor = grpcclient.InferInput("input_ids", [1, length], "INT32")
                tensor.set_data_from_numpy(ids)
                tensors.append(tensor)
            self.pool[length] = tensors
        self._next = 0

    def get(self, length: int) -> Any:
        self._next += 1
        tensors = self.pool[length]
        return tensors[self._next % len(tensors)]


async def _infer(client: Any, tensor: Any, length: int) -> None:
    result = await client.infer(MODEL, [tensor], client_timeout=120)
    output = result.as_numpy("output")
    assert output is not None and output.shape == (1, length, VOCAB), output.shape


async def _sample_counters(triton: Any, at: Sequence[float]) -> list[tuple[float, float]]:
    values = []
    for t in at:
        await asyncio.sleep(max(0.0, t - time.monotonic()))
        values.append(await asyncio.to_thread(counters, triton))
    return values


async def closed_loop(
    triton: Any,
    requests: Requests,
    lengths: Sequence[int],
    concurrency: int,
    warmup_s: float,
    window_s: float,
) -> tuple[list[tuple[float, float]], float, float, tuple[float, float]]:
    """Continuous load; returns records, window start/end and counter deltas."""
    import tritonclient.grpc.aio as grpcaio

    client = grpcaio.InferenceServerClient(triton.grpc_url)
    begin = time.monotonic()
    t0, t1 = begin + warmup_s, begin + warmup_s + window_s
    records: list[tuple[float, float]] = []
    cursor = iter(range(10**9))

    async def worker() -> None:
        while time.monotonic() < t1:
            length = lengths[next(cursor) % len(lengths)]
            sent = time.monotonic()
            await _infer(client, requests.get(length), length)
            records.append((sent, time.monotonic()))

    try:
        sampled, *_ = await asyncio.gather(
            _sample_counters(triton, [t0, t1]), *(worker() for _ in range(concurrency))
        )
    finally:
        await client.close()
    delta = (sampled[1][0] - sampled[0][0], sampled[1][1] - sampled[0][1])
    return records, t0, t1, delta


async def open_loop(
    triton: Any,
    requests: Requests,
    lengths: Sequence[int],
    arrivals: np.ndarray,
    warmup_s: float,
    window_s: float,
    drain_s: float,
) -> tuple[list[float], int, tuple[float, float]]:
    """Poisson sends on schedule; latencies of requests *scheduled* in the window (ms, from
    the scheduled time; inf when unanswered after the drain), completions in the window."""
    import tritonclient.grpc.aio as grpcaio

    client = grpcaio.InferenceServerClient(triton.grpc_url)
    begin = time.monotonic()
    t0, t1 = begin + warmup_s, begin + warmup_s + window_s
    done: dict[int, float] = {}

    async def one(index: int, length: int) -> None:
        await _infer(client, requests.get(length), length)
        done[index] = time.monotonic()

    sampler = asyncio.create_task(_sample_counters(triton, [t0, t1]))
    tasks = []
    try:
        for index, offset in enumerate(arrivals):
            await asyncio.sleep(max(0.0, begin + offset - time.monotonic()))
            length = lengths[index % len(lengths)]
            tasks.append(asyncio.create_task(one(index, length)))
        await asyncio.sleep(max(0.0, t1 - time.monotonic()))
        if tasks:
            await asyncio.wait(tasks, timeout=drain_s)
        sampled = await sampler
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await client.close()
    latencies = [
        (done[i] - (begin + offset)) * 1000 if i in done else math.inf
        for i, offset in enumerate(arrivals)
        if t0 <= begin + offset <= t1
    ]
    completions = sum(1 for t in done.values() if t0 <= t <= t1)
    delta = (sampled[1][0] - sampled[0][0], sampled[1][1] - sampled[0][1])
    return latencies, completions, delta


def measure_closed(
    server: Server,
    requests: Requests,
    label: str,
    alternation: int,
    lengths: Sequence[int],
    concurrency: int,
    warmup_s: float,
    window_s: float,
) -> Window:
    records, t0, t1, delta = asyncio.run(
        closed_loop(server.triton, requests, lengths, concurrency, warmup_s, window_s)
    )
    latencies = in_window(records, t0, t1)
    window = Window(label, server.mode, alternation, t1 - t0, latencies, len(latencies), *delta)
    report(window)
    return window


def measure_open(
    server: Server,
    requests: Requests,
    label: str,
    alternation: int,
    lengths: Sequence[int],
    rate: float,
    warmup_s: float,
    window_s: float,
    drain_s: float,
    seed: int,
) -> Window:
    arrivals = poisson_arrivals(rate, warmup_s + window_s, np.random.default_rng(seed))
    latencies, completions, delta = asyncio.run(
        open_loop(server.triton, requests, lengths, arrivals, warmup_s, window_s, drain_s)
    )
    window = Window(label, server.mode, alternation, window_s, latencies, completions, *delta, rate)
    report(window)
    return window


def report(w: Window) -> None:
    progress(
        f"  [{w.alternation}] {w.label:<28} {w.mode:>3}: {w.rps:7.1f} req/s  "
        f"p50 {w.pct(50):7.1f} ms  p99 {w.pct(99):7.1f} ms  mean batch {w.mean_batch:5.2f}"
    )


# -- host, pinning, cost curve ---------------------------------------------------------------


def pin_process(cpus: set[int]) -> None:
    """Pin every thread of this process (new threads and children inherit it)."""
    for task in os.listdir("/proc/self/task"):
        with contextlib.suppress(OSError):
            os.sched_setaffinity(int(task), cpus)


def split_cores(available: Sequence[int]) -> tuple[set[int], set[int]] | None:
    """(client cores, server cores): the first core for the client, the rest for the
    server; None when there is only one core."""
    cores = sorted(available)
    if len(cores) < 2:
        return None
    return {cores[0]}, set(cores[1:])


def host_description() -> str:
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"{os.cpu_count()} cores ({model}), load average {load} at start"


def load_compute_module() -> ModuleType:
    path = COMPUTE_MODEL_DIR / "1" / "model.py"
    spec = importlib.util.spec_from_file_location("claude_code_compute_model", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cost_curve(
    d_model: int, sizes: Sequence[int], lengths: Sequence[int], repeats: int
) -> dict[int, dict[int, float]]:
    """{length: {batch: median ms}} of Block.forward in this process.

    Repeats go round the whole (length, batch) table, so a burst of other work on the
    host lands on every point alike instead of on one point's consecutive repeats."""
    block = load_compute_module().Block(vocab=VOCAB, d_model=d_model)
    points = [(length, size) for length in lengths for size in sizes]
    inputs = {p: np.ones((p[1], p[0]), dtype=np.int32) for p in points}
    times: dict[tuple[int, int], list[float]] = {p: [] for p in points}
    for point in points:
        block.forward(inputs[point])  # warm
    for _ in range(repeats):
        for point in points:
            started = time.perf_counter()
            block.forward(inputs[point])
            times[point].append((time.perf_counter() - started) * 1000)
    curve: dict[int, dict[int, float]] = {length: {} for length in lengths}
    for (length, size), values in times.items():
        curve[length][size] = float(statistics.median(values))
    return curve


def cost_curve_subprocess(
    d_model: int,
    sizes: Sequence[int],
    lengths: Sequence[int],
    repeats: int,
    cpus: set[int] | None,
) -> dict[int, dict[int, float]]:
    """The cost curve measured in a fresh interpreter with one BLAS thread (as a server
    instance has it), on the server's cores."""
    args = json.dumps(
        {"d_model": d_model, "sizes": list(sizes), "lengths": list(lengths), "repeats": repeats}
    )
    code = (
        "import json, sys; sys.path.insert(0, sys.argv[1]); import serving_bench as b; "
        "a = json.loads(sys.argv[2]); "
        "print(json.dumps(b.cost_curve(a['d_model'], a['sizes'], a['lengths'], a['repeats'])))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(Path(__file__).parent), args],
        env={**os.environ, **BLAS_ENV},
        capture_output=True,
        text=True,
        check=True,
        preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
    ).stdout
    raw = json.loads(out.strip().splitlines()[-1])
    return {int(n): {int(b): float(ms) for b, ms in row.items()} for n, row in raw.items()}


# -- servers ---------------------------------------------------------------------------------


def service(batching: bool) -> Any:
    from ccs_operator.core.api import parse_service

    body = yaml.safe_load(SAMPLE.read_text())
    body["spec"]["batching"]["enabled"] = batching
    return parse_service(body)


@contextlib.contextmanager
def servers(
    model_dir: Path, env: dict[str, str], cpus: set[int] | None
) -> Iterator[dict[str, Server]]:
    """An off and an on tritonserver for `model_dir`, started on `cpus`."""
    from serving_image.local import LocalTriton

    with contextlib.ExitStack() as stack:
        started: dict[str, Server] = {}
        for mode in MODES:
            triton = LocalTriton.for_service(
                service(mode == "on"), repository=str(model_dir), env={**BLAS_ENV, **env}
            )
            saved = os.sched_getaffinity(0)
            if cpus:
                pin_process(cpus)
            try:
                stack.enter_context(triton)
            finally:
                pin_process(saved)
            started[mode] = Server(mode, triton)
        yield started


# -- the run ---------------------------------------------------------------------------------


@dataclass
class Row:
    label: str
    kind: str  # "closed" or "open"
    batch_ms: float  # "one batch" of the p99 clause for this row's lengths
    windows: dict[str, list[Window]] = field(default_factory=lambda: {m: [] for m in MODES})

    def figure(self, mode: str, what: str) -> Spread:
        def value(w: Window) -> float:
            if what == "rps":
                return w.rps
            if what == "batch":
                return w.mean_batch
            return w.pct(float(what))

        return spread([value(w) for w in self.windows[mode]])

    def ratios(self) -> Spread:
        pairs = zip(self.windows["off"], self.windows["on"], strict=True)
        return spread([on.rps / off.rps if off.rps else math.nan for off, on in pairs])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--alternations", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--lengths", default="1:2,2:1,4:1", help="length:weight,...")
    parser.add_argument("--rates", default="auto", help="req/s list, or auto (0.5x, 1.5x off)")
    parser.add_argument("--window", type=float, default=5.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds per run")
    parser.add_argument("--drain", type=float, default=5.0, help="open loop: wait after window")
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=25, help="cost curve: rounds of the table")
    parser.add_argument("--no-pin", action="store_true", help="do not pin client and server")
    parser.add_argument("--no-gpu-like", action="store_true", help="skip the sleep-model row")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--write", type=Path, help="update this RESULTS.md's section")
    args = parser.parse_args(argv)
    started = time.monotonic()
    mix = parse_mix(args.lengths)
    rng = np.random.default_rng(args.seed)
    mixed = draw_lengths(mix, 4096, rng)
    longest = max(mix)
    ccs = service(True)
    max_batch = ccs.spec.batching.max_batch_size
    queue_delay_ms = ccs.spec.batching.max_queue_delay_microseconds / 1000
    host = host_description()
    cores = None if args.no_pin else split_cores(sorted(os.sched_getaffinity(0)))
    client_cpus, server_cpus = cores if cores else (None, None)

    sizes = sorted({1, 2, 4, 8, 16, max_batch} | {s for s in (32,) if s <= max_batch})
    progress(f"cost curve in process (d_model {args.d_model}, one BLAS thread) ...")
    curve_lengths = sorted(set(mix) | {1})  # length 1: the one-length reference run
    curve = cost_curve_subprocess(args.d_model, sizes, curve_lengths, args.repeats, server_cpus)
    for length, row in curve.items():
        progress(f"  length {length}: " + "  ".join(f"b{b} {ms:.1f}" for b, ms in row.items()))
    batch_ms = curve[longest][max_batch]

    requests = Requests(curve_lengths, args.seed)
    rows: dict[str, Row] = {}

    def row(label: str, kind: str, bound_ms: float = batch_ms) -> Row:
        return rows.setdefault(label, Row(label, kind, bound_ms))

    env = {"CCS_COMPUTE_D_MODEL": str(args.d_model)}
    sleep_env = {"CCS_SAMPLE_BATCH_COST_MS": "20", "CCS_SAMPLE_ITEM_COST_MS": "1"}
    c = args.concurrency
    with contextlib.ExitStack() as stack:
        progress("starting tritonservers (compute model off and on)")
        compute = stack.enter_context(servers(COMPUTE_MODEL_DIR, env, server_cpus))
        sleep: dict[str, Server] = {}
        if not args.no_gpu_like:
            progress("starting tritonservers (GPU-like sleep model off and on)")
            sleep = stack.enter_context(servers(SLEEP_MODEL_DIR, sleep_env, server_cpus))
        if client_cpus:
            pin_process(client_cpus)
        if args.rates == "auto":
            calib = measure_closed(
                compute["off"], requests, "calibration", -1, mixed, c, args.warmup, args.window
            )
            rates = [round(calib.rps * 0.5), round(calib.rps * 1.5)]
        else:
            rates = [float(r) for r in args.rates.split(",")]
        labels = {
            "mixed": f"closed loop c={c}, mixed lengths",
            "uniform": f"closed loop c={c}, length 1 only",
            "gpu": f"GPU-like cost model (sleep 20 ms + 1 ms/item), closed loop c={c}, length 1",
        }

        def closed(
            label: str, server: Server, lengths: Sequence[int], alternation: int, bound_ms: float
        ) -> None:
            window = measure_closed(
                server, requests, label, alternation, lengths, c, args.warmup, args.window
            )
            row(label, "closed", bound_ms).windows[server.mode].append(window)

        for alternation, mode in alternation_order(args.alternations):
            closed(labels["mixed"], compute[mode], mixed, alternation, batch_ms)
            closed(labels["uniform"], compute[mode], [1], alternation, curve[1][max_batch])
            for k, rate in enumerate(rates):
                label = f"open loop Poisson {rate:g} req/s, mixed"
                seed = args.seed * 1000 + alternation * 10 + k  # same arrivals off and on
                window = measure_open(
                    compute[mode], requests, label, alternation, mixed, rate,
                    args.warmup, args.window, args.drain, seed,
                )  # fmt: skip
                row(label, "open").windows[mode].append(window)
            if sleep:
                closed(labels["gpu"], sleep[mode], [1], alternation, 20.0 + max_batch)
    elapsed = time.monotonic() - started

    headline = rows[labels["mixed"]]
    speed = speedup_clause(headline.ratios().median)
    latency = p99_clause(headline.figure("on", "99").median, queue_delay_ms, batch_ms)
    uniform = rows[labels["uniform"]]
    uniform_speed = speedup_clause(uniform.ratios().median)
    uniform_latency = p99_clause(
        uniform.figure("on", "99").median, queue_delay_ms, uniform.batch_ms
    )
    gpu_line = []
    if labels["gpu"] in rows:
        gpu = rows[labels["gpu"]]
        gpu_speed = speedup_clause(gpu.ratios().median)
        gpu_latency = p99_clause(gpu.figure("on", "99").median, queue_delay_ms, gpu.batch_ms)
        gpu_line = [
            "",
            f"GPU-like cost model row (not a measurement of batching: its speedup is set by "
            f"the sleep constants, 21·B/(20+B) for mean batch B): {gpu_speed.measured:.2f}x "
            f"({gpu_speed.verdict}); p99 {gpu_latency.measured:.1f} ms vs "
            f"<= {gpu_latency.bound:.1f} ms ({gpu_latency.verdict}).",
        ]

    table = [
        "| run | req/s off | req/s on | on / off | p50 / p99 ms off | p50 / p99 ms on | "
        "mean exec batch off / on | p99 clause (on) |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows.values():
        clause = p99_clause(r.figure("on", "99").median, queue_delay_ms, r.batch_ms)
        table.append(
            f"| {r.label} | {r.figure('off', 'rps').format()} | {r.figure('on', 'rps').format()}"
            f" | **{r.ratios().format(2, 'x')}** | {r.figure('off', '50').format()} / "
            f"{r.figure('off', '99').format()} | {r.figure('on', '50').format()} / "
            f"{r.figure('on', '99').format()} | {r.figure('off', 'batch').format(2)} / "
            f"{r.figure('on', 'batch').format(2)} | {clause.verdict} "
            f"(<= {clause.bound:.1f}) |"
        )

    curve_table = [
        "| batch | " + " | ".join(f"length {n}: ms / batch" for n in curve) + " | "
        "length 1: ms / item | length 1: vs batch 1 per item |",
        "|---:|" + "---:|" * (len(curve) + 2),
    ]
    one = curve[min(curve)]
    for b in sizes:
        cells = " | ".join(f"{curve[n][b]:.2f}" for n in curve)
        curve_table.append(f"| {b} | {cells} | {one[b] / b:.2f} | {one[1] / (one[b] / b):.1f}x |")

    cmd = "python bench/serving_bench.py" + "".join(
        f" {a}" for a in (argv if argv is not None else sys.argv[1:])
    )
    pinning = (
        f"client on CPU {sorted(client_cpus)}, tritonserver and its stubs on CPU "
        f"{sorted(server_cpus)}"
        if client_cpus and server_cpus
        else "not pinned (one core, or --no-pin): client and server share the cores"
    )
    mix_text = ", ".join(f"{n} token{'s' if n > 1 else ''} {p:.0%}" for n, p in mix.items())
    rates_text = " and ".join(f"{r:g}" for r in rates)
    lines = [
        RESULTS_HEADING,
        "",
        f"Command: `{cmd}` ({elapsed:.0f}s) at commit {commit()}. Method: the docstring of "
        "`bench/serving_bench.py`.",
        "",
        "Real tritonserver (nvidia-pytriton's, CPU) with the config the operator renders for "
        "`samples/claude-code.yaml` (max batch 32, preferred 8/16/32, "
        f"{queue_delay_ms:g} ms max queue delay, 2 instances); off = the same service with "
        "`batching.enabled: false`. Both servers run side by side and the load alternates "
        f"between them, {args.alternations} alternations (off-on, on-off, ...); each cell is "
        "the median over alternations with (min-max), ratios are per alternation. "
        f"Model: `serving_image/models/claude_code_compute` (numpy decoder block, d_model "
        f"{args.d_model}, tied output projection to 50257 logits), real computation on the "
        f"host. Request lengths: {mix_text}. {args.window:g}s measured per run after "
        f"{args.warmup:g}s warm-up; open-loop rates {rates_text} req/s "
        + (
            "(0.5x and 1.5x the batching-off closed-loop capacity from a calibration run)"
            if args.rates == "auto"
            else "(given)"
        )
        + ".",
        "",
        f"Host: {host}; {pinning}; one BLAS thread per instance (OPENBLAS_NUM_THREADS=1). "
        "The cores are shared with other work, so runs are noisy: read the spreads.",
        "",
        "Cost of one batch in process (`Block.forward`, one BLAS thread, server core, "
        f"median of {args.repeats} rounds of the table):",
        "",
        *curve_table,
        "",
        f"Goal: >= 4x throughput at concurrency {c} with batching on: "
        f"**{speed.measured:.2f}x** ({headline.ratios().range(2, 'x')}) -> **{speed.verdict}**. "
        f"p99 <= max queue delay + one batch ({queue_delay_ms:g} + {batch_ms:.1f} ms, a full "
        f"batch of {max_batch} x {longest} tokens in process = {latency.bound:.1f} ms): "
        f"p99 **{latency.measured:.1f} ms** -> **{latency.verdict}**.",
        "",
        f"Same run, one request length only (the write-up's load shape): "
        f"{uniform_speed.measured:.2f}x ({uniform.ratios().range(2, 'x')}) -> "
        f"{uniform_speed.verdict}; p99 {uniform_latency.measured:.1f} ms vs <= "
        f"{uniform_latency.bound:.1f} ms -> {uniform_latency.verdict}.",
        "",
        *table,
        *gpu_line,
        "",
        "Mean executed batch = delta `nv_inference_count` / delta `nv_inference_exec_count` "
        "over the window. Open-loop latency runs from each request's scheduled send time; "
        "`sat.` = more than 1% (p99) or half (p50) of the window's requests were unanswered "
        f"{args.drain:g}s after it.",
        "",
        "What limits it here. (1) Triton's dynamic batcher only puts requests of equal "
        "shape in one batch (the rendered config has variable-length `input_ids` and no ragged "
        "batching), so with mixed lengths a batch closes at the first request of another "
        "length: compare the mean executed batch of the mixed and one-length rows. (2) The "
        "compute is host CPU: in process a batch of "
        f"{max_batch} single tokens costs {one[max_batch]:.1f} ms against {one[1]:.1f} ms for "
        f"one ({one[1] * max_batch / one[max_batch]:.1f}x per item), the 51 MB projection "
        "being read once per batch instead of once per request; per-request costs (gRPC, "
        "201 kB of logits per token through the backend's shared memory, the client decoding "
        "them) are not amortised at all. (3) The server has only the cores the client does "
        "not use, shared with other work on the host. No GPU machine was available for "
        "this run, so there is no GPU row: on a GPU the fixed per-batch cost dominates and "
        "the GPU-like row is the closer guide, but it is a model, not a measurement.",
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
