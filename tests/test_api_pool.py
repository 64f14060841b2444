"""The API client's connection pool holds every connection the operator keeps open at once.

Against a loopback HTTP server that counts the connections it accepts: with every API worker
busy, each of the operator's own watch streams open and the lease keeper renewing beside
them, two rounds of requests reuse the same connections (no new ones, and no urllib3
"Connection pool is full" warning). A pool sized to the workers alone (the old size) is the
positive control: the same load discards connections and opens new ones.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import kubernetes
import pytest

from ccs_operator import runner
from ccs_operator.clients.kube import KubeClient
from ccs_operator.config import OperatorConfig
from ccs_operator.controllers.handlers import own_watch_streams

from helpers import reply

HOLD_SECONDS = 0.3


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.accepted = 0
        self.release = threading.Event()

    def get_request(self) -> Any:
        request = super().get_request()
        self.accepted += 1
        return request


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: a connection serves many requests
    server: _Server

    def do_GET(self) -> None:
        if self.path.startswith("/watch"):
            # A watch: headers now, the body only when the test lets it end.
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.server.release.wait(30)
            self.wfile.write(b"0\r\n\r\n")
            return
        time.sleep(HOLD_SECONDS)  # a request long enough for all of them to be out at once
        reply(self, b"{}", "application/json")

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[_Server]:
    srv = _Server()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.release.set()
    srv.shutdown()
    srv.server_close()


def _load(server: _Server, config: OperatorConfig, pool: int | None = None) -> tuple[int, int]:
    """Two rounds of every worker busy beside the open watch streams and a lease renewal;
    returns (connections the server accepted, pool-full warnings)."""
    configuration = kubernetes.client.Configuration(host=f"http://127.0.0.1:{server.server_port}")
    if pool is None:
        client = runner.api_client(config, configuration)
    else:  # the positive control: an undersized pool
        configuration.connection_pool_maxsize = pool
        client = kubernetes.client.ApiClient(configuration)
    kube = KubeClient(client, workers=config.api_workers)
    warnings: list[logging.LogRecord] = []

    class Catch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "Connection pool is full" in record.getMessage():
                warnings.append(record)

    catch = Catch()
    logging.getLogger("urllib3.connectionpool").addHandler(catch)
    streams = [
        kube.send("GET", f"/watch/{i}", timeout=30) for i in range(own_watch_streams(config))
    ]

    async def rounds() -> None:
        for _ in range(2):
            lease = asyncio.create_task(asyncio.to_thread(kube.send, "GET", "/lease"))
            await asyncio.gather(
                *(kube.get("Deployment", "ns", f"d{i}") for i in range(config.api_workers))
            )
            (await lease).read()

    try:
        asyncio.run(rounds())
    finally:
        server.release.set()
        for response in streams:
            response.read()
        logging.getLogger("urllib3.connectionpool").removeHandler(catch)
        kube.close()
        client.close()
    return server.accepted, len(warnings)


def test_pool_reuses_every_connection_held_at_once(server: _Server) -> None:
    config = OperatorConfig(api_workers=4)
    held = config.api_workers + own_watch_streams(config) + 1
    accepted, warned = _load(server, config)
    assert warned == 0
    assert accepted == held  # the second round opened no connection
    assert runner.pool_size(config) == held


def test_pool_of_the_workers_alone_discards_connections(server: _Server) -> None:
    config = OperatorConfig(api_workers=4)
    accepted, warned = _load(server, config, pool=config.api_workers)
    assert warned > 0
    assert accepted > config.api_workers + own_watch_streams(config) + 1
