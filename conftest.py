"""Shared fixtures: the local cluster and Prometheus live in e2e/fixtures.py."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
# tests/helpers.py is imported by name from test modules in tests/.
sys.path.insert(0, str(ROOT / "tests"))
