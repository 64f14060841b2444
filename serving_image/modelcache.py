"""A node-local, content-addressed cache of model repositories, shared by a node's pods.

The loader of every pod on a node opens the same directory (a hostPath volume, see
render.py): the first pod that needs a repository fills an entry, later pods link its files
into their own model store instead of downloading them again.

    <root>/entries/<key>/            one complete repository (version directories)
    <root>/entries/<key>.manifest    JSON: every file's relative path, size and sha256
    <root>/locks/<key>               flock: one filler per entry on the node
    <root>/.fill-<key>-<random>/     an entry being filled; renamed into entries/ when whole

- The key is a sha256 over the repository URI, the endpoint and every object's path, size
  and ETag, so a new model version (new objects or ETags) is a new entry; nothing is ever
  served across versions.
- An entry is used only when its manifest exists and every file's size and sha256 match: a
  partial fill (pod killed mid-download) never has a manifest, and a truncated or altered
  file fails the check; both are removed and fetched again (outcome "refetch").
- Concurrent pods on one node: the per-entry lock makes one of them fill while the others
  wait, then find the entry whole (a hit): the repository is downloaded once per node.
- Files reach the pod's model store as hard links where the cache and the store share a
  filesystem (instant; the pod's link survives eviction and Triton restarts), else copies.
- Eviction: after a fill, least recently used entries (by their manifest's mtime, touched
  on every hit) are removed until the cache is under its limit. An entry another loader holds
  the lock of is skipped; the entry just used is kept even if it alone is over the limit.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import secrets
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

MANIFEST_VERSION = 1
CHUNK = 1024 * 1024


@dataclass(frozen=True)
class Outcome:
    """What one lookup did: outcome hit | miss | refetch, bytes in the entry, seconds spent."""

    outcome: str
    key: str
    bytes: int
    seconds: float
    evicted: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, object]:
        return {
            "outcome": self.outcome,
            "key": self.key,
            "bytes": self.bytes,
            "seconds": round(self.seconds, 3),
            "evicted": list(self.evicted),
        }


def cache_key(repository: str, endpoint: str, objects: Iterable[tuple[str, int, str]]) -> str:
    """sha256 over the repository, the endpoint and each (relative path, size, etag)."""
    digest = hashlib.sha256()
    digest.update(json.dumps([repository, endpoint]).encode())
    for relative, size, etag in sorted(objects):
        digest.update(json.dumps([relative, size, etag]).encode())
    return digest.hexdigest()[:32]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink())


class NodeCache:
    def __init__(self, root: Path, limit_bytes: int) -> None:
        if limit_bytes <= 0:
            raise ValueError(f"cache limit must be positive, got {limit_bytes}")
        self.root = root
        self.limit_bytes = limit_bytes
        self.entries = root / "entries"
        self.locks = root / "locks"

    def _prepare(self) -> None:
        self.entries.mkdir(parents=True, exist_ok=True)
        self.locks.mkdir(parents=True, exist_ok=True)

    @contextlib.contextmanager
    def _lock(self, key: str, blocking: bool = True) -> Iterator[bool]:
        with open(self.locks / key, "a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def manifest_path(self, key: str) -> Path:
        return self.entries / f"{key}.manifest"

    def entry_path(self, key: str) -> Path:
        return self.entries / key

    def _verify(self, key: str) -> int | None:
        """Bytes of a whole, unaltered entry; None if it is missing, partial or altered."""
        manifest, entry = self.manifest_path(key), self.entry_path(key)
        try:
            data = json.loads(manifest.read_text())
        except (OSError, ValueError):
            return None
        if data.get("version") != MANIFEST_VERSION or not entry.is_dir():
            return None
        files = data.get("files") or {}
        present = {str(p.relative_to(entry)) for p in _files(entry)}
        if present != set(files):
            return None
        total = 0
        for relative, (size, digest) in files.items():
            path = entry / relative
            if path.stat().st_size != size or _sha256(path) != digest:
                return None
            total += size
        return total

    def _remove(self, key: str) -> None:
        self.manifest_path(key).unlink(missing_ok=True)  # first: never a manifest without data
        shutil.rmtree(self.entry_path(key), ignore_errors=True)

    def _fill(self, key: str, populate: Callable[[Path], None]) -> int:
        partial = self.root / f".fill-{key}-{secrets.token_hex(4)}"
        partial.mkdir()
        try:
            populate(partial)
            files = {
                str(p.relative_to(partial)): (p.stat().st_size, _sha256(p)) for p in _files(partial)
            }
            self._remove(key)
            os.replace(partial, self.entry_path(key))
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        manifest = {"version": MANIFEST_VERSION, "files": files}
        tmp = self.manifest_path(key).with_suffix(f".tmp-{secrets.token_hex(4)}")
        with open(tmp, "w") as handle:
            json.dump(manifest, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.manifest_path(key))
        return sum(size for size, _ in files.values())

    def get(self, key: str, populate: Callable[[Path], None]) -> tuple[Path, Outcome]:
        """The entry for `key`, filled by `populate(directory)` unless whole already."""
        self._prepare()
        start = time.monotonic()
        evicted: list[str] = []
        with self._lock(key):
            size = self._verify(key)
            if size is not None:
                os.utime(self.manifest_path(key))  # most recently used
                outcome = "hit"
            else:
                existed = self.manifest_path(key).exists() or self.entry_path(key).exists()
                self._remove(key)
                size = self._fill(key, populate)
                outcome = "refetch" if existed else "miss"
        if outcome != "hit":
            evicted = self.evict(keep=key)
        return self.entry_path(key), Outcome(
            outcome, key, size, time.monotonic() - start, tuple(evicted)
        )

    def usage(self) -> dict[str, tuple[int, float]]:
        """key -> (bytes, last used) for every entry with a manifest."""
        found: dict[str, tuple[int, float]] = {}
        if not self.entries.is_dir():
            return found
        for manifest in self.entries.glob("*.manifest"):
            try:
                data = json.loads(manifest.read_text())
                used = manifest.stat().st_mtime
            except (OSError, ValueError):
                continue
            size = sum(int(item[0]) for item in (data.get("files") or {}).values())
            found[manifest.name.removesuffix(".manifest")] = (size, used)
        return found

    def evict(self, keep: str) -> list[str]:
        """Remove least recently used entries until the cache fits its limit."""
        usage = self.usage()
        total = sum(size for size, _ in usage.values())
        evicted: list[str] = []
        for key, (size, _) in sorted(usage.items(), key=lambda item: item[1][1]):
            if total <= self.limit_bytes:
                break
            if key == keep:
                continue
            with self._lock(key, blocking=False) as locked:
                if not locked:
                    continue  # another loader is filling or reading it
                self._remove(key)
            total -= size
            evicted.append(key)
        return evicted


def link_tree(source: Path, target: Path) -> None:
    """Hard-link every file of `source` under `target` (copy where links cannot cross)."""
    for path in sorted(source.rglob("*")):
        dest = target / path.relative_to(source)
        if path.is_dir():
            dest.mkdir(parents=True, exist_ok=True)
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, dest)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
                raise
            shutil.copy2(path, dest)
