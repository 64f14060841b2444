"""The operator's copy of every service it serves, kept as compact JSON.

A body decoded from the API server's JSON is a tree of Python dicts, lists and strings: a
ClaudeCodeService of about 4 kB on the wire costs about 25 kB as objects, which at 1,000
services is most of what the operator holds per service. Nothing reads a stored body between
two reconciles or floor evaluations, so the store keeps each one as its JSON text (without
managedFields, which nothing reads) and decodes a fresh copy on every read (tens of
microseconds for a body that size). A reader can therefore never change the stored copy by
accident. The metadata, which every watch event compares, is kept decoded beside it.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator, Mapping, MutableMapping
from typing import Any

ServiceKey = tuple[str, str]


class BodyStore(MutableMapping[ServiceKey, dict[str, Any]]):
    """ServiceKey -> body, stored as JSON bytes; `metadata(key)` without decoding the rest."""

    def __init__(self) -> None:
        self._bodies: dict[ServiceKey, bytes] = {}
        self._metadata: dict[ServiceKey, dict[str, Any]] = {}

    def __getitem__(self, key: ServiceKey) -> dict[str, Any]:
        body: dict[str, Any] = json.loads(self._bodies[key])
        return body

    def __setitem__(self, key: ServiceKey, body: Mapping[str, Any]) -> None:
        meta = {k: v for k, v in (body.get("metadata") or {}).items() if k != "managedFields"}
        self._bodies[key] = json.dumps(
            {**body, "metadata": meta}, separators=(",", ":"), default=str
        ).encode()
        self._metadata[key] = json.loads(json.dumps(meta, default=str))

    def __delitem__(self, key: ServiceKey) -> None:
        del self._bodies[key]
        del self._metadata[key]

    def __iter__(self) -> Iterator[ServiceKey]:
        return iter(self._bodies)

    def __len__(self) -> int:
        return len(self._bodies)

    def __contains__(self, key: object) -> bool:
        return key in self._bodies

    def metadata(self, key: ServiceKey) -> dict[str, Any] | None:
        """The stored body's metadata (a copy), or None when the service is not stored."""
        meta = self._metadata.get(key)
        return None if meta is None else copy.deepcopy(meta)

    def stored_bytes(self) -> int:
        """The JSON the store holds, in bytes (for its size metric and tests)."""
        return sum(len(b) for b in self._bodies.values())
