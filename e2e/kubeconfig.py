"""Kubeconfig files for the local cluster's clients, certificates embedded."""

from __future__ import annotations

import base64
from pathlib import Path

import yaml

from e2e.pki import Pair

CONTEXT = "ccs-e2e"


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def render(server: str, ca_cert: Path, client: Pair, user: str) -> str:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": CONTEXT,
                "cluster": {"server": server, "certificate-authority-data": _b64(ca_cert)},
            }
        ],
        "users": [
            {
                "name": user,
                "user": {
                    "client-certificate-data": _b64(client.cert),
                    "client-key-data": _b64(client.key),
                },
            }
        ],
        "contexts": [{"name": CONTEXT, "context": {"cluster": CONTEXT, "user": user}}],
        "current-context": CONTEXT,
    }
    return yaml.safe_dump(config, sort_keys=False)


def write(path: Path, server: str, ca_cert: Path, client: Pair, user: str) -> Path:
    """Write only on change, so a running client never sees a half-written file."""
    text = render(server, ca_cert, client, user)
    if not path.exists() or path.read_text() != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.chmod(0o600)
        tmp.replace(path)
    return path
