"""Start, find and stop the cluster's processes by pid file.

A pid file alone is not proof: after a reboot or a crash the number may belong to something
else. A pid counts as ours only while /proc says that process runs the expected program
from the harness's own bin directory.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

from e2e.paths import bin_root


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def cmdline(pid: int) -> list[str]:
    """The argv a process was started with ([] when it is gone)."""
    return _cmdline(pid)


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    # The state letter follows the parenthesised command name, which may itself hold spaces.
    return stat.rsplit(")", 1)[1].split()[0] in {"Z", "X"}


def _reap(pid: int) -> None:
    """Collect an exited child of this process, so it does not linger as a zombie."""
    # Not our child: its own parent (or init) reaps it.
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def is_ours(pid: int, program: str, marker: str | None = None) -> bool:
    """Whether `pid` runs `program`: from the harness's bin directory, or, for a system
    program (socat, python), with `marker` (a path under the state dir) among its arguments."""
    argv = _cmdline(pid)
    if not argv or _is_zombie(pid):
        return False
    exe = Path(argv[0])
    if exe.name != program:
        return False
    if marker is not None:
        return any(marker in arg for arg in argv[1:])
    return exe.resolve().is_relative_to(bin_root().resolve())


def read_pid(pidfile: Path, program: str, marker: str | None = None) -> int | None:
    """The live pid recorded in `pidfile`, or None (a stale file is removed)."""
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None
    _reap(pid)
    if is_ours(pid, program, marker):
        return pid
    pidfile.unlink(missing_ok=True)
    return None


def start(
    argv: list[str], pidfile: Path, log: Path, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Launch detached (own session), so the cluster outlives the shell that ran `up`."""
    log.parent.mkdir(parents=True, exist_ok=True)
    pidfile.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        out.write(f"\n=== {time.strftime('%F %T')} {' '.join(argv)}\n".encode())
        out.flush()
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=env,
            start_new_session=True,
        )
    pidfile.write_text(f"{proc.pid}\n")
    return proc


def alive(pid: int) -> bool:
    _reap(pid)
    return Path(f"/proc/{pid}").exists() and not _is_zombie(pid)


def stop(pidfile: Path, program: str, timeout: float = 20.0, marker: str | None = None) -> bool:
    """SIGTERM, then SIGKILL after `timeout`; True when a process was stopped."""
    pid = read_pid(pidfile, program, marker)
    if pid is None:
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if alive(pid):
        os.kill(pid, signal.SIGKILL)
        while alive(pid):
            time.sleep(0.05)
    pidfile.unlink(missing_ok=True)
    return True
