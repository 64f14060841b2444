"""Deterministic OCI image layouts: tar layers, config, manifest and index written here.

A layer is a tar of a directory tree walked in sorted (byte) order, every entry's mtime set
to SOURCE_DATE_EPOCH, owner names dropped (numeric ids kept), device nodes left out (a
runtime makes /dev), gzipped with no name and a zero time in the header. JSON documents are
written with sorted keys and no whitespace. So the same tree and epoch give the same
digests on any machine. skopeo turns the layout into a docker-archive tarball (for
`docker load` and `kind load image-archive`).
"""

from __future__ import annotations

import datetime
import gzip
import hashlib
import json
import os
import shutil
import stat
import subprocess
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from release.steps import ReleaseError, log, require_tools

MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
INDEX_TYPE = "application/vnd.oci.image.index.v1+json"
CONFIG_TYPE = "application/vnd.oci.image.config.v1+json"
LAYER_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"
REF_NAME = "org.opencontainers.image.ref.name"
# Directories whose contents a container runtime provides: kept, but empty.
RUNTIME_DIRS = ("dev", "proc", "sys")


@dataclass(frozen=True)
class Blob:
    media_type: str
    digest: str
    size: int

    def descriptor(self, **extra: Any) -> dict[str, Any]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size, **extra}


@dataclass(frozen=True)
class Layer:
    blob: Blob
    diff_id: str  # sha256 of the uncompressed tar, as the image config lists it

    def to_json(self) -> dict[str, Any]:
        return {"digest": self.blob.digest, "size": self.blob.size, "diff_id": self.diff_id}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Layer:
        return cls(Blob(LAYER_TYPE, data["digest"], data["size"]), data["diff_id"])


def canonical_json(document: Any) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def iso_time(epoch: int) -> str:
    moment = datetime.datetime.fromtimestamp(epoch, tz=datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


class _Tee:
    """Hashes the uncompressed tar stream on its way into the gzip stream."""

    def __init__(self, sink: Any) -> None:
        self.sink = sink
        self.digest = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        return self.sink.write(data)


class _Counted:
    """Hashes and counts the compressed bytes on their way to the file."""

    def __init__(self, sink: IO[bytes]) -> None:
        self.sink = sink
        self.digest = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        self.size += len(data)
        return self.sink.write(data)

    def flush(self) -> None:
        self.sink.flush()


def walk(root: Path, top: str = "") -> Iterator[str]:
    """Paths under `root` (relative, POSIX), parents first, siblings in byte order; the
    contents of RUNTIME_DIRS are skipped. `top` limits the walk to one subtree (its
    parents included)."""
    if top:
        parts = top.strip("/").split("/")
        for depth in range(1, len(parts)):
            yield "/".join(parts[:depth])
        yield from _walk(root, top.strip("/"))
        return
    for name in sorted(os.listdir(root), key=os.fsencode):
        yield from _walk(root, name)


def _walk(root: Path, relative: str) -> Iterator[str]:
    yield relative
    path = root / relative
    if path.is_symlink() or not path.is_dir() or relative in RUNTIME_DIRS:
        return
    for name in sorted(os.listdir(path), key=os.fsencode):
        yield from _walk(root, f"{relative}/{name}")


def write_layer(root: Path, paths: Iterator[str], target: Path, epoch: int) -> Layer:
    """Writes the gzipped tar of `paths` (relative to `root`) to `target`."""
    partial = target.with_name(target.name + ".partial")
    with open(partial, "wb") as raw:
        counted = _Counted(raw)
        gz = gzip.GzipFile(filename="", mode="wb", fileobj=counted, mtime=0, compresslevel=6)
        with gz:
            tee = _Tee(gz)
            stream: Any = tee
            with tarfile.open(fileobj=stream, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                for relative in paths:
                    _add(tar, root, relative, epoch)
    partial.replace(target)
    blob = Blob(LAYER_TYPE, "sha256:" + counted.digest.hexdigest(), counted.size)
    return Layer(blob, "sha256:" + tee.digest.hexdigest())


def _add(tar: tarfile.TarFile, root: Path, relative: str, epoch: int) -> None:
    path = root / relative
    mode = path.lstat().st_mode
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISSOCK(mode) or stat.S_ISFIFO(mode):
        return
    info = tar.gettarinfo(str(path), arcname=relative)
    info.mtime = epoch
    info.uname = info.gname = ""
    info.pax_headers = {}
    if info.isreg():
        with open(path, "rb") as data:
            tar.addfile(info, data)
    else:
        tar.addfile(info)


def write_blob(layout: Path, media_type: str, data: bytes) -> Blob:
    digest = hashlib.sha256(data).hexdigest()
    path = layout / "blobs" / "sha256" / digest
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return Blob(media_type, f"sha256:{digest}", len(data))


def add_layer_file(layout: Path, layer: Layer, source: Path) -> None:
    """Puts a layer written by write_layer into the layout's blobs (a hard link if it can)."""
    target = layout / "blobs" / "sha256" / layer.blob.digest.split(":", 1)[1]
    target.parent.mkdir(parents=True, exist_ok=True)
    target.unlink(missing_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def write_layout(
    layout: Path,
    config: dict[str, Any],
    layers: list[Layer],
    ref: str,
    annotations: dict[str, str] | None = None,
) -> Blob:
    """Writes config, manifest, index.json and oci-layout; returns the manifest's blob (its
    digest is the image's digest)."""
    config_blob = write_blob(layout, CONFIG_TYPE, canonical_json(config))
    manifest: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "config": config_blob.descriptor(),
        "layers": [layer.blob.descriptor() for layer in layers],
    }
    if annotations:
        manifest["annotations"] = annotations
    manifest_blob = write_blob(layout, MANIFEST_TYPE, canonical_json(manifest))
    platform = {"architecture": config["architecture"], "os": config["os"]}
    if "variant" in config:
        platform["variant"] = config["variant"]
    index = {
        "schemaVersion": 2,
        "mediaType": INDEX_TYPE,
        "manifests": [manifest_blob.descriptor(annotations={REF_NAME: ref}, platform=platform)],
    }
    (layout / "index.json").write_bytes(canonical_json(index))
    (layout / "oci-layout").write_bytes(canonical_json({"imageLayoutVersion": "1.0.0"}))
    return manifest_blob


def merge_layouts(target: Path, sources: list[Path], ref: str) -> str:
    """One layout whose index lists the image of each source layout (one per platform):
    what `skopeo copy --all` pushes as a multi-architecture image. Returns the index's
    digest."""
    if target.exists():
        shutil.rmtree(target)
    manifests = []
    for source in sources:
        index = json.loads((source / "index.json").read_text())
        for entry in index["manifests"]:
            manifests.append(entry)
        for blob in sorted((source / "blobs" / "sha256").iterdir()):
            copy = target / "blobs" / "sha256" / blob.name
            copy.parent.mkdir(parents=True, exist_ok=True)
            if not copy.exists():
                shutil.copyfile(blob, copy)
    manifests.sort(key=lambda m: (m["platform"]["architecture"], m["digest"]))
    inner = {
        "schemaVersion": 2,
        "mediaType": INDEX_TYPE,
        "manifests": [{k: v for k, v in m.items() if k != "annotations"} for m in manifests],
    }
    inner_blob = write_blob(target, INDEX_TYPE, canonical_json(inner))
    outer = {
        "schemaVersion": 2,
        "mediaType": INDEX_TYPE,
        "manifests": [inner_blob.descriptor(annotations={REF_NAME: ref})],
    }
    (target / "index.json").write_bytes(canonical_json(outer))
    (target / "oci-layout").write_bytes(canonical_json({"imageLayoutVersion": "1.0.0"}))
    return inner_blob.digest


def docker_archive(layout: Path, ref: str, target: Path, name: str) -> None:
    """`skopeo copy` of the layout's image to a docker-archive tarball tagged `name`."""
    require_tools("skopeo")
    target.unlink(missing_ok=True)
    log(f"docker-archive: skopeo copy to {target.name}")
    result = subprocess.run(
        [
            "skopeo",
            "--insecure-policy",
            "copy",
            "--quiet",
            f"oci:{layout}:{ref}",
            f"docker-archive:{target}:{name}",
        ],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise ReleaseError(f"skopeo copy to docker-archive failed:\n{result.stderr.strip()}")


def read_image(layout: Path, ref: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The manifest and config of the image tagged `ref` in a single-platform layout."""
    index = json.loads((layout / "index.json").read_text())
    (entry,) = [m for m in index["manifests"] if m.get("annotations", {}).get(REF_NAME) == ref]

    def blob(digest: str) -> dict[str, Any]:
        path = layout / "blobs" / "sha256" / digest.split(":", 1)[1]
        return dict(json.loads(path.read_bytes()))

    manifest = blob(entry["digest"])
    return manifest, blob(manifest["config"]["digest"])
