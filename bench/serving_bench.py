"""Dynamic batching on vs off on a real Triton: throughput, latency, executed batch size.

    python bench/serving_bench.py                           # prints the tables
    python bench/serving_bench.py --write bench/RESULTS.md  # and updates its section there

Same run, same tritonserver binary (nvidia-pytriton's, on CPU), same sample model, same
service (samples/claude-code.yaml rendered by the operator: max batch 32, preferred
8/16/32, 2 ms max queue delay, 2 instances): once with the rendered dynamic_batching, once
with `batching.enabled: false` (Triton's default scheduler, one request per execution).

The sample model simulates a GPU (serving_image/models/claude_code/1/model.py): each
executed batch costs a fixed time plus a per-item time (defaults 20 ms + 1 ms/item, the
write-up's 120 ms -> 300 ms TP99 curve for batch 1 -> 32 scaled by 1/6), spent sleeping as
a device would, while the host does the real work of serving: tensors through the Python
backend's shared memory, gRPC, and [1, 50257] fp32 logits (201 kB) per request.

Load: closed loop, N concurrent asyncio gRPC clients (tritonclient.grpc.aio), each sending
a one-token request again as soon as the previous answer arrives. Per level: warm-up, then
a measured window. Mean executed batch size is Triton's own count:
delta nv_inference_count / delta nv_inference_exec_count over the window. The "TP99 by
batch size" table sends requests that carry b rows each, one at a time, to the batching
server (the write-up's table).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
import yaml

from results import write_section

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from ccs_operator.api import ClaudeCodeService, parse_service  # noqa: E402
from serving_image.local import LocalTriton  # noqa: E402

RESULTS_HEADING = "## Serving: dynamic batching on a real Triton"
MODEL = "claude_code"
SAMPLE = ROOT / "samples" / "claude-code.yaml"


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass
class Level:
    mode: str
    concurrency: int
    requests: int
    seconds: float
    latencies_ms: list[float]
    inferences: float  # delta nv_inference_count
    executions: float  # delta nv_inference_exec_count

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    def pct(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")

    @property
    def mean_batch(self) -> float:
        return self.inferences / self.executions if self.executions else float("nan")


def service(batching: bool) -> ClaudeCodeService:
    body = yaml.safe_load(SAMPLE.read_text())
    body["spec"]["batching"]["enabled"] = batching
    return parse_service(body)


def counters(triton: LocalTriton) -> tuple[float, float]:
    def total(name: str) -> float:
        values = triton.metric_values(name)
        return sum(v for labels, v in values.items() if dict(labels).get("model") == MODEL)

    return total("nv_inference_count"), total("nv_inference_exec_count")


async def closed_loop(url: str, concurrency: int, seconds: float, rows: int = 1) -> list[float]:
    """Latencies (ms) of requests completed within `seconds` by `concurrency` workers."""
    client = grpcaio.InferenceServerClient(url)
    ids = np.arange(rows, dtype=np.int32).reshape(rows, 1) + 1
    latencies: list[float] = []
    deadline = time.monotonic() + seconds

    async def worker() -> None:
        while time.monotonic() < deadline:
            tensor = grpcclient.InferInput("input_ids", [rows, 1], "INT32")
            tensor.set_data_from_numpy(ids)
            started = time.monotonic()
            result = await client.infer(MODEL, [tensor], client_timeout=60)
            output = result.as_numpy("output")
            assert output is not None and output.shape == (rows, 1, 50257)
            if time.monotonic() <= deadline:
                latencies.append((time.monotonic() - started) * 1000)

    try:
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    finally:
        await client.close()
    return latencies


def measure(
    triton: LocalTriton, mode: str, concurrency: int, warmup_s: float, window_s: float
) -> Level:
    asyncio.run(closed_loop(triton.grpc_url, concurrency, warmup_s))
    before = counters(triton)
    started = time.monotonic()
    latencies = asyncio.run(closed_loop(triton.grpc_url, concurrency, window_s))
    elapsed = time.monotonic() - started
    after = counters(triton)
    level = Level(
        mode,
        concurrency,
        len(latencies),
        elapsed,
        latencies,
        after[0] - before[0],
        after[1] - before[1],
    )
    progress(
        f"  {mode:>3} c={concurrency:<3} {level.rps:7.1f} req/s  p50 {level.pct(50):6.1f} ms  "
        f"p99 {level.pct(99):6.1f} ms  mean batch {level.mean_batch:5.2f}"
    )
    return level


def tp99_by_batch(triton: LocalTriton, sizes: list[int], window_s: float) -> dict[int, Any]:
    table = {}
    for rows in sizes:
        latencies = asyncio.run(closed_loop(triton.grpc_url, 1, window_s, rows=rows))
        table[rows] = (float(np.percentile(latencies, 99)), statistics.median(latencies))
        progress(f"  batch {rows:>2}: TP99 {table[rows][0]:6.1f} ms ({len(latencies)} requests)")
    return table




def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--concurrency", default="1,4,16,32,64")
    parser.add_argument("--window", type=float, default=8.0, help="measured seconds per level")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds per level")
    parser.add_argument("--batch-cost-ms", type=float, default=20.0)
    parser.add_argument("--item-cost-ms", type=float, default=1.0)
    parser.add_argument("--write", type=Path, help="update this RESULTS.md's section")
    args = parser.parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",")]
    env = {
        "CCS_SAMPLE_BATCH_COST_MS": str(args.batch_cost_ms),
        "CCS_SAMPLE_ITEM_COST_MS": str(args.item_cost_ms),
    }
    started = time.monotonic()
    results: dict[str, list[Level]] = {}
    notes: list[str] = []
    tp99: dict[int, Any] = {}
    for mode, batching in (("off", False), ("on", True)):
        progress(f"dynamic batching {mode}: starting tritonserver")
        with LocalTriton.for_service(service(batching), env=env) as triton:
            notes = triton.notes
            results[mode] = [
                measure(triton, mode, c, args.warmup, args.window) for c in levels
            ]
            if batching:
                progress("TP99 by request batch size (batching on, one request at a time)")
                tp99 = tp99_by_batch(triton, [1, 8, 16, 32], args.window / 2)
    elapsed = time.monotonic() - started

    rows = []
    for off, on in zip(results["off"], results["on"], strict=True):
        rows.append(
            f"| {on.concurrency} | {off.rps:.1f} | {on.rps:.1f} | **{on.rps / off.rps:.2f}x** | "
            f"{off.pct(50):.1f} / {off.pct(99):.1f} | {on.pct(50):.1f} / {on.pct(99):.1f} | "
            f"{off.mean_batch:.2f} | {on.mean_batch:.2f} |"
        )
    at32 = {lv.mode: lv for mode in results for lv in results[mode] if lv.concurrency == 32}
    ratio32 = at32["on"].rps / at32["off"].rps if len(at32) == 2 else float("nan")
    cmd = "python bench/serving_bench.py" + "".join(
        f" {a}" for a in (argv if argv is not None else sys.argv[1:])
    )
    lines = [
        RESULTS_HEADING,
        "",
        f"Command: `{cmd}` ({elapsed:.0f}s). Method: the docstring of `bench/serving_bench.py`.",
        "Real tritonserver (nvidia-pytriton's, CPU) with the config the operator renders for",
        "`samples/claude-code.yaml`; baseline = the same service with `batching.enabled: false`,",
        "measured in the same run. Model: the Python-backend sample model simulating a GPU at "
        f"{args.batch_cost_ms:g} ms per executed batch + {args.item_cost_ms:g} ms per item; "
        f"closed-loop gRPC clients, {args.window:g}s measured per level after "
        f"{args.warmup:g}s warm-up. Local substitutions: " + "; ".join(notes) + ".",
        "",
        f"Goal: >= 4x throughput at concurrency 32 with batching on. Measured: "
        f"**{ratio32:.2f}x** ({'met' if ratio32 >= 4 else 'NOT met'}).",
        "",
        "| concurrency | req/s off | req/s on | on / off | p50 / p99 ms off | "
        "p50 / p99 ms on | mean exec batch off | mean exec batch on |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
        *rows,
        "",
        "Mean executed batch = delta `nv_inference_count` / delta `nv_inference_exec_count`.",
        "",
        "TP99 by request batch size (batching on, one request at a time; the write-up measured",
        "120 / 180 / 220 / 300 ms on its GPU):",
        "",
        "| batch size | TP99 ms | p50 ms |",
        "|---:|---:|---:|",
        *(f"| {b} | {p99:.1f} | {p50:.1f} |" for b, (p99, p50) in tp99.items()),
        "",
        "Reading: without batching the two instances execute one request each per batch",
        "cost, so throughput is flat from concurrency 4 on and latency grows with the queue;",
        "with the rendered dynamic batching, executed batches grow with concurrency and",
        "throughput follows. At concurrency 1 batching costs a little (up to the 2 ms",
        "max queue delay). Executed batches stay below what the concurrency allows because",
        "the host (2 shared cores running client, server and stubs) is the bottleneck here;",
        "on a GPU node the fixed per-batch cost dominates and batches fill further.",
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
