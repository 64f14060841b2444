"""Shared test helpers: sample objects, CRD-style structural defaulting, loopback HTTP replies."""

from __future__ import annotations

import copy
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
CRD_PATH = ROOT / "crds" / "claudecodeservices.yaml"
SAMPLES = sorted((ROOT / "samples").glob("*.yaml"))


def load_crd() -> dict[str, Any]:
    return yaml.safe_load(CRD_PATH.read_text())


def crd_schema() -> dict[str, Any]:
    return load_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def minimal_service(name: str = "svc", **spec: Any) -> dict[str, Any]:
    body = {
        "apiVersion": "serving.claudecode.io/v1alpha1",
        "kind": "ClaudeCodeService",
        "metadata": {"name": name, "namespace": "ns"},
        "spec": {"model": {"name": "claude_code", "repository": "s3://models/claude"}},
    }
    body["spec"].update(copy.deepcopy(spec))
    return body


def apply_structural_defaults(schema: dict[str, Any], value: Any) -> Any:
    """Apply OpenAPI `default`s the way the API server does for a structural schema."""
    if isinstance(value, dict) and schema.get("type") == "object":
        out = dict(value)
        for key, sub in schema.get("properties", {}).items():
            if key not in out and "default" in sub:
                out[key] = copy.deepcopy(sub["default"])
            if key in out:
                out[key] = apply_structural_defaults(sub, out[key])
        return out
    if isinstance(value, list) and schema.get("type") == "array":
        return [apply_structural_defaults(schema.get("items", {}), v) for v in value]
    return value


def reply(handler: BaseHTTPRequestHandler, body: bytes, content_type: str) -> None:
    """A whole 200 answer with a Content-Length (keep-alive safe) from a test server."""
    handler.send_response(200)
    handler.send_header("Content-Type", content_type)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)
