"""Cache keys of the harness's binaries: each covers its own modules and nothing else.

A copy of e2e/toolchain/ in a temporary directory is edited; the Go version is pinned, so
no Go toolchain runs.
"""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import pytest

from e2e import toolchain
from e2e.paths import TOOLCHAIN_DIR


@pytest.fixture
def tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    copy = tmp_path / "toolchain"
    shutil.copytree(TOOLCHAIN_DIR, copy)
    monkeypatch.setattr(toolchain, "TOOLCHAIN_DIR", copy)
    monkeypatch.setattr(toolchain, "_go_version", lambda go: "go1.26.0 linux amd64")
    monkeypatch.setattr(toolchain, "_go", lambda: "go")
    monkeypatch.setattr(toolchain, "bin_root", lambda: tmp_path / "bin")
    return copy


OWN_DIRS = ("prometheus-operator", "prometheus", "prometheus-adapter", "actionlint")


def _binary(name: str) -> toolchain.Binary:
    (binary,) = [b for b in toolchain.binaries() if b.name == name]
    return binary


def _promop() -> toolchain.Binary:
    return _binary("prometheus-operator")


def _touch(path: Path) -> None:
    path.write_text(path.read_text() + "\n// changed\n")


def test_the_monitoring_binaries_have_directories_of_their_own(tree: Path) -> None:
    dirs = {name: toolchain.binary_dir(_binary(name)) for name in OWN_DIRS}
    assert len({toolchain.bin_dir(), *dirs.values()}) == 1 + len(OWN_DIRS)
    assert dirs["prometheus-operator"].name.startswith("prometheus-operator-v0.85.0-")
    assert dirs["prometheus"].name.startswith("prometheus-v3.5.0-")
    assert dirs["prometheus-adapter"].name.startswith("prometheus-adapter-v0.12.0-")
    for binary in toolchain.binaries():
        if binary.name not in OWN_DIRS:
            assert toolchain.binary_dir(binary) == toolchain.bin_dir()


@pytest.mark.parametrize("module", ["promoperator", "prometheus", "adapter", "actionlint"])
def test_an_own_module_changes_its_own_directory_only(tree: Path, module: str) -> None:
    before = {b.name: toolchain.binary_dir(b) for b in toolchain.binaries()}
    _touch(tree / module / "go.sum")
    after = {b.name: toolchain.binary_dir(b) for b in toolchain.binaries()}
    changed = {name for name in before if before[name] != after[name]}
    assert changed == {b.name for b in toolchain.binaries() if b.module == module}


def test_the_prometheus_release_follows_its_module_version(
    tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for module_version, release in (("v0.305.0", "3.5.0"), ("v0.316.2", "3.16.2")):
        monkeypatch.setattr(toolchain, "required_version", lambda m, p, v=module_version: v)
        assert toolchain.prometheus_version() == release
    monkeypatch.setattr(toolchain, "required_version", lambda m, p: "v2.53.0")
    with pytest.raises(toolchain.BuildError):
        toolchain.prometheus_version()


def test_the_cluster_directory_ignores_the_prometheus_operator_module(tree: Path) -> None:
    cluster_dir, promop_dir = toolchain.bin_dir(), toolchain.binary_dir(_promop())
    _touch(tree / "promoperator" / "go.sum")
    assert toolchain.bin_dir() == cluster_dir
    assert toolchain.binary_dir(_promop()) != promop_dir


def test_the_cluster_directory_ignores_a_module_that_is_not_its_own(tree: Path) -> None:
    cluster_dir = toolchain.bin_dir()
    extra = tree / "someday"
    extra.mkdir()
    (extra / "go.mod").write_text("module ccs-operator/e2e/toolchain/someday\n")
    assert toolchain.bin_dir() == cluster_dir


@pytest.mark.parametrize("module", ["kube", "etcd", "kwok", "helm"])
def test_each_cluster_module_changes_the_cluster_directory_only(tree: Path, module: str) -> None:
    cluster_dir, promop_dir = toolchain.bin_dir(), toolchain.binary_dir(_promop())
    _touch(tree / module / "go.sum")
    assert toolchain.bin_dir() != cluster_dir
    assert toolchain.binary_dir(_promop()) == promop_dir


def test_the_go_version_changes_every_directory(
    tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster_dir, promop_dir = toolchain.bin_dir(), toolchain.binary_dir(_promop())
    monkeypatch.setattr(toolchain, "_go_version", lambda go: "go1.27.0 linux amd64")
    assert toolchain.bin_dir() != cluster_dir
    assert toolchain.binary_dir(_promop()) != promop_dir


def test_the_prometheus_operator_pin_is_the_one_the_crds_come_from(tree: Path) -> None:
    assert _promop().own_dir == f"prometheus-operator-{toolchain.prometheus_operator_version()}"


def test_ensure_built_refuses_unknown_and_mixed_names(tree: Path) -> None:
    with pytest.raises(toolchain.BuildError, match="no such binary"):
        toolchain.ensure_built(("no-such-thing",))
    with pytest.raises(toolchain.BuildError, match="different directories"):
        toolchain.ensure_built(("kube", "prometheus-operator"))


def test_ensure_built_reuses_complete_directories(tree: Path) -> None:
    """Nothing is built when the binaries are there: the fast path needs no Go at all."""
    promop_dir = toolchain.binary_dir(_promop())
    promop_dir.mkdir(parents=True)
    (promop_dir / "prometheus-operator").write_text("")
    assert toolchain.ensure_built(("prometheus-operator",)) == promop_dir


def test_prometheus_embeds_a_web_ui_whose_recipe_keys_its_directory(
    tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An old build without the UI, or with another UI recipe, is never reused."""
    prometheus = _binary("prometheus")
    assert prometheus.web_ui == toolchain.PROMETHEUS
    assert "builtinassets" in toolchain._build_flags(prometheus)
    before = {b.name: toolchain.binary_dir(b) for b in toolchain.binaries()}
    monkeypatch.setattr(toolchain, "WEB_UI_WORKSPACES", toolchain.WEB_UI_WORKSPACES[1:])
    after = {b.name: toolchain.binary_dir(b) for b in toolchain.binaries()}
    assert {name for name in before if before[name] != after[name]} == {"prometheus"}


def test_the_web_ui_build_says_when_npm_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(toolchain.BuildError, match="no npm on PATH"):
        toolchain._npm()


def test_a_failed_npm_step_is_named_with_its_output(tmp_path: Path) -> None:
    npm = tmp_path / "npm"
    npm.write_text("#!/bin/sh\necho 'ERESOLVE could not resolve' >&2\nexit 7\n")
    npm.chmod(0o755)
    log = tmp_path / "ui.log"
    with pytest.raises(toolchain.BuildError) as failed:
        toolchain._npm_step(str(npm), ["ci", "--no-audit"], tmp_path, log)
    assert "`npm ci --no-audit` failed (exit 7)" in str(failed.value)
    assert "ERESOLVE could not resolve" in str(failed.value)


def test_the_built_ui_is_gzipped_where_the_module_serves_it_and_embedded(tmp_path: Path) -> None:
    dist = tmp_path / "mantine-ui" / "dist"
    (dist / "assets").mkdir(parents=True)
    (dist / "index.html").write_text('<div id="root"></div>')
    (dist / "assets" / "index-abc.js").write_text("console.log(1)")
    (tmp_path / "embed.go.tmpl").write_text('package ui\n\nimport "embed"\n\n')
    embedded = toolchain._compress_web_ui(tmp_path)
    assert embedded == [
        "static/mantine-ui/assets/index-abc.js.gz",
        "static/mantine-ui/index.html.gz",
    ]
    packed = (tmp_path / embedded[1]).read_bytes()
    assert gzip.decompress(packed) == b'<div id="root"></div>'
    assert packed[4:8] == b"\0\0\0\0"  # no time stamp: the same UI gives the same binary
    toolchain._write_embed_go(tmp_path, embedded)
    embed_go = (tmp_path / "embed.go").read_text()
    assert f"//go:embed {' '.join(embedded)}\nvar EmbedFS embed.FS\n" in embed_go


def test_a_ui_build_without_its_index_page_fails(tmp_path: Path) -> None:
    (tmp_path / "mantine-ui" / "dist").mkdir(parents=True)
    with pytest.raises(toolchain.BuildError, match=r"produced no .*index\.html"):
        toolchain._compress_web_ui(tmp_path)
