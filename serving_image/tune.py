"""Measuring for `ccs-operator tune`: one candidate = one real tritonserver under load.

For each candidate (ccs_operator.tune.Candidate) the service is re-rendered with the
candidate's batching and instance count, served by `LocalTriton` (the operator's config and
flags, KIND_GPU as KIND_CPU), and driven by a closed loop of `concurrency` gRPC clients
sending requests whose lengths follow a fixed mix; throughput counts completions inside a
fixed window after a warm-up, p50/p99 are those requests' latencies, the mean executed batch
is Triton's delta nv_inference_count / delta nv_inference_exec_count. The server is pinned
to the cores the client (this process) does not use when there are two or more, and BLAS
to one thread per instance. The time a measurement costs includes the server's start.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from ccs_operator.core.api import ClaudeCodeService, SpecError, parse_service
from ccs_operator.tune import (
    Candidate,
    Measurement,
    Progress,
    Search,
    Space,
    add_arguments,
    coordinate_descent,
    default_budget,
    grid_search,
    report,
    with_candidate,
)

from .local import LocalTriton, TritonStartError

VOCAB = 50257
BLAS_ENV = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
COMPUTE_MODEL_DIR = Path(__file__).resolve().parent / "models" / "claude_code_compute"


def parse_mix(text: str) -> list[tuple[int, float]]:
    """'1:2,2:1,4:1' -> [(length, probability)]."""
    weights: dict[int, float] = {}
    for part in text.split(","):
        length, _, weight = part.partition(":")
        if int(length) < 1 or float(weight or 1) <= 0:
            raise ValueError(f"bad length mix entry {part!r}")
        weights[int(length)] = float(weight or 1)
    total = sum(weights.values())
    return [(n, w / total) for n, w in sorted(weights.items())]


def nearest_rank(values: Sequence[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return float(ordered[max(1, math.ceil(q / 100 * len(ordered))) - 1])


def pin_process(cpus: set[int]) -> None:
    """Pin every thread of this process (children started afterwards inherit it)."""
    for task in os.listdir("/proc/self/task"):
        with contextlib.suppress(OSError):
            os.sched_setaffinity(int(task), cpus)


@dataclass
class Load:
    concurrency: int = 32
    lengths: str = "1:2,2:1,4:1"
    warmup_s: float = 0.5
    window_s: float = 2.0
    seed: int = 1


class TritonMeasure:
    """measure(candidate) -> Measurement, on a fresh tritonserver each time."""

    def __init__(
        self,
        ccs: ClaudeCodeService,
        load: Load,
        slo_p99_ms: float,
        repository: str | None = None,
        env: dict[str, str] | None = None,
        pin: bool = True,
    ) -> None:
        self.ccs = ccs
        self.load = load
        self.slo_p99_ms = slo_p99_ms
        self.repository = repository
        self.env = {**BLAS_ENV, **(env or {})}
        mix = parse_mix(load.lengths)
        rng = np.random.default_rng(load.seed)
        self.sequence = [
            int(n) for n in rng.choice([n for n, _ in mix], size=4096, p=[p for _, p in mix])
        ]
        self.tokens = {n: rng.integers(0, VOCAB, size=(1, n), dtype=np.int32) for n, _ in mix}
        cores = sorted(os.sched_getaffinity(0))
        self.client_cpus: set[int] | None = {cores[0]} if pin and len(cores) > 1 else None
        self.server_cpus: set[int] | None = set(cores[1:]) if self.client_cpus else None

    def __call__(self, candidate: Candidate) -> Measurement:
        started = time.monotonic()
        ccs = with_candidate(self.ccs, candidate)
        triton = LocalTriton.for_service(ccs, repository=self.repository, env=self.env)
        saved = os.sched_getaffinity(0)
        if self.server_cpus:
            pin_process(self.server_cpus)
        try:
            triton.start()
        finally:
            pin_process(saved)
        try:
            check_served(triton, self.ccs.spec.model.name, candidate)
            if self.client_cpus:
                pin_process(self.client_cpus)
            latencies, delta = asyncio.run(self._closed_loop(triton))
        finally:
            triton.stop()
            pin_process(saved)
        inferences, executions = delta
        return Measurement(
            candidate=candidate,
            rps=len(latencies) / self.load.window_s,
            p50_ms=nearest_rank(latencies, 50),
            p99_ms=nearest_rank(latencies, 99) if latencies else math.inf,
            mean_batch=inferences / executions if executions else math.nan,
            seconds=time.monotonic() - started,
            slo_p99_ms=self.slo_p99_ms,
        )

    async def _closed_loop(self, triton: LocalTriton) -> tuple[list[float], tuple[float, float]]:
        import tritonclient.grpc as grpcclient
        import tritonclient.grpc.aio as grpcaio

        model = self.ccs.spec.model
        input_name, output_name = model.inputs[0].name, model.outputs[0].name
        client = grpcaio.InferenceServerClient(triton.grpc_url)
        begin = time.monotonic()
        t0 = begin + self.load.warmup_s
        t1 = t0 + self.load.window_s
        latencies: list[float] = []
        cursor = iter(range(10**9))

        def counters() -> tuple[float, float]:
            def total(name: str) -> float:
                values = triton.metric_values(name)
                return sum(
                    v for labels, v in values.items() if dict(labels).get("model") == model.name
                )

            return total("nv_inference_count"), total("nv_inference_exec_count")

        async def sample() -> list[tuple[float, float]]:
            values = []
            for t in (t0, t1):
                await asyncio.sleep(max(0.0, t - time.monotonic()))
                values.append(await asyncio.to_thread(counters))
            return values

        async def worker() -> None:
            while time.monotonic() < t1:
                ids = self.tokens[self.sequence[next(cursor) % len(self.sequence)]]
                tensor = grpcclient.InferInput(input_name, list(ids.shape), "INT32")
                tensor.set_data_from_numpy(ids)
                sent = time.monotonic()
                result = await client.infer(model.name, [tensor], client_timeout=120)
                if result.as_numpy(output_name) is None:
                    raise RuntimeError(f"no {output_name} in the answer")
                done = time.monotonic()
                if t0 <= done <= t1:
                    latencies.append((done - sent) * 1000)

        sampler = asyncio.create_task(sample())
        try:
            await asyncio.gather(*(worker() for _ in range(self.load.concurrency)))
            sampled = await sampler
        finally:
            sampler.cancel()
            await client.close()
        return latencies, (sampled[1][0] - sampled[0][0], sampled[1][1] - sampled[0][1])


def check_served(triton: LocalTriton, model: str, candidate: Candidate) -> None:
    """Raise unless the server loaded the candidate's batching and instance count."""
    import tritonclient.http as httpclient

    config = httpclient.InferenceServerClient(triton.http_url).get_model_config(model)
    dynamic = config.get("dynamic_batching", {})
    served = (
        int(config.get("max_batch_size", 0)),
        tuple(int(s) for s in dynamic.get("preferred_batch_size", [])),
        int(dynamic.get("max_queue_delay_microseconds", 0)),
        sum(int(g.get("count", 1)) for g in config.get("instance_group", [])),
    )
    if served != candidate.key:
        raise RuntimeError(f"served {served}, not the candidate {candidate.key}")


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(","))


def space_from_args(args: argparse.Namespace) -> Space:
    return Space(
        max_batch_size=_ints(args.max_batch),
        preferred=tuple(args.preferred.split(",")),
        queue_delay_us=_ints(args.queue_delay),
        instances=_ints(args.instances),
    )


def run(args: argparse.Namespace) -> int:
    """`ccs-operator tune`: the handler (arguments defined in ccs_operator.cli)."""
    try:
        ccs = parse_service(yaml.safe_load(Path(args.file).read_text()))
    except (OSError, yaml.YAMLError, SpecError) as exc:
        print(f"error: {args.file}: {exc}", file=sys.stderr)
        return 2
    try:
        space = space_from_args(args)
        load = Load(args.concurrency, args.lengths, args.warmup, args.window, args.seed)
        parse_mix(load.lengths)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    repository = args.repository
    if repository == "compute":
        repository = str(COMPUTE_MODEL_DIR)
    measure = TritonMeasure(ccs, load, args.slo_p99_ms, repository, pin=not args.no_pin)
    grid = space.grid()
    budget = args.budget or default_budget(space)
    total = len(grid) if args.grid else min(budget, len(grid))
    what = "full grid" if args.grid else f"coordinate descent, budget {budget}"
    print(
        f"tune: {ccs.name}: {what} over {len(grid)} configurations; load: closed loop "
        f"c={load.concurrency}, lengths {load.lengths}; SLO p99 <= {args.slo_p99_ms:g} ms",
        file=sys.stderr,
    )
    progress = Progress(total)
    try:
        search: Search = (
            grid_search(space, measure, progress)
            if args.grid
            else coordinate_descent(space, space.start(ccs), measure, budget, progress)
        )
    except TritonStartError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    header = [
        f"ccs-operator tune -f {args.file}: {what}, {len(search.measurements)} of "
        f"{len(grid)} configurations measured",
        f"load: closed loop c={load.concurrency}, lengths {load.lengths}, "
        f"{load.window_s:g}s window after {load.warmup_s:g}s warm-up; SLO p99 <= "
        f"{args.slo_p99_ms:g} ms; model files: {repository or ccs.spec.model.repository}",
        *measure_notes(measure),
    ]
    text, best = report(ccs, search, header)
    sys.stdout.write(text)
    return 0 if best is not None else 1


def measure_notes(measure: TritonMeasure) -> list[str]:
    if measure.client_cpus and measure.server_cpus:
        return [
            f"client on CPU {sorted(measure.client_cpus)}, tritonserver on CPU "
            f"{sorted(measure.server_cpus)}, one BLAS thread per instance"
        ]
    return ["client and server share the cores; one BLAS thread per instance"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tune")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
