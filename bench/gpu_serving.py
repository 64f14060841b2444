"""Dynamic batching and the tuner on a GPU machine: the prepared script (issue 18, part 4).

    python3 bench/gpu_serving.py --write bench/RESULTS.md      # on a GPU machine
    python bench/gpu_serving.py --allow-cpu --tiny              # the same logic, anywhere

What runs there. The GPU machines lent to this project hold PyTorch and CUDA but no Triton
Inference Server (nvidia-pytriton's tritonserver is a CPU build, and far larger than what
can travel to them), so this script serves the same real-compute decoder block as the
Triton model `serving_image/models/claude_code_compute` (its `Block`, the same weights from
the same seed, moved to the device as torch tensors) from an in-process dynamic batcher that
follows the rules of the config the operator renders:

- only requests of equal shape share a batch, at most `maxBatchSize` of them;
- a batch leaves at once when it reaches a preferred size (or `maxBatchSize`), else when
  its oldest request has waited `maxQueueDelayMicroseconds`, with what has gathered;
- `instances` batches are in flight at once (one worker thread and CUDA stream each);
- each request's logits [length, 50257] are copied back to the host, as Triton returns them.

Batching off is a batch of one per execution, same instances. It is an emulation of
Triton's scheduler, not Triton (the section says so): what it measures on the device is the
model's real batch cost, which is what batching amortises.

Three measurements, one process, written as one RESULTS.md section naming the device:
1. the block's cost per batch on the device (batch 1..32 x lengths 1, 2, 4; median);
2. closed loop, `--concurrency` clients, batching off and on interleaved (off-on, on-off,
   ...), mixed lengths (1:2,2:1,4:1) and one length: throughput ratio (goal >= 4x), and the
   goal's p99 clause (p99 <= max queue delay + one full batch, from table 1);
3. the tuner (ccs_operator.tune.coordinate_descent, budget a quarter of the grid) against
   the full grid on the same measure, judged as bench/tune_bench.py judges it (the pick and
   the grid's best re-measured side by side, medians).

Needs numpy, PyYAML and, for a GPU, torch (all in the GPU machine's image); without a GPU
it refuses unless `--allow-cpu` (then numpy on the host, for checking the script itself).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT / "bench", ROOT / "operator"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import serving_bench as sb  # noqa: E402
from ccs_operator.tune import (  # noqa: E402
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
)
from results import commit, write_section  # noqa: E402

RESULTS_HEADING = "## Serving on a GPU: dynamic batching and the tuner (prepared script)"
MIX = {1: 0.5, 2: 0.25, 4: 0.25}  # the serving and tuner benchmarks' mixed lengths
ONE_LENGTH = {1: 1.0}
SIZES = (1, 2, 4, 8, 16, 32)
LENGTHS = (1, 2, 4)
# the sample's own batching (samples/claude-code.yaml), the "on" of the off/on runs
SAMPLE = Candidate(32, "ladder", 2000, 2)


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- the model on the device ------------------------------------------------------------------


class Backend:
    """forward(ids [batch, seq]) -> logits on the host; `name` says where it ran."""

    name: str

    def forward(self, ids: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def worker_context(self) -> Any:
        """A context each worker thread runs its batches in (a CUDA stream on a GPU)."""
        import contextlib

        return contextlib.nullcontext()


class NumpyBackend(Backend):
    def __init__(self, d_model: int) -> None:
        self.block = sb.load_compute_module().Block(vocab=sb.VOCAB, d_model=d_model)
        self.name = "numpy on the host CPU (no GPU: a check of the script, not a GPU figure)"

    def forward(self, ids: np.ndarray) -> np.ndarray:
        return np.asarray(self.block.forward(ids))


class TorchBackend(Backend):
    """The Triton model's Block, same weights, as torch on `device` (float32)."""

    def __init__(self, d_model: int, device: str) -> None:
        import torch

        self.torch = torch
        block = sb.load_compute_module().Block(vocab=sb.VOCAB, d_model=d_model)
        self.d_model = d_model
        self.device = torch.device(device)
        self.w = {
            name: torch.from_numpy(getattr(block, name)).to(self.device)
            for name in ("embedding", "w_qkv", "w_o", "w_1", "w_2")
        }
        label = torch.cuda.get_device_name(self.device) if device.startswith("cuda") else device
        self.name = f"{label}, torch {torch.__version__}"
        check_same_answers(self, block)

    def forward(self, ids: np.ndarray) -> np.ndarray:
        torch, w = self.torch, self.w
        with torch.inference_mode():
            x = w["embedding"][torch.from_numpy(np.mod(ids, sb.VOCAB)).to(self.device).long()]
            batch, seq, d = x.shape

            def norm(t: Any) -> Any:
                return torch.nn.functional.layer_norm(t, (d,), eps=1e-5)

            q, k, v = (norm(x) @ w["w_qkv"]).split(d, dim=-1)
            scores = (q @ k.transpose(1, 2)) * d**-0.5
            future = torch.triu(torch.ones(seq, seq, dtype=torch.bool, device=self.device), 1)
            scores = torch.softmax(scores.masked_fill(future, -1e9), dim=-1)
            x = x + (scores @ v) @ w["w_o"]
            x = x + torch.relu(norm(x) @ w["w_1"]) @ w["w_2"]
            logits = norm(x).reshape(batch * seq, d) @ w["embedding"].T
            return logits.reshape(batch, seq, sb.VOCAB).cpu().numpy()

    def worker_context(self) -> Any:
        if self.device.type != "cuda":
            return super().worker_context()
        return self.torch.cuda.stream(self.torch.cuda.Stream(self.device))


def check_same_answers(model: Backend, block: Any) -> None:
    """Refuse to measure a device whose logits are not the Triton model's (float32 noise only)."""
    ids = np.arange(12, dtype=np.int32).reshape(3, 4) * 4099
    want, got = np.asarray(block.forward(ids)), model.forward(ids)
    if got.shape != want.shape or not np.allclose(got, want, rtol=1e-3, atol=1e-3):
        worst = float(np.max(np.abs(got - want))) if got.shape == want.shape else math.inf
        raise SystemExit(f"{model.name}: logits differ from the model's (max |diff| {worst:g})")


def backend(d_model: int, allow_cpu: bool) -> Backend:
    try:
        import torch

        if torch.cuda.is_available():
            return TorchBackend(d_model, "cuda:0")
    except ImportError:
        pass
    if not allow_cpu:
        raise SystemExit("no GPU here (torch with CUDA not found); --allow-cpu to check on CPU")
    return NumpyBackend(d_model)


def cost_curve(model: Backend, repeats: int) -> dict[int, dict[int, float]]:
    """{length: {batch: median ms}} of one forward, host copy of the logits included."""
    points = [(length, size) for length in LENGTHS for size in SIZES]
    inputs = {p: np.ones((p[1], p[0]), dtype=np.int32) for p in points}
    times: dict[tuple[int, int], list[float]] = {p: [] for p in points}
    for point in points:
        model.forward(inputs[point])  # warm (kernels chosen, memory pooled)
    for _ in range(repeats):
        for point in points:
            started = time.perf_counter()
            model.forward(inputs[point])
            times[point].append((time.perf_counter() - started) * 1000)
    curve: dict[int, dict[int, float]] = {length: {} for length in LENGTHS}
    for (length, size), values in times.items():
        curve[length][size] = float(statistics.median(values))
    return curve


# -- the batcher ------------------------------------------------------------------------------


@dataclass(eq=False)  # a request is itself: removed from the queue by identity
class Request:
    ids: np.ndarray
    queued: float
    done: threading.Event = field(default_factory=threading.Event)
    finished: float = 0.0
    logits: np.ndarray | None = None  # [length, vocab], its own tensor as Triton returns it


def take_batch(
    queue: deque[Request], candidate: Candidate, batching: bool, now: float
) -> tuple[list[Request], float]:
    """What the dynamic batcher sends now, and how long to wait if nothing (pure).

    The oldest request's shape decides; requests of other shapes wait their turn. A batch
    goes at once at a preferred size or maxBatchSize, else once the oldest has waited the
    queue delay, with what has gathered."""
    if not queue:
        return [], math.inf
    oldest = queue[0]
    if not batching:
        return [oldest], 0.0
    same = [r for r in queue if r.ids.shape == oldest.ids.shape][: candidate.max_batch_size]
    preferred = set(candidate.preferred_batch_sizes) | {candidate.max_batch_size}
    wait = oldest.queued + candidate.queue_delay_us / 1e6 - now
    if len(same) in preferred or wait <= 0:
        return same, 0.0
    return [], wait


class Batcher:
    """`candidate.instances` worker threads executing batches of queued requests."""

    def __init__(self, model: Backend, candidate: Candidate, batching: bool) -> None:
        self.model, self.candidate, self.batching = model, candidate, batching
        self.queue: deque[Request] = deque()
        self.cond = threading.Condition()
        self.stopping = False
        self.inferences = 0
        self.executions = 0
        self.workers = [
            threading.Thread(target=self._work, daemon=True) for _ in range(candidate.instances)
        ]
        for worker in self.workers:
            worker.start()

    def submit(self, ids: np.ndarray) -> Request:
        request = Request(ids, time.monotonic())
        with self.cond:
            self.queue.append(request)
            self.cond.notify()
        return request

    def stop(self) -> None:
        with self.cond:
            self.stopping = True
            self.cond.notify_all()
        for worker in self.workers:
            worker.join()

    def _next(self) -> list[Request]:
        with self.cond:
            while not self.stopping:
                batch, wait = take_batch(
                    self.queue, self.candidate, self.batching, time.monotonic()
                )
                if batch:
                    for request in batch:
                        self.queue.remove(request)
                    if self.queue:
                        self.cond.notify()  # another worker may take the rest
                    return batch
                self.cond.wait(None if math.isinf(wait) else wait)
            return []

    def _work(self) -> None:
        with self.model.worker_context():
            while batch := self._next():
                logits = self.model.forward(np.concatenate([r.ids for r in batch], axis=0))
                finished = time.monotonic()
                for row, request in enumerate(batch):
                    request.logits = np.ascontiguousarray(logits[row])
                    request.finished = finished
                    request.done.set()
                with self.cond:
                    self.inferences += len(batch)
                    self.executions += 1


@dataclass
class Run:
    rps: float
    p50_ms: float
    p99_ms: float
    mean_batch: float
    seconds: float


def closed_loop(
    model: Backend,
    candidate: Candidate,
    batching: bool,
    mix: dict[int, float],
    concurrency: int,
    warmup_s: float,
    window_s: float,
    seed: int = 1,
) -> Run:
    """`concurrency` clients, each sending its next request when the last is answered."""
    started = time.monotonic()
    rng = np.random.default_rng(seed)
    sequence = sb.draw_lengths(mix, 4096, rng)
    tokens = {n: rng.integers(0, sb.VOCAB, size=(1, n), dtype=np.int32) for n in mix}
    batcher = Batcher(model, candidate, batching)
    t0 = time.monotonic() + warmup_s
    t1 = t0 + window_s
    latencies: list[float] = []
    counted: list[tuple[int, int]] = []
    lock = threading.Lock()

    def client(index: int) -> None:
        i = index
        while time.monotonic() < t1:
            request = batcher.submit(tokens[sequence[i % len(sequence)]])
            request.done.wait()
            if t0 <= request.finished <= t1:
                with lock:
                    latencies.append((request.finished - request.queued) * 1000)
            i += concurrency

    def sample() -> None:
        for t in (t0, t1):
            time.sleep(max(0.0, t - time.monotonic()))
            with batcher.cond:
                counted.append((batcher.inferences, batcher.executions))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(concurrency)]
    threads.append(threading.Thread(target=sample))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    batcher.stop()
    (i0, e0), (i1, e1) = counted
    return Run(
        rps=len(latencies) / window_s,
        p50_ms=sb.percentile(latencies, 50),
        p99_ms=sb.percentile(latencies, 99) if latencies else math.inf,
        mean_batch=(i1 - i0) / (e1 - e0) if e1 > e0 else math.nan,
        seconds=time.monotonic() - started,
    )


def tuner_measure(
    model: Backend, mix: dict[int, float], slo: float, args: argparse.Namespace
) -> Callable[[Candidate], Measurement]:
    def measure(candidate: Candidate) -> Measurement:
        run = closed_loop(
            model, candidate, True, mix, args.concurrency, args.warmup, args.tune_window
        )
        return Measurement(
            candidate, run.rps, run.p50_ms, run.p99_ms, run.mean_batch, run.seconds, slo
        )

    return measure


# -- the section ------------------------------------------------------------------------------


def fmt(s: sb.Spread, digits: int = 1) -> str:
    return s.format(digits)


def off_on(
    model: Backend, args: argparse.Namespace, label: str, mix: dict[int, float], batch_ms: float
) -> tuple[str, str]:
    """One off/on row measured in ABBA order: the table row and the goal's verdicts."""
    runs: dict[str, list[Run]] = {"off": [], "on": []}
    for i, mode in sb.alternation_order(args.alternations):
        progress(f"{label}: alternation {i + 1}/{args.alternations}, batching {mode}")
        runs[mode].append(
            closed_loop(
                model, SAMPLE, mode == "on", mix, args.concurrency, args.warmup, args.window
            )
        )
    ratios = sb.spread([on.rps / off.rps for off, on in zip(runs["off"], runs["on"], strict=True)])

    def figure(mode: str, what: str) -> sb.Spread:
        return sb.spread([getattr(r, what) for r in runs[mode]])

    p99_on = figure("on", "p99_ms")
    speed = sb.speedup_clause(ratios.median)
    latency = sb.p99_clause(p99_on.median, SAMPLE.queue_delay_us / 1000, batch_ms)
    row = (
        f"| {label} | {fmt(figure('off', 'rps'))} | {fmt(figure('on', 'rps'))} | "
        f"**{ratios.format(2, 'x')}** | {fmt(figure('off', 'p50_ms'))} / "
        f"{fmt(figure('off', 'p99_ms'))} | {fmt(figure('on', 'p50_ms'))} / {fmt(p99_on)} | "
        f"{fmt(figure('on', 'mean_batch'), 2)} | {speed.verdict} | {latency.verdict} "
        f"(<= {latency.bound:.1f}) |"
    )
    verdict = (
        f"{label}: {ratios.median:.2f}x ({speed.verdict}, goal >= 4x); p99 {p99_on.median:.1f} "
        f"ms vs <= {latency.bound:.1f} ms ({latency.verdict})"
    )
    return row, verdict


def tuner_lines(model: Backend, args: argparse.Namespace, mix: dict[int, float]) -> list[str]:
    space = Space()
    measure = tuner_measure(model, mix, args.slo_p99_ms, args)
    budget = default_budget(space)
    progress(f"tuner: coordinate descent, budget {budget} of {len(space.grid())}")
    tuned = coordinate_descent(space, SAMPLE, measure, budget, Progress(budget))
    progress(f"grid: {len(space.grid())} configurations")
    grid = grid_search(space, measure, Progress(len(space.grid())))
    pick, best = tuned.best, grid.best
    if pick is None or best is None:
        return [f"Tuner: no candidate met the SLO p99 <= {args.slo_p99_ms:g} ms."]
    share = 1.0
    judged = "the pick is the grid's best configuration"
    if pick.candidate.key != best.candidate.key:
        progress(f"confirm: pick and grid's best, {args.confirm_rounds} rounds each")
        runs = confirm(measure, [pick.candidate, best.candidate], args.confirm_rounds)
        pick_runs, best_runs = runs[pick.candidate.key], runs[best.candidate.key]
        share = confirmed_rps(pick_runs, args.slo_p99_ms) / max(
            confirmed_rps(best_runs, args.slo_p99_ms), 1e-9
        )
        judged = (
            f"re-measured side by side {args.confirm_rounds} times each, the pick "
            f"{describe_runs(pick_runs)} against the grid's best "
            f"{describe_runs(best_runs)}"
        )
    time_share = tuned.seconds / grid.seconds
    met = share >= 0.95 and time_share <= 0.25
    return [
        f"Tuner (mixed lengths, SLO p99 <= {args.slo_p99_ms:g} ms, {args.tune_window:g}s per "
        f"candidate): pick {pick.candidate.describe()} at **{share:.1%}** of the grid's best "
        f"{best.candidate.describe()} ({judged}), in **{time_share:.1%}** of the grid's "
        f"measuring time ({len(tuned.measurements)} of {len(grid.measurements)} "
        f"configurations) -> **{'met' if met else 'missed'}** (goal: within 5%, <= 25%).",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--allow-cpu", action="store_true", help="run without a GPU (numpy)")
    parser.add_argument("--tiny", action="store_true", help="a few seconds in all (checks)")
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--alternations", type=int, default=4)
    parser.add_argument("--window", type=float, default=5.0, help="off/on seconds measured")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--tune-window", type=float, default=2.0)
    parser.add_argument("--slo-p99-ms", type=float, default=50.0)
    parser.add_argument("--confirm-rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=25, help="cost table rounds")
    parser.add_argument("--no-tuner", action="store_true")
    parser.add_argument("--commit", help="the commit measured (where the tree has no .git)")
    parser.add_argument("--write", type=Path, help="update this RESULTS.md's section")
    args = parser.parse_args(argv)
    if args.tiny:
        args.d_model, args.concurrency, args.alternations = 32, 4, 2
        args.window, args.warmup, args.tune_window, args.repeats = 0.3, 0.1, 0.2, 2
        args.confirm_rounds = 1
    started = time.monotonic()
    model = backend(args.d_model, args.allow_cpu)
    progress(f"device: {model.name}")
    progress("cost of one batch on the device")
    curve = cost_curve(model, args.repeats)
    full_batch_ms = curve[max(LENGTHS)][max(SIZES)]
    rows = [
        off_on(model, args, f"closed loop c={args.concurrency}, mixed lengths", MIX, full_batch_ms),
        off_on(
            model, args, f"closed loop c={args.concurrency}, length 1 only", ONE_LENGTH,
            curve[1][max(SIZES)],
        ),
    ]  # fmt: skip
    tuner = [] if args.no_tuner else tuner_lines(model, args, MIX)
    elapsed = time.monotonic() - started
    command = " ".join(
        ["python3 bench/gpu_serving.py", *(argv if argv is not None else sys.argv[1:])]
    )
    lines = [
        RESULTS_HEADING,
        "",
        f"Command: `{command}` at commit {args.commit or commit()} ({elapsed:.0f}s). Method: "
        "the docstring of `bench/gpu_serving.py`.",
        "",
        f"Device: **{model.name}**. Not Triton: the machine has no Triton Inference Server, so "
        "the model (the Triton model's decoder block, same weights) is served by an in-process "
        "batcher that follows the rendered config's rules (equal shapes only, preferred sizes, "
        "max queue delay, instances); the batch cost is the device's own. On: the sample's "
        f"batching ({SAMPLE.describe()}); off: one request per execution.",
        "",
        "Cost of one batch on the device (median ms, logits copied to the host):",
        "",
        "| batch | " + " | ".join(f"length {n}" for n in LENGTHS)
        + " | length 1: vs batch 1 per item |",
        "|---:|" + "---:|" * len(LENGTHS) + "---:|",
        *(
            f"| {size} | " + " | ".join(f"{curve[n][size]:.2f}" for n in LENGTHS)
            + f" | {curve[1][1] * size / curve[1][size]:.1f}x |"
            for size in SIZES
        ),
        "",
        "| run | req/s off | req/s on | on / off | p50 / p99 ms off | p50 / p99 ms on | "
        "mean exec batch on | >= 4x | p99 clause (on) |",
        "|---|---:|---:|---:|---:|---:|---:|---|---|",
        *(row for row, _ in rows),
        "",
        *(f"- {verdict}" for _, verdict in rows),
        "",
        *tuner,
        "",
    ]  # fmt: skip
    section = "\n".join(lines)
    print(section)
    if args.write:
        write_section(args.write, RESULTS_HEADING, section)
        progress(f"updated {args.write}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
