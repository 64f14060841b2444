"""The Python side of the image: the project's wheel and its locked dependencies.

release/locks/runtime-<arch>.txt pins every runtime dependency of the operator for
CPython 3.11 on Debian bookworm (glibc 2.36) of that architecture, each with the sha256
of its wheel; release/locks/build.txt pins the tools used only while building (setuptools
and wheel for the project's wheel, pip run inside the image's chroot). `python -m release
lock` resolves both anew with the host's pip for the image's platform (no build, nothing
installed). Wheels are downloaded by the host's pip (its index and certificates) into
~/.cache/ccs-operator/image/wheels/<arch>/ and checked against the lock's hashes; a wheel
already there with the right hash is not fetched again.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path

from e2e.paths import REPO_ROOT
from release.steps import ReleaseError, image_cache, log, source_date_epoch

LOCK_DIR = Path(__file__).resolve().parent / "locks"
BUILD_LOCK = LOCK_DIR / "build.txt"
PYTHON_VERSION = "3.11"
GLIBC_MINOR = 36  # Debian bookworm's glibc 2.36
MACHINES = {"amd64": "x86_64", "arm64": "aarch64"}
# The tools in build.txt; pip alone goes into the chroot (and not into the image).
BUILD_TOOLS = ("pip", "setuptools>=69", "wheel")
# What the project's wheel is built from (the symlinked crds/ and templates/ included).
WHEEL_SOURCES = ("pyproject.toml", "README.md", "operator/ccs_operator")


@dataclass(frozen=True)
class Pin:
    name: str
    version: str
    sha256: str
    filename: str

    def line(self) -> str:
        return f"{self.name}=={self.version} --hash=sha256:{self.sha256}  # {self.filename}"


_PIN = re.compile(r"^(\S+)==(\S+) --hash=sha256:([0-9a-f]{64})\s+#\s+(\S+)$")


def runtime_lock(arch: str) -> Path:
    return LOCK_DIR / f"runtime-{arch}.txt"


def read_lock(path: Path) -> list[Pin]:
    if not path.exists():
        raise ReleaseError(f"no lock file {path}: `python -m release lock` writes it")
    pins = []
    for line in path.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        match = _PIN.match(line)
        if not match:
            raise ReleaseError(f"{path.name}: not a pin line: {line!r}")
        pins.append(Pin(*match.groups()))
    return pins


def project_version() -> str:
    return str(tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["version"])


def platform_args(arch: str) -> list[str]:
    """pip's target-platform options for the image's interpreter, binary wheels only."""
    machine = MACHINES[arch]
    tags = [f"manylinux_2_{minor}_{machine}" for minor in range(GLIBC_MINOR, 4, -1)]
    tags += [f"manylinux2014_{machine}", f"manylinux2010_{machine}", f"manylinux1_{machine}"]
    args = ["--only-binary=:all:", "--implementation", "cp", "--abi", "cp311"]
    args += ["--python-version", PYTHON_VERSION]
    for tag in tags:
        args += ["--platform", tag]
    return args


def _pip(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "pip", "--disable-pip-version-check", *args]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise ReleaseError(f"`pip {' '.join(args[:2])} ...` failed:\n{result.stderr.strip()}")
    return result


def _resolve(requirements: list[str], arch: str | None) -> list[Pin]:
    """What pip would install for `requirements` on the image's platform (a dry run)."""
    with tempfile.TemporaryDirectory() as scratch:
        report = Path(scratch) / "report.json"
        args = ["install", "--dry-run", "--ignore-installed", "--quiet", "--report", str(report)]
        if arch:
            args += [*platform_args(arch), "--target", str(Path(scratch) / "target")]
        _pip(*args, *requirements)
        installed = json.loads(report.read_text())["install"]
    pins = []
    for item in installed:
        info = item["download_info"]
        hashes = info.get("archive_info", {}).get("hashes", {})
        if "sha256" not in hashes:
            continue  # the project's own wheel, given by path
        filename = info["url"].rsplit("/", 1)[-1]
        meta = item["metadata"]
        pins.append(Pin(meta["name"], meta["version"], hashes["sha256"], filename))
    return sorted(pins, key=lambda p: p.name.lower())


def write_locks(arches: tuple[str, ...] = ("amd64", "arm64")) -> list[Path]:
    """Resolves build.txt and runtime-<arch>.txt anew."""
    LOCK_DIR.mkdir(exist_ok=True)
    header = "# Written by `python -m release lock`; edit pyproject.toml, then run it again.\n"
    log("lock: resolving the build tools")
    build = _resolve(list(BUILD_TOOLS), None)
    BUILD_LOCK.write_text(header + "".join(pin.line() + "\n" for pin in build))
    written = [BUILD_LOCK]
    with tempfile.TemporaryDirectory() as scratch:
        wheel = build_project_wheel(Path(scratch))
        for arch in arches:
            log(f"lock: resolving the operator's dependencies for {arch}")
            pins = [p for p in _resolve([str(wheel)], arch) if p.name != "ccs-operator"]
            note = f"# CPython {PYTHON_VERSION}, Debian bookworm (glibc 2.{GLIBC_MINOR}), {arch}.\n"
            runtime_lock(arch).write_text(header + note + "".join(p.line() + "\n" for p in pins))
            written.append(runtime_lock(arch))
    return written


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as data:
        for chunk in iter(lambda: data.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def wheel_cache(arch: str) -> Path:
    return image_cache() / "wheels" / arch


def fetch_wheels(arch: str) -> tuple[list[Path], Path]:
    """The locked runtime wheels for `arch` and pip's own wheel, downloaded when missing;
    every file is checked against its lock hash."""
    runtime = read_lock(runtime_lock(arch))
    (pip_pin,) = [p for p in read_lock(BUILD_LOCK) if p.name == "pip"]
    directory = wheel_cache(arch)
    directory.mkdir(parents=True, exist_ok=True)
    wanted = [*runtime, pip_pin]
    missing = [p for p in wanted if not _valid(directory / p.filename, p)]
    if missing:
        log(f"wheels: downloading {len(missing)} of {len(wanted)} for {arch} into {directory}")
        with tempfile.NamedTemporaryFile("w", suffix=".txt") as requirements:
            requirements.write("".join(p.line().split("  #")[0] + "\n" for p in missing))
            requirements.flush()
            _pip(
                "download", "--no-deps", "--require-hashes", *platform_args(arch),
                "-d", str(directory), "-r", requirements.name,
            )
        for pin in missing:
            if not _valid(directory / pin.filename, pin):
                raise ReleaseError(f"pip did not download {pin.filename} with the locked hash")
    else:
        log(f"wheels: all {len(wanted)} cached for {arch}")
    return [directory / p.filename for p in runtime], directory / pip_pin.filename


def _valid(path: Path, pin: Pin) -> bool:
    return path.is_file() and _sha256(path) == pin.sha256


def build_project_wheel(out_dir: Path) -> Path:
    """The operator's wheel, built from a copy of its sources (symlinks resolved, no
    build/ or egg-info left over from an editable install) with the locked setuptools."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        source = Path(scratch) / "src"
        for relative in WHEEL_SOURCES:
            origin, copy = REPO_ROOT / relative, source / relative
            copy.parent.mkdir(parents=True, exist_ok=True)
            if origin.is_dir():
                shutil.copytree(
                    origin, copy, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
                )
            else:
                shutil.copyfile(origin, copy)
        constraints = Path(scratch) / "constraints.txt"
        pins = [p for p in read_lock(BUILD_LOCK) if p.name != "pip"]
        constraints.write_text("".join(f"{p.name}=={p.version}\n" for p in pins))
        # SOURCE_DATE_EPOCH: the wheel's zip entries carry that time, so the wheel (and the
        # hash pip records of it in direct_url.json) is the same on every build.
        env = {
            **os.environ,
            "PIP_CONSTRAINT": str(constraints),
            "SOURCE_DATE_EPOCH": str(source_date_epoch()),
        }
        _pip("wheel", "--quiet", "--no-deps", "--wheel-dir", str(out_dir), str(source), env=env)
    (wheel,) = out_dir.glob("ccs_operator-*.whl")
    return wheel


def source_files() -> list[Path]:
    """Every file the project's wheel is built from, for cache keys."""
    files = []
    for relative in WHEEL_SOURCES:
        path = REPO_ROOT / relative
        if path.is_dir():
            files += [
                p for p in path.rglob("*")
                if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
            ]
        else:
            files.append(path)
    return sorted(files)
