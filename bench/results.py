"""bench/RESULTS.md: each benchmark owns one `## ` section and rewrites only that one."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path


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
