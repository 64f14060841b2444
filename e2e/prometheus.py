"""The real Prometheus (Debian's `prometheus` package) on loopback, for tests.

    with PrometheusServer([ScrapeTarget("127.0.0.1:8002", {"namespace": "ns",
                                                          "service": "svc"})]) as prom:
        prom.wait_for_targets_up()
        ... query prom.url ...

Each target's labels are attached to every series scraped from it, exactly as a
ServiceMonitor's relabelling attaches `namespace`, `service` and `pod` in a cluster, so the
operator's queries run unchanged. Targets can be rewritten and reloaded live
(`set_targets`), and the server stopped and started again on the same port and data
directory ("Prometheus down" tests).

This module depends only on the standard library; it does not import the rest of e2e/.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

READY_TIMEOUT_S = 60.0


class PrometheusStartError(RuntimeError):
    """Prometheus could not be installed, started or reloaded; the message names its log."""


@dataclass(frozen=True)
class ScrapeTarget:
    address: str  # host:port
    labels: Mapping[str, str] = field(default_factory=dict)
    metrics_path: str = "/metrics"


def _progress(message: str) -> None:
    print(f"[prometheus] {message}", file=sys.stderr, flush=True)


def find_binary() -> str | None:
    return shutil.which("prometheus") or (
        "/usr/bin/prometheus" if os.access("/usr/bin/prometheus", os.X_OK) else None
    )


def ensure_binary() -> str:
    """The prometheus binary; installs Debian's package with apt-get when missing."""
    found = find_binary()
    if found:
        return found
    apt = shutil.which("apt-get")
    if apt is None or os.geteuid() != 0:
        raise PrometheusStartError(
            "prometheus is not on PATH; install it (Debian/Ubuntu: apt-get install prometheus)"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (
        [apt, "update"],
        [apt, "install", "-y", "--no-install-recommends", "prometheus"],
    ):
        _progress("running " + " ".join(argv[1:]) + " (first run only)")
        done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise PrometheusStartError(
                f"{' '.join(argv)} failed ({done.returncode}):\n{done.stderr[-2000:]}"
            )
    found = find_binary()
    if not found:
        raise PrometheusStartError("apt-get installed prometheus but no binary was found")
    _progress(f"installed {found}")
    return found


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def render_config(
    targets: Iterable[ScrapeTarget], scrape_interval: str, job: str = "triton"
) -> dict[str, Any]:
    static_configs = []
    for t in targets:
        labels = dict(t.labels)
        if t.metrics_path != "/metrics":
            labels["__metrics_path__"] = t.metrics_path  # per-target path, as relabelling does
        static_configs.append({"targets": [t.address], "labels": labels})
    return {
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval},
        "scrape_configs": [
            {
                "job_name": job,
                "scrape_interval": scrape_interval,
                "scrape_timeout": scrape_interval,
                "static_configs": static_configs,
            }
        ],
    }


class PrometheusServer:
    """A real Prometheus process with a generated config; a context manager."""

    def __init__(
        self,
        targets: Sequence[ScrapeTarget] = (),
        *,
        scrape_interval: str = "1s",
        retention: str = "2h",
        port: int | None = None,
        workdir: Path | None = None,
        binary: str | None = None,
    ) -> None:
        self.targets = list(targets)
        self.scrape_interval = scrape_interval
        self.retention = retention
        self.port = port or free_port()
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="ccs-prometheus-"))
        self.binary = binary
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: Any = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def config_path(self) -> Path:
        return self.workdir / "prometheus.yml"

    @property
    def log_path(self) -> Path:
        return self.workdir / "prometheus.log"

    def _write_config(self) -> None:
        # JSON is YAML, and needs no YAML library here.
        text = json.dumps(render_config(self.targets, self.scrape_interval), indent=2)
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(self.config_path)  # never let a reload read half a file

    def _log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = READY_TIMEOUT_S) -> PrometheusServer:
        if self.running:
            return self
        binary = self.binary or ensure_binary()
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "data").mkdir(exist_ok=True)
        self._write_config()
        argv = [
            binary,
            f"--config.file={self.config_path}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            f"--storage.tsdb.path={self.workdir / 'data'}",
            f"--storage.tsdb.retention.time={self.retention}",
            "--web.enable-lifecycle",
            "--log.level=info",
        ]
        _progress(f"starting on {self.url}, log {self.log_path}")
        self._log = self.log_path.open("ab")
        self._proc = subprocess.Popen(
            argv, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        self._wait_ready(timeout)
        _progress("ready")
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self._proc is not None and self._proc.poll() is not None:
                raise PrometheusStartError(
                    f"prometheus exited with {self._proc.returncode}; see {self.log_path}:\n"
                    + self._log_tail()
                )
            # Not listening yet (URLError) and 503 "not ready" (HTTPError) are both OSError.
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as r,
            ):
                if r.status == 200:
                    return
            if time.monotonic() > deadline:
                self.stop()
                raise PrometheusStartError(
                    f"prometheus not ready on {self.url} after {timeout:.0f}s; see "
                    f"{self.log_path}:\n" + self._log_tail()
                )
            time.sleep(0.2)

    def stop(self, timeout: float = 15.0) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if self._log is not None:
            self._log.close()
            self._log = None

    def set_targets(self, targets: Sequence[ScrapeTarget]) -> None:
        """Rewrite the scrape targets and reload the running server."""
        self.targets = list(targets)
        self._write_config()
        if self.running:
            self.reload()

    def reload(self) -> None:
        req = urllib.request.Request(f"{self.url}/-/reload", method="POST")
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                if r.status == 200:
                    return
        except urllib.error.HTTPError as e:
            body = e.read().decode(errors="replace")
            raise PrometheusStartError(
                f"reload refused ({e.code}): {body}; see {self.log_path}"
            ) from e
        raise PrometheusStartError(f"reload failed; see {self.log_path}")

    # --- small HTTP helpers for tests ---------------------------------------------------

    def api(self, path: str, params: Mapping[str, str] | None = None) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}{path}{query}", timeout=10) as r:
            body = json.load(r)
        if body.get("status") != "success":
            raise PrometheusStartError(f"{path}: {body}")
        return body["data"]

    def wait_for_targets_up(self, timeout: float = 30.0) -> None:
        """Until every configured target has been scraped successfully."""
        want = {t.address for t in self.targets}
        last: dict[str, str] = {}

        def ready() -> bool:
            active = self.api("/api/v1/targets", {"state": "active"})["activeTargets"]
            last.clear()
            last.update({t["scrapeUrl"]: t["health"] + " " + t["lastError"] for t in active})
            up = {t["discoveredLabels"]["__address__"] for t in active if t["health"] == "up"}
            return want <= up

        self.wait_until(ready, timeout, lambda: f"targets not up: {last}")

    def wait_until(
        self,
        predicate: Callable[[], bool],
        timeout: float,
        describe: Callable[[], str] = lambda: "",
    ) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise TimeoutError(f"after {timeout:.0f}s: {describe()}")
            time.sleep(0.25)

    def __enter__(self) -> PrometheusServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        if self._own_workdir and exc is None:
            shutil.rmtree(self.workdir, ignore_errors=True)
        elif self._own_workdir:
            _progress(f"kept {self.workdir} for inspection (log {self.log_path})")


if __name__ == "__main__":  # manual check: start an empty server and wait for Ctrl-C
    with PrometheusServer() as server:
        print(server.url, flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            while server.running:
                time.sleep(1)
