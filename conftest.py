"""Shared fixtures: the local cluster (e2e/fixtures.py) and the operator process."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
# tests/helpers.py is imported by name from test modules in tests/.
sys.path.insert(0, str(ROOT / "tests"))

pytest_plugins = [
    "e2e.fixtures",
    "e2e.operator_fixtures",
    "e2e.monitoring_fixtures",
    "e2e.image_fixtures",
]
