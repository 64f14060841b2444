"""`make image`: the operator's OCI image, built without a container engine.

1. the Debian base (release.rootfs: mmdebstrap, cached) is copied to a work tree;
2. Debian's python3.11 makes the virtualenv /opt/ccs in it (a chroot), and pip, run from
   its wheel inside the chroot with no index, installs the operator's wheel and its locked
   dependencies (release.wheels) with `--no-deps`; `pip check` proves the lock complete;
   byte code is compiled hash-based (no timestamps) for the read-only root filesystem;
3. two layers are written (release.oci): the base, and /opt/ccs; the image config sets the
   user 65532:65532, `ccs-operator` as entrypoint and `run` as its command, as
   operator/Dockerfile does;
4. skopeo copies the layout to a docker-archive tarball; the SBOM is written beside it.

Output, in build/image/<arch>/ by default: oci/ (the OCI image layout, tag = the
operator's version), ccs-operator-<version>-<arch>.tar (docker-archive, named
ghcr.io/claudecode/ccs-operator:<version>), ccs-operator-<version>-<arch>.spdx.json,
digest (the manifest's digest, also printed on stdout) and image.json (what was built).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from e2e.paths import REPO_ROOT
from release import oci, rootfs, sbom, wheels
from release.steps import (
    ReleaseError,
    host_arch,
    image_cache,
    log,
    require_root,
    require_tools,
    revision,
    run_logged,
    source_date_epoch,
)

IMAGE_NAME = os.environ.get("CCS_IMAGE_NAME", "ghcr.io/claudecode/ccs-operator")
VENV = "/opt/ccs"
SITE_PACKAGES = f"{VENV}/lib/python3.11/site-packages"
WHEELS_IN_CHROOT = "/.ccs-wheels"
USER = f"{rootfs.UID}:{rootfs.UID}"
ENTRYPOINT = ["ccs-operator"]
CMD = ["run"]
ENV = [
    f"PATH={VENV}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "PYTHONDONTWRITEBYTECODE=1",
    "PYTHONUNBUFFERED=1",
]
PORTS = ("8080/tcp", "8081/tcp")  # metrics (CCS_METRICS_PORT) and /healthz (CCS_HEALTH_PORT)
# A clean environment for the chroot's commands: none of the host's PIP_* settings.
_CHROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class Built:
    out: Path
    digest: str
    arch: str
    version: str

    @property
    def layout(self) -> Path:
        return self.out / "oci"

    @property
    def archive(self) -> Path:
        return self.out / f"ccs-operator-{self.version}-{self.arch}.tar"

    @property
    def sbom(self) -> Path:
        return self.out / f"ccs-operator-{self.version}-{self.arch}.spdx.json"

    @property
    def reference(self) -> str:
        return f"{IMAGE_NAME}:{self.version}"


def default_out(arch: str) -> Path:
    return REPO_ROOT / "build" / "image" / arch


def build_key(arch: str, epoch: int) -> str:
    """Everything that decides the image's bytes: the wheel's sources, this package, the
    locks, the base recipe, the epoch and the revision label."""
    digest = hashlib.sha256()
    package = Path(__file__).resolve().parent
    files = wheels.source_files() + sorted(package.rglob("*.py")) + sorted(package.rglob("*.txt"))
    for path in files:
        digest.update(str(path.relative_to(REPO_ROOT)).encode() + b"\0")
        digest.update(path.read_bytes())
    digest.update(json.dumps([arch, epoch, revision(), rootfs.base_key(arch), IMAGE_NAME]).encode())
    return digest.hexdigest()[:16]


def load_built(out: Path) -> Built:
    """A finished build in `out` (its image.json), e.g. `make image`'s build/image/<arch>."""
    summary = out / "image.json"
    if not summary.exists():
        raise ReleaseError(f"no image built in {out} (no image.json)")
    data = json.loads(summary.read_text())
    return Built(out, data["digest"], data["arch"], data["version"])


def cached_build(arch: str | None = None) -> Built:
    """The image for the current sources, built once into
    ~/.cache/ccs-operator/image/builds/<key>/ and reused while nothing it is made of
    changes (the tests' session fixture uses this; `make image` always builds)."""
    arch = arch or host_arch()
    epoch = source_date_epoch()
    key = build_key(arch, epoch)
    builds = image_cache() / "builds"
    out = builds / f"{arch}-{key}"
    summary = out / "image.json"
    with _locked(arch):
        if summary.exists():
            built = load_built(out)
            log(f"image: cached build {built.digest} ({out})")
            return built
        for old in builds.glob(f"{arch}-*") if builds.exists() else ():
            shutil.rmtree(old, ignore_errors=True)  # one build per architecture is kept
        return _build(out, arch, refresh_base=False)


@contextmanager
def _locked(arch: str) -> Iterator[None]:
    """One build per architecture at a time on a machine: they share the work tree and
    the base's cache."""
    image_cache().mkdir(parents=True, exist_ok=True)
    with open(image_cache() / f".build-{arch}.lock", "w") as lock:
        if not _try_lock(lock):
            log("image: another build of this machine is running; waiting for it")
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _try_lock(lock: IO[str]) -> bool:
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def build(out: Path | None = None, arch: str | None = None, refresh_base: bool = False) -> Built:
    arch = arch or host_arch()
    with _locked(arch):
        return _build(out, arch, refresh_base)


def _build(out: Path | None, arch: str, refresh_base: bool) -> Built:
    if arch != host_arch():
        raise ReleaseError(
            f"building for {arch} on {host_arch()} needs {arch} binaries to run in the chroot; "
            "build on a machine of that architecture"
        )
    require_root("`make image`")
    require_tools("mmdebstrap", "skopeo")
    out = out or default_out(arch)
    epoch = source_date_epoch()
    version = wheels.project_version()
    started = time.monotonic()
    log(f"image: {IMAGE_NAME}:{version} for {arch}, SOURCE_DATE_EPOCH={epoch}")
    base = rootfs.ensure_base(arch, refresh=refresh_base)
    base_layer = _base_layer(base, arch, epoch)
    runtime_wheels, pip_wheel = wheels.fetch_wheels(arch)
    work_root = image_cache() / "work" / arch
    if work_root.exists():
        shutil.rmtree(work_root)
    work_root.mkdir(parents=True)
    try:
        tree = work_root / "rootfs"
        log("image: copying the base into a work tree")
        subprocess.run(["cp", "-a", str(base), str(tree)], check=True)
        project_wheel = wheels.build_project_wheel(work_root / "dist")
        log(f"image: installing {project_wheel.name} and {len(runtime_wheels)} locked wheels")
        _install(tree, [project_wheel, *runtime_wheels], pip_wheel, work_root / "install.log")
        out.mkdir(parents=True, exist_ok=True)
        for stale in ("oci", "digest", "image.json"):
            path = out / stale
            if path.is_dir():
                shutil.rmtree(path)
            path.unlink(missing_ok=True)
        layout = out / "oci"
        log("image: writing the /opt/ccs layer")
        app_file = work_root / "app.tar.gz"
        app_layer = oci.write_layer(tree, oci.walk(tree, VENV), app_file, epoch)
        oci.add_layer_file(layout, base_layer[0], base_layer[1])
        oci.add_layer_file(layout, app_layer, app_file)
        config = image_config(arch, version, epoch, [base_layer[0], app_layer])
        manifest = oci.write_layout(layout, config, [base_layer[0], app_layer], version)
        built = Built(out, manifest.digest, arch, version)
        for old in out.glob("ccs-operator-*"):
            old.unlink()
        oci.docker_archive(layout, version, built.archive, built.reference)
        built.sbom.write_bytes(sbom.sbom(tree, IMAGE_NAME, version, built.digest, arch, epoch))
    finally:
        shutil.rmtree(work_root, ignore_errors=True)
    (out / "digest").write_text(built.digest + "\n")
    summary = {
        "digest": built.digest,
        "reference": built.reference,
        "arch": arch,
        "version": version,
        "revision": revision(),
        "source_date_epoch": epoch,
        "base": str(base.parent.name),
        "layers": [base_layer[0].to_json(), app_layer.to_json()],
    }
    (out / "image.json").write_text(json.dumps(summary, indent=2) + "\n")
    log(f"image: {built.digest} in {time.monotonic() - started:.0f}s ({out})")
    return built


def image_config(arch: str, version: str, epoch: int, layers: list[oci.Layer]) -> dict[str, Any]:
    created = oci.iso_time(epoch)
    labels = {
        "org.opencontainers.image.title": "ccs-operator",
        "org.opencontainers.image.description": (
            "Kubernetes operator for Triton inference services on GPU nodes"
        ),
        "org.opencontainers.image.licenses": "Apache-2.0",
        "org.opencontainers.image.version": version,
        "org.opencontainers.image.revision": revision(),
        "org.opencontainers.image.created": created,
        "org.opencontainers.image.source": "https://github.com/claudecode/ccs-operator",
        "org.opencontainers.image.base.name": f"debian:{rootfs.SUITE} (mmdebstrap minbase)",
    }
    config: dict[str, Any] = {
        "architecture": arch,
        "os": "linux",
        "created": created,
        "config": {
            "User": USER,
            "Entrypoint": ENTRYPOINT,
            "Cmd": CMD,
            "Env": ENV,
            "WorkingDir": "/",
            "ExposedPorts": {port: {} for port in PORTS},
            "Labels": labels,
        },
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
        "history": [
            {
                "created": created,
                "created_by": (
                    f"mmdebstrap --variant=minbase {rootfs.SUITE} "
                    f"--include={','.join(rootfs.PACKAGES)}; user {rootfs.USER} ({rootfs.UID})"
                ),
            },
            {
                "created": created,
                "created_by": f"python3.11 -m venv {VENV}; pip install --no-deps ccs-operator",
            },
        ],
    }
    if arch == "arm64":
        config["variant"] = "v8"
    return config


def _base_layer(base: Path, arch: str, epoch: int) -> tuple[oci.Layer, Path]:
    """The base's layer for `epoch`, written once and kept beside the base."""
    directory = base.parent
    blob, meta = directory / f"layer-{epoch}.tar.gz", directory / f"layer-{epoch}.json"
    if blob.exists() and meta.exists():
        log("image: base layer cached")
        return oci.Layer.from_json(json.loads(meta.read_text())), blob
    for old in directory.glob("layer-*"):
        old.unlink()
    log(f"image: writing the base layer ({arch}); about half a minute")
    started = time.monotonic()
    layer = oci.write_layer(base, oci.walk(base), blob, epoch)
    meta.write_text(json.dumps(layer.to_json()) + "\n")
    log(f"image: base layer {layer.blob.size / 1e6:.0f} MB in {time.monotonic() - started:.0f}s")
    return layer, blob


def chroot_env() -> dict[str, str]:
    """No PIP_* of the host's; no byte code but what compileall writes (hash-based)."""
    return {
        "PATH": _CHROOT_PATH,
        "HOME": "/root",
        "LC_ALL": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",
        "SOURCE_DATE_EPOCH": str(source_date_epoch()),
    }


def _chroot(tree: Path, args: list[str], log_path: Path, what: str, **env: str) -> None:
    run_logged(["chroot", str(tree), *args], log_path, what, env={**chroot_env(), **env})


def _install(tree: Path, wheel_files: list[Path], pip_wheel: Path, log_path: Path) -> None:
    directory = tree / WHEELS_IN_CHROOT.lstrip("/")
    directory.mkdir()
    for wheel in [*wheel_files, pip_wheel]:
        shutil.copyfile(wheel, directory / wheel.name)
    pip = [f"{VENV}/bin/python", f"{WHEELS_IN_CHROOT}/{pip_wheel.name}/pip"]
    quiet = ["--disable-pip-version-check", "--no-cache-dir", "--no-input"]
    names = [f"{WHEELS_IN_CHROOT}/{wheel.name}" for wheel in wheel_files]
    _chroot(tree, [rootfs.PYTHON, "-m", "venv", "--without-pip", VENV], log_path, "making the venv")
    _chroot(
        tree,
        [*pip, "install", *quiet, "--no-index", "--no-deps", "--no-compile",
         "--no-warn-script-location", *names],
        log_path,
        "installing the wheels (pip in the chroot)",
    )
    _chroot(tree, [*pip, "check", *quiet], log_path, "checking the locked dependencies (pip check)")
    shutil.rmtree(directory)
    log("image: compiling byte code (hash-based, no timestamps)")
    _chroot(
        tree,
        [f"{VENV}/bin/python", "-m", "compileall", "-q", "-f", "--invalidation-mode",
         "checked-hash", SITE_PACKAGES],
        log_path,
        "compiling byte code",
    )
    with tempfile.TemporaryFile("w+") as version:
        result = subprocess.run(
            ["chroot", f"--userspec={USER}", str(tree), f"{VENV}/bin/ccs-operator", "version"],
            stdout=version, stderr=subprocess.STDOUT, env=chroot_env(),
        )
        version.seek(0)
        said = version.read().strip()
    if result.returncode != 0:
        raise ReleaseError(f"`ccs-operator version` in the image failed:\n{said}")
    log(f"image: `ccs-operator version` as {USER} says {said!r}")
