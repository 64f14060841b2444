"""A venv of its own for a test tool whose pins must not constrain the project's venv
(checkov, moto): created once under the cache with progress on stderr, reused while its stamp
names the same requirement, serialized with a file lock (concurrent pytest runs)."""

from __future__ import annotations

import fcntl
import shutil
import subprocess
import sys
import time
import venv
from pathlib import Path


def say(tool: str, message: str) -> None:
    """Printed to the terminal even under pytest's capture: a first install takes a while."""
    stream = sys.__stderr__ or sys.stderr
    stream.write(f"[{tool}] {message}\n")
    stream.flush()


def ensure(
    path: Path,
    requirement: str,
    tool: str,
    error: type[Exception],
    shown: tuple[str, ...] = ("Successfully", "ERROR"),
) -> Path:
    """Create (once) the venv at `path` with `requirement` installed; return its python.
    pip's lines starting with `shown` are printed; a failed install raises `error`."""
    python = path / "bin" / "python"
    stamp = path / ".ccs-installed"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / f".{path.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if stamp.is_file() and stamp.read_text() == requirement and python.exists():
            return python
        say(tool, f"creating {path} with {requirement} (once; reused afterwards)")
        started = time.monotonic()
        shutil.rmtree(path, ignore_errors=True)
        venv.create(path, with_pip=True)
        cmd = [
            str(python),
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "--progress-bar",
            "off",
            requirement,
        ]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert proc.stdout is not None
        tail: list[str] = []
        for line in proc.stdout:
            line = line.rstrip()
            tail = [*tail[-20:], line]
            if line.startswith(shown):
                say(tool, line[:200])
        if proc.wait() != 0:
            shutil.rmtree(path, ignore_errors=True)
            raise error(f"pip install {requirement} into {path} failed:\n" + "\n".join(tail))
        stamp.write_text(requirement)
        say(tool, f"{path} ready in {time.monotonic() - started:.0f} s")
        return python
