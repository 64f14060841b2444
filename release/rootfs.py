"""The image's Debian base: a minimal root filesystem made by mmdebstrap, cached.

Debian bookworm is the suite: it is what this machine's apt sources serve and it ships
Python 3.11 (python3.11 3.11.2), the version the project needs. The base is minbase plus
python3.11 and ca-certificates, without documentation, manual pages and translations (each
package's copyright file is kept), with apt's caches and lists, dpkg's and debconf's
backups and the logs removed, and the operator's user (uid/gid 65532, the conventional
"nonroot") added. It is built once per recipe and architecture into
~/.cache/ccs-operator/image/base/<arch>-<recipe hash>/; `--refresh-base` builds it anew (to
pick up Debian's security updates: the cache key holds no date).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

from release.steps import image_cache, log, require_root, require_tools, run_logged

SUITE = "bookworm"
PACKAGES = ("python3.11", "ca-certificates")
PYTHON = "/usr/bin/python3.11"
# The operator's user: numeric, so runAsNonRoot can verify it (the chart runs it as this).
USER, UID = "ccs", 65532
# As Docker's debian:*-slim images drop them (copyright files stay).
DPKG_OPTIONS = (
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/locale/*",
    "path-exclude=/usr/share/lintian/*",
)
# Bump when the post-processing below changes: the cache key covers it.
RECIPE_REVISION = 1
# Written only by the build machine or the package manager; not part of an image.
_REMOVED = (
    "etc/hostname",
    "etc/resolv.conf",
    "var/cache/debconf/config.dat-old",
    "var/cache/debconf/templates.dat-old",
    "var/cache/ldconfig/aux-cache",
    "var/lib/dpkg/diversions-old",
    "var/lib/dpkg/status-old",
    "var/lib/apt/extended_states",
)
_EMPTIED = ("var/cache/apt", "var/lib/apt/lists", "var/log", "tmp", "var/tmp")


def sources() -> list[str]:
    """mmdebstrap's MIRROR arguments. None: its default Debian mirror, to which it adds the
    -updates and -security suites of a stable release. $CCS_DEBIAN_MIRROR (a URI) replaces
    the mirror of all three suites; $CCS_DEBIAN_SECURITY_MIRROR that of -security."""
    mirror = os.environ.get("CCS_DEBIAN_MIRROR")
    if not mirror:
        return []
    security = os.environ.get("CCS_DEBIAN_SECURITY_MIRROR") or f"{mirror.rstrip('/')}-security"
    return [
        f"deb {mirror} {SUITE} main",
        f"deb {mirror} {SUITE}-updates main",
        f"deb {security} {SUITE}-security main",
    ]


def _mmdebstrap_version() -> str:
    result = subprocess.run(["mmdebstrap", "--version"], capture_output=True, text=True)
    return result.stdout.strip()


def recipe(arch: str) -> dict[str, object]:
    return {
        "arch": arch,
        "sources": sources() or ["mmdebstrap's default mirror, -updates and -security"],
        "packages": PACKAGES,
        "dpkg": DPKG_OPTIONS,
        "user": [USER, UID],
        "mmdebstrap": _mmdebstrap_version(),
        "revision": RECIPE_REVISION,
    }


def base_key(arch: str) -> str:
    return hashlib.sha256(json.dumps(recipe(arch), sort_keys=True).encode()).hexdigest()[:12]


def base_dir(arch: str) -> Path:
    return image_cache() / "base" / f"{arch}-{base_key(arch)}"


def ensure_base(arch: str, refresh: bool = False) -> Path:
    """The cached base root filesystem for `arch`; builds it when missing."""
    require_root("building the image's Debian base")
    require_tools("mmdebstrap")
    directory = base_dir(arch)
    rootfs, done = directory / "rootfs", directory / "done.json"
    if done.exists() and not refresh:
        log(f"Debian base: cached {directory}")
        return rootfs
    _remove(directory)
    directory.mkdir(parents=True)
    partial = directory / "rootfs.partial"
    log_path = directory / "mmdebstrap.log"
    log(f"Debian base: mmdebstrap {SUITE} ({arch}, {', '.join(PACKAGES)}); about a minute")
    started = time.monotonic()
    cmd = [
        "mmdebstrap",
        "--variant=minbase",
        "--mode=root",
        "--format=directory",
        f"--architectures={arch}",
        f"--include={','.join(PACKAGES)}",
        "--aptopt=Acquire::Languages \"none\"",
        *(f"--dpkgopt={option}" for option in DPKG_OPTIONS),
        SUITE,
        str(partial),
        *sources(),
    ]
    run_logged(cmd, log_path, "running mmdebstrap")
    _finish(partial)
    partial.rename(rootfs)
    done.write_text(json.dumps(recipe(arch), indent=2) + "\n")
    log(f"Debian base: built in {time.monotonic() - started:.0f}s ({directory})")
    return rootfs


def _remove(path: Path) -> None:
    if path.exists():
        shutil.rmtree(path)


def _finish(rootfs: Path) -> None:
    """Removes what a build leaves behind and adds the operator's user."""
    for relative in _REMOVED:
        (rootfs / relative).unlink(missing_ok=True)
    for relative in _EMPTIED:
        directory = rootfs / relative
        for child in directory.iterdir() if directory.is_dir() else ():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
    # apt recreates these; keep the directories it expects so apt still works in the image.
    for relative in ("var/cache/apt/archives/partial", "var/lib/apt/lists/partial"):
        (rootfs / relative).mkdir(parents=True, exist_ok=True)
    passwd = f"{USER}:x:{UID}:{UID}:ccs-operator:/nonexistent:/usr/sbin/nologin"
    _append(rootfs / "etc/passwd", passwd)
    _append(rootfs / "etc/group", f"{USER}:x:{UID}:")
    _append(rootfs / "etc/shadow", f"{USER}:*:0:0:99999:7:::")
    _append(rootfs / "etc/gshadow", f"{USER}:!::")


def _append(path: Path, line: str) -> None:
    text = path.read_text()
    if not any(existing.split(":")[0] == line.split(":")[0] for existing in text.splitlines()):
        path.write_text(text + ("" if text.endswith("\n") or not text else "\n") + line + "\n")
