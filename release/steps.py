"""Shared helpers: progress on stderr, logged subprocesses, the source date, root checks."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from e2e.paths import REPO_ROOT, cache_root

# How often a long step says it is still alive, so CI logs never look hung.
HEARTBEAT_S = 30.0
# The Debian tools the image build uses (`make image-deps` installs them).
DEBIAN_TOOLS = {"mmdebstrap": "mmdebstrap", "skopeo": "skopeo", "umoci": "umoci"}


class ReleaseError(RuntimeError):
    """A release step failed; the message says which and why."""


def log(message: str) -> None:
    print(f"[release] {message}", file=sys.stderr, flush=True)


def image_cache() -> Path:
    """~/.cache/ccs-operator/image: the Debian bases, wheels and finished test builds."""
    return cache_root() / "image"


def require_tools(*names: str) -> None:
    missing = [name for name in names if shutil.which(name) is None]
    if missing:
        packages = " ".join(DEBIAN_TOOLS.get(name, name) for name in missing)
        raise ReleaseError(
            f"missing {', '.join(missing)}: `make image-deps` installs them "
            f"(apt-get install {packages})"
        )


def require_root(what: str) -> None:
    if os.geteuid() != 0:
        raise ReleaseError(f"{what} needs root (it runs mmdebstrap and chroot)")


def run_logged(
    cmd: Sequence[str],
    log_path: Path,
    what: str,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> None:
    """Runs `cmd` with its output appended to `log_path`, saying every HEARTBEAT_S that it
    is still `what`; a failure quotes the log's tail."""
    started = time.monotonic()
    with open(log_path, "a") as out:
        out.write("$ " + " ".join(cmd) + "\n")
        out.flush()
        proc = subprocess.Popen(
            list(cmd), stdout=out, stderr=subprocess.STDOUT, env=dict(env or os.environ), cwd=cwd
        )
        while True:
            try:
                rc = proc.wait(timeout=HEARTBEAT_S)
                break
            except subprocess.TimeoutExpired:
                log(f"  still {what} ({time.monotonic() - started:.0f}s)")
    if rc != 0:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-25:])
        raise ReleaseError(f"{what} failed (exit {rc}); full log: {log_path}\n{tail}")


def git(*args: str) -> str:
    result = subprocess.run(
        ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=False
    )
    return result.stdout.strip() if result.returncode == 0 else ""


def source_date_epoch() -> int:
    """$SOURCE_DATE_EPOCH, else the time of the checked-out commit: every timestamp in the
    image is this one, so a commit always gives the same bytes."""
    value = os.environ.get("SOURCE_DATE_EPOCH") or git("log", "-1", "--format=%ct")
    if not value:
        raise ReleaseError("no SOURCE_DATE_EPOCH and no git commit to take it from")
    return int(value)


def revision() -> str:
    return os.environ.get("CCS_IMAGE_REVISION") or git("rev-parse", "HEAD") or "unknown"


def host_arch() -> str:
    """The machine's architecture in Debian's (and OCI's) words: amd64, arm64."""
    machine = os.uname().machine
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)
