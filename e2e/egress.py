"""The API server's way into the pod network: an HTTP CONNECT proxy on a Unix socket.

The API server runs in the root network namespace and pod addresses exist only inside the
cluster's own one (e2e.netns), yet some of its traffic must reach pods: an aggregated API
(a metrics adapter behind an APIService) is proxied to its Service's endpoints. Production
clusters whose control plane sits outside the pod network solve this with the API server's
egress selector (`--egress-selector-config-file`) and a proxy in the cluster network
(Konnectivity). The harness does the same with the simplest proxy that protocol allows:
the `cluster` egress of the API server speaks HTTP CONNECT over a Unix socket
(`run/egress.sock`) to this process, which runs inside the pod network and dials the
address asked for. Unix sockets live in the file system, not in a network namespace, so
the API server reaches the socket and only this process dials.

Only pod addresses (POD_CIDR) are dialled; anything else is refused with 403, so the proxy
never gives the API server a path to anywhere it could not reach in a real cluster.

    python -m e2e.egress --egress-state=<state dir>    # started by `python -m e2e up`
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from pathlib import Path

from e2e.netns import PodNetwork, is_pod_address

log = logging.getLogger("egress")

SOCKET = "egress.sock"
HEADER_LIMIT = 16 * 1024
DIAL_TIMEOUT_S = 10.0
CHUNK = 64 * 1024


def socket_path(state_dir: Path) -> Path:
    return state_dir / "run" / SOCKET


def selector_config(socket: Path) -> dict[str, object]:
    """The API server's EgressSelectorConfiguration: `cluster` traffic through `socket`."""
    return {
        "apiVersion": "apiserver.k8s.io/v1beta1",
        "kind": "EgressSelectorConfiguration",
        "egressSelections": [
            {
                "name": "cluster",
                "connection": {
                    "proxyProtocol": "HTTPConnect",
                    "transport": {"uds": {"udsName": str(socket)}},
                },
            }
        ],
    }


def parse_connect(head: bytes) -> tuple[str, int]:
    """(host, port) of a `CONNECT host:port HTTP/1.x` request head; ValueError otherwise."""
    line = head.split(b"\r\n", 1)[0].decode("latin-1")
    parts = line.split(" ")
    if len(parts) != 3 or parts[0] != "CONNECT" or not parts[2].startswith("HTTP/1."):
        raise ValueError(f"not a CONNECT request: {line[:200]!r}")
    host, _, port = parts[1].rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"bad CONNECT target {parts[1][:200]!r}")
    return host, int(port)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(OSError, RuntimeError):
            if writer.can_write_eof():
                writer.write_eof()


async def _reply(writer: asyncio.StreamWriter, status: str) -> None:
    writer.write(f"HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n".encode())
    with contextlib.suppress(OSError):
        await writer.drain()
    writer.close()


async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
    try:
        head = await client_r.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        client_w.close()
        return
    try:
        host, port = parse_connect(head)
    except ValueError as exc:
        log.warning("%s", exc)
        await _reply(client_w, "400 Bad Request")
        return
    if not is_pod_address(host):
        log.warning("refused CONNECT %s:%d: not a pod address", host, port)
        await _reply(client_w, "403 Forbidden")
        return
    try:
        upstream_r, upstream_w = await asyncio.wait_for(
            asyncio.open_connection(host, port), DIAL_TIMEOUT_S
        )
    except (OSError, TimeoutError) as exc:
        log.info("CONNECT %s:%d failed: %s", host, port, exc)
        await _reply(client_w, "502 Bad Gateway")
        return
    client_w.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
    await client_w.drain()
    await asyncio.gather(_pipe(client_r, upstream_w), _pipe(upstream_r, client_w))
    for writer in (upstream_w, client_w):
        writer.close()


async def serve(socket: Path) -> None:
    socket.unlink(missing_ok=True)
    server = await asyncio.start_unix_server(handle, path=str(socket), limit=HEADER_LIMIT)
    socket.chmod(0o600)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    log.info("HTTP CONNECT to pod addresses on %s", socket)
    async with server:
        await stop.wait()
    socket.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m e2e.egress", description=__doc__)
    parser.add_argument("--egress-state", type=Path, required=True, help="cluster state dir")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s"
    )
    state_dir = args.egress_state.resolve()
    if not PodNetwork.for_state_dir(state_dir).inside():
        print("egress: must run inside the cluster's pod network", file=sys.stderr)
        return 2
    asyncio.run(serve(socket_path(state_dir)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
