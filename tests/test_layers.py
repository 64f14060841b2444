"""The package's layers: the pure core imports neither the clients nor the controllers, and
the clients do not import the controllers. Read from the source (ast), so the test needs
nothing installed beyond the package itself.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "operator" / "ccs_operator"
LAYERS = ("core", "clients", "controllers")
# What each layer may import from the package (besides itself).
ALLOWED = {
    "core": set(),
    "clients": {"core"},
    "controllers": {"core", "clients", "config", "metrics"},
}
# Libraries (or their parts) that do I/O or talk to the cluster: not in the pure core.
# (kubernetes.utils.parse_quantity is pure and allowed.)
IO_MODULES = (
    "kopf",
    "kubernetes.client",
    "kubernetes.config",
    "kubernetes.watch",
    "aiohttp",
    "requests",
    "urllib3",
    "prometheus_api_client",
    "prometheus_client",
    "socket",
    "subprocess",
)


def _imports(path: Path) -> set[str]:
    """Every module the file imports, absolute (relative imports resolved)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(parts[: len(parts) - node.level])
                mod = f"{base}.{node.module}" if node.module else base
            else:
                mod = node.module or ""
            out.add(mod)
            out.update(f"{mod}.{a.name}" for a in node.names)
    return out


def _layer_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "ccs_operator" or len(parts) < 2:
        return None
    name = parts[1]
    # a name defined in the package's __init__ (such as __version__) is no layer
    is_module = (PACKAGE / f"{name}.py").exists() or (PACKAGE / name).is_dir()
    return name if is_module else None


def _modules(layer: str) -> list[Path]:
    return sorted((PACKAGE / layer).glob("*.py"))


@pytest.mark.parametrize("layer", LAYERS)
def test_a_layer_imports_only_the_layers_below_it(layer: str) -> None:
    assert _modules(layer), f"no modules in {layer}/"
    wrong = {}
    for path in _modules(layer):
        bad = {_layer_of(m) for m in _imports(path)} - {None, layer} - ALLOWED[layer]
        if bad:
            wrong[path.name] = sorted(str(b) for b in bad)
    assert not wrong, f"{layer}/ imports what it must not: {wrong}"


def test_the_pure_core_does_no_io() -> None:
    wrong = {}
    for path in _modules("core"):
        libs = {m for m in _imports(path) if m == "kubernetes" or m.startswith(IO_MODULES)}
        if libs:
            wrong[path.name] = sorted(libs)
    assert not wrong, f"core/ imports I/O libraries: {wrong}"


def test_no_module_is_left_beside_the_layers_but_the_commands_and_settings() -> None:
    top = {p.stem for p in PACKAGE.glob("*.py")}
    assert top == {"__init__", "cli", "runner", "config", "metrics", "tune"}


def test_the_harness_and_the_benchmarks_never_import_the_suites() -> None:
    root = PACKAGE.parents[1]
    harness = [*sorted((root / "e2e").glob("*.py")), *sorted((root / "bench").glob("*.py"))]
    assert len(harness) > 10
    wrong = {}
    for path in harness:
        tree = ast.parse(path.read_text(), filename=str(path))
        names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        names |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        suites = sorted(m for m in names if m == "e2e.tests" or m.startswith("e2e.tests."))
        if suites:
            wrong[path.name] = suites
    assert not wrong, f"the harness imports the e2e suites: {wrong}"
