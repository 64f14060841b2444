"""Open-loop load on a ClaudeCodeService's endpoints, from inside the pod network.

As kube-proxy would, requests go to the Service's *ready* endpoints (its EndpointSlices,
re-read every second), round robin; arrivals are Poisson at a rate that follows a
piecewise-linear profile, so a slow server does not slow the sender (open loop). Each
request is a real gRPC inference (serving_image.client) on the endpoint's `grpc` port.

    python -m e2e exec -- python -m e2e.loadgen -n NS -s NAME --profile 0:2,30:20,90:20,100:0

prints one JSON object per second on stdout: {"t", "rate", "sent", "ok", "failed",
"inflight", "p50_ms", "p99_ms", "endpoints"} (latencies of the requests completed in that
second), then a summary line {"summary": {...}}. It refuses to run outside the pod network.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from kubernetes import client, config

from e2e.netns import PodNetwork
from serving_image.client import AsyncTritonClient, RetryPolicy

MAX_INFLIGHT = 512


@dataclass(frozen=True)
class Profile:
    """A request rate (per second) linear between (time, rate) points; 0 after the last."""

    points: tuple[tuple[float, float], ...]

    @classmethod
    def parse(cls, text: str) -> Profile:
        points = []
        for part in text.split(","):
            at, _, rate = part.partition(":")
            try:
                points.append((float(at), float(rate)))
            except ValueError:
                raise ValueError(f"--profile {text!r}: {part!r} is not TIME:RATE") from None
        if not points or any(b[0] <= a[0] for a, b in itertools.pairwise(points)):
            raise ValueError(f"--profile {text!r}: give increasing TIME:RATE points")
        if any(rate < 0 for _, rate in points):
            raise ValueError(f"--profile {text!r}: rates must not be negative")
        return cls(tuple(points))

    @property
    def duration(self) -> float:
        return self.points[-1][0]

    def rate(self, t: float) -> float:
        pts = self.points
        if t < pts[0][0] or t > pts[-1][0]:
            return 0.0
        for (t0, r0), (t1, r1) in itertools.pairwise(pts):
            if t0 <= t <= t1:
                return r0 + (r1 - r0) * (t - t0) / (t1 - t0)
        return pts[-1][1]


def quantile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    return float(np.quantile(np.asarray(values), q))


@dataclass
class Window:
    sent: int = 0
    ok: int = 0
    failed: int = 0
    latencies: list[float] = field(default_factory=list)


class Endpoints:
    """The Service's ready endpoints, from its EndpointSlices."""

    def __init__(self, api: client.ApiClient, namespace: str, service: str, port: str) -> None:
        self.discovery = client.DiscoveryV1Api(api)
        self.namespace, self.service, self.port = namespace, service, port
        self.addresses: list[str] = []
        self._next = 0

    def refresh(self) -> None:
        slices = self.discovery.list_namespaced_endpoint_slice(
            self.namespace, label_selector=f"kubernetes.io/service-name={self.service}"
        )
        found = []
        for item in slices.items:
            ports = {p.name: p.port for p in item.ports or []}
            if self.port not in ports:
                continue
            for endpoint in item.endpoints or []:
                if endpoint.conditions is not None and endpoint.conditions.ready is False:
                    continue
                found += [f"{a}:{ports[self.port]}" for a in endpoint.addresses]
        self.addresses = sorted(found)

    def pick(self) -> str | None:
        if not self.addresses:
            return None
        self._next = (self._next + 1) % len(self.addresses)
        return self.addresses[self._next]


class LoadGenerator:
    def __init__(
        self,
        endpoints: Endpoints,
        profile: Profile,
        model: str,
        network: PodNetwork,
        seq_len: int = 8,
        seed: int = 1,
    ) -> None:
        self.endpoints = endpoints
        self.profile = profile
        self.model = model
        self.network = network
        self.rng = random.Random(seed)
        self.ids = np.arange(seq_len, dtype=np.int32).reshape(1, seq_len)
        self.clients: dict[str, AsyncTritonClient] = {}
        self.window = Window()
        self.total = Window()
        self.inflight = 0
        self.dropped = 0

    def _client(self, address: str) -> AsyncTritonClient:
        found = self.clients.get(address)
        if found is None:
            self.network.require_inside(address)
            policy = RetryPolicy(max_attempts=1, attempt_timeout_s=30.0, total_timeout_s=30.0)
            found = AsyncTritonClient(address, self.model, policy=policy)
            self.clients[address] = found
        return found

    async def _one(self, address: str) -> None:
        started = time.monotonic()
        self.inflight += 1
        try:
            await self._client(address).infer(self.ids)
        except Exception:
            self.window.failed += 1
            self.total.failed += 1
        else:
            elapsed = (time.monotonic() - started) * 1000
            for w in (self.window, self.total):
                w.ok += 1
                w.latencies.append(elapsed)
        finally:
            self.inflight -= 1

    async def _report(self, started: float) -> None:
        while True:
            await asyncio.sleep(1.0)
            t = time.monotonic() - started
            with contextlib.suppress(Exception):
                self.endpoints.refresh()
            w, self.window = self.window, Window()
            line = {
                "t": round(t, 1),
                "rate": round(self.profile.rate(t), 2),
                "sent": w.sent,
                "ok": w.ok,
                "failed": w.failed,
                "inflight": self.inflight,
                "p50_ms": quantile(w.latencies, 0.5),
                "p99_ms": quantile(w.latencies, 0.99),
                "endpoints": len(self.endpoints.addresses),
            }
            print(json.dumps(line), flush=True)

    async def run(self) -> dict[str, object]:
        self.endpoints.refresh()
        started = time.monotonic()
        reporter = asyncio.create_task(self._report(started))
        tasks: set[asyncio.Task[None]] = set()
        try:
            while (t := time.monotonic() - started) < self.profile.duration:
                rate = self.profile.rate(t)
                if rate <= 0:
                    await asyncio.sleep(0.05)
                    continue
                await asyncio.sleep(self.rng.expovariate(rate))
                address = self.endpoints.pick()
                if address is None or self.inflight >= MAX_INFLIGHT:
                    self.dropped += 1
                    self.window.failed += 1
                    self.total.failed += 1
                    continue
                self.window.sent += 1
                self.total.sent += 1
                task = asyncio.create_task(self._one(address))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            if tasks:
                await asyncio.wait(tasks, timeout=30)
        finally:
            reporter.cancel()
            for c in self.clients.values():
                with contextlib.suppress(Exception):
                    await c.close()
        return {
            "sent": self.total.sent,
            "ok": self.total.ok,
            "failed": self.total.failed,
            "dropped_no_endpoint": self.dropped,
            "p50_ms": quantile(self.total.latencies, 0.5),
            "p99_ms": quantile(self.total.latencies, 0.99),
        }


def command(state_dir: Path, namespace: str, service: str, profile: str, *extra: str) -> list[str]:
    """The argv that runs this load generator (wrap it with LocalCluster.exec_argv)."""
    return [
        sys.executable,
        "-m",
        "e2e.loadgen",
        "-n",
        namespace,
        "-s",
        service,
        "--profile",
        profile,
        f"--state-dir={state_dir}",
        *extra,
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m e2e.loadgen", description=__doc__)
    parser.add_argument("-n", "--namespace", required=True)
    parser.add_argument("-s", "--service", required=True, help="the ClaudeCodeService's name")
    parser.add_argument("--model", default="claude_code")
    parser.add_argument("--profile", required=True, help="TIME:RATE,... (seconds, requests/s)")
    parser.add_argument("--port-name", default="grpc")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--seq-len", type=int, default=8, help="tokens per request (default 8)")
    parser.add_argument(
        "--state-dir", type=Path, help="cluster state (default: $CCS_E2E_STATE_DIR or the cache)"
    )
    args = parser.parse_args(argv)
    from e2e.paths import default_state_dir

    state_dir = (args.state_dir or default_state_dir()).resolve()
    network = PodNetwork.for_state_dir(state_dir)
    if not network.inside():
        print(
            "loadgen: run it inside the pod network: python -m e2e exec -- python -m e2e.loadgen",
            file=sys.stderr,
        )
        return 2
    try:
        profile = Profile.parse(args.profile)
    except ValueError as exc:
        print(f"loadgen: {exc}", file=sys.stderr)
        return 2
    kubeconfig = os.environ.get("KUBECONFIG") or str(state_dir / "kubeconfig")
    api = config.new_client_from_config(config_file=kubeconfig)
    endpoints = Endpoints(api, args.namespace, args.service, args.port_name)
    generator = LoadGenerator(
        endpoints, profile, args.model, network, seq_len=args.seq_len, seed=args.seed
    )
    summary = asyncio.run(generator.run())
    print(json.dumps({"summary": summary}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
