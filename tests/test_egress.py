"""e2e.egress: the HTTP CONNECT proxy the API server reaches pod addresses through.

Exercised over a real Unix socket with real sockets behind it; only the check of which
addresses may be dialled is widened for the positive case (pod addresses exist only inside
the cluster's network namespace)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from e2e import egress


def test_parse_connect_reads_the_target_and_refuses_anything_else() -> None:
    assert egress.parse_connect(b"CONNECT 10.244.0.7:6443 HTTP/1.1\r\nHost: x\r\n\r\n") == (
        "10.244.0.7",
        6443,
    )
    for bad in (b"GET / HTTP/1.1\r\n\r\n", b"CONNECT 10.244.0.7 HTTP/1.1\r\n\r\n", b"CONNECT"):
        with pytest.raises(ValueError):
            egress.parse_connect(bad)


def test_selector_config_sends_cluster_traffic_to_the_socket(tmp_path: Path) -> None:
    config = egress.selector_config(tmp_path / "egress.sock")
    (selection,) = config["egressSelections"]  # type: ignore[misc]
    assert selection["name"] == "cluster"
    assert selection["connection"] == {
        "proxyProtocol": "HTTPConnect",
        "transport": {"uds": {"udsName": str(tmp_path / "egress.sock")}},
    }


async def _echo_server() -> tuple[asyncio.Server, int]:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(await reader.readline())
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def _connect(
    sock: Path, target: str
) -> tuple[bytes, asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_unix_connection(str(sock))
    writer.write(f"CONNECT {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    return head, reader, writer


@pytest.mark.asyncio
async def test_tunnels_to_allowed_addresses_and_refuses_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sock = tmp_path / "egress.sock"
    server = await asyncio.start_unix_server(egress.handle, path=str(sock))
    echo, port = await _echo_server()
    try:
        # Outside the pod CIDR: refused, nothing dialled.
        head, _, writer = await _connect(sock, f"127.0.0.1:{port}")
        assert head.startswith(b"HTTP/1.1 403")
        writer.close()
        # Allowed (loopback stands in for a pod address here): a byte-exact tunnel.
        monkeypatch.setattr(egress, "is_pod_address", lambda host: host == "127.0.0.1")
        head, reader, writer = await _connect(sock, f"127.0.0.1:{port}")
        assert head.startswith(b"HTTP/1.1 200")
        writer.write(b"hello through the tunnel\n")
        await writer.drain()
        assert await reader.readline() == b"hello through the tunnel\n"
        writer.close()
        # Allowed but nothing listens: 502, not a hang.
        echo.close()
        await echo.wait_closed()
        head, _, writer = await _connect(sock, f"127.0.0.1:{port}")
        assert head.startswith(b"HTTP/1.1 502")
        writer.close()
    finally:
        server.close()
        echo.close()
