"""bench/RESULTS.md: each benchmark owns one `## ` section and rewrites only that one."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def commit() -> str:
    """The commit a section is measured at; `+changes` when the tree has uncommitted work
    (other than RESULTS.md itself, which the benchmarks write)."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", ".", ":!bench/RESULTS.md"],
            capture_output=True,
            text=True,
        )
        return sha + ("+changes" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def write_section(path: Path, heading: str, section: str) -> None:
    """Replace the section under `heading` (up to the next `## `), or append it."""
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    pattern = re.compile(rf"^{re.escape(heading)}\n.*?(?=^## |\Z)", re.M | re.S)
    body = section.rstrip("\n") + "\n\n"
    if pattern.search(text):
        text = pattern.sub(lambda _: body, text)
    else:
        text = text.rstrip("\n") + "\n\n" + body
    path.write_text(text.rstrip("\n") + "\n")


def e2e_rows(
    test_file: str, out_variable: str, runs: int, progress: Callable[[str], None], about: str
) -> list[dict[str, Any]] | None:
    """Run one e2e test file `runs` times (each in a fresh pytest), the test appending one
    JSON line per measurement to the file `out_variable` names; the lines, or None (said by
    `progress`) when a run failed."""
    out = Path(tempfile.mkstemp(prefix="ccs-bench-", suffix=".jsonl")[1])
    env = {**os.environ, out_variable: str(out)}
    for run in range(1, runs + 1):
        progress(f"run {run}/{runs}: {test_file} ({about})")
        argv = [
            sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-s",
            "--basetemp", tempfile.mkdtemp(prefix="ccs-bench-"), test_file,
        ]  # fmt: skip
        if subprocess.run(argv, cwd=ROOT, env=env, check=False).returncode != 0:
            progress(f"run {run} failed; see the pytest output above")
            return None
    return [json.loads(line) for line in out.read_text().splitlines() if line.strip()]


def publish(section: str, heading: str, path: Path | None, progress: Callable[[str], None]) -> None:
    """Print a section, and write it into `path` (a RESULTS.md) when one is given."""
    print(section)
    if path:
        write_section(path, heading, section)
        progress(f"wrote {path}")
