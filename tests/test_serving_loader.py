"""ccs-model-loader: the init container that assembles Triton's model repository.

Runs the loader's real code on real directories (no Triton needed): every repository form
the CRD accepts either assembles a valid repository or fails with a message that names the
argument, field or path.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ccs_operator.api import parse_service
from ccs_operator.render import render_children
from ccs_operator.tritonconfig import parse_config_pbtxt, render_config_pbtxt
from serving_image import SAMPLE_MODEL_DIR
from serving_image.loader import LoaderError, assemble, build_parser, main

ROOT = Path(__file__).resolve().parents[1]


def _config(tmp_path: Path, sample: str = "cpu-dev.yaml", **model: object) -> Path:
    body = yaml.safe_load((ROOT / "samples" / sample).read_text())
    body["spec"]["model"].update(model)
    path = tmp_path / "config.pbtxt"
    path.write_text(render_config_pbtxt(parse_service(body).spec))
    return path


def _repo(root: Path, versions: tuple[str, ...] = ("1",), filename: str = "model.py") -> Path:
    for version in versions:
        (root / version).mkdir(parents=True)
        (root / version / filename).write_text("# model\n")
    return root


def test_rendered_init_container_args_are_what_the_loader_parses() -> None:
    for sample in sorted((ROOT / "samples").glob("*.yaml")):
        ccs = parse_service(yaml.safe_load(sample.read_text()))
        deployment = next(c for c in render_children(ccs) if c["kind"] == "Deployment")
        init = deployment["spec"]["template"]["spec"]["initContainers"][0]
        assert init["command"] == ["ccs-model-loader"]
        args = build_parser().parse_args(init["args"])
        assert args.repository == ccs.spec.model.repository
        assert args.model_name == ccs.spec.model.name
        assert args.model_store == Path("/models")


def test_baked_path_is_copied_with_the_operator_config(tmp_path: Path) -> None:
    config = _config(tmp_path)
    store = tmp_path / "models"
    model_dir = assemble(str(SAMPLE_MODEL_DIR), "claude_code", config, store)
    assert model_dir == store / "claude_code"
    assert (model_dir / "config.pbtxt").read_text() == config.read_text()
    assert (model_dir / "1" / "model.py").is_file()
    assert not (model_dir / "1").is_symlink(), "baked paths are copied, not linked"
    parsed = parse_config_pbtxt((model_dir / "config.pbtxt").read_text())
    assert parsed.name == "claude_code" and parsed.max_batch_size == 32


def test_file_url_and_repository_config_is_replaced(tmp_path: Path) -> None:
    repo = _repo(tmp_path / "repo", ("1", "3"))
    (repo / "config.pbtxt").write_text('name: "someone_else"\n')
    (repo / "2-notes").mkdir()  # not a version directory: ignored
    model_dir = assemble(f"file://{repo}", "claude_code", _config(tmp_path), tmp_path / "m")
    assert sorted(p.name for p in model_dir.iterdir()) == ["1", "3", "config.pbtxt"]
    assert 'name: "claude_code"' in (model_dir / "config.pbtxt").read_text()


def test_pvc_repository_links_version_dirs_under_the_claim_mount(tmp_path: Path) -> None:
    pvc_root = tmp_path / "pvc"
    _repo(pvc_root / "model-weights" / "claude-code")
    model_dir = assemble(
        "pvc://model-weights/claude-code",
        "claude_code",
        _config(tmp_path),
        tmp_path / "models",
        pvc_root=pvc_root,
    )
    link = model_dir / "1"
    assert link.is_symlink()
    assert link.resolve() == (pvc_root / "model-weights" / "claude-code" / "1").resolve()


def test_pvc_path_cannot_escape_its_claim(tmp_path: Path) -> None:
    _repo(tmp_path / "pvc" / "other")
    with pytest.raises(LoaderError, match="escapes the claim"):
        assemble("pvc://claim/../other", "m", _config(tmp_path), tmp_path / "s", tmp_path / "pvc")


@pytest.mark.parametrize("scheme", ["s3", "gs", "az"])
def test_object_stores_fail_with_a_clear_unsupported_message(tmp_path: Path, scheme: str) -> None:
    with pytest.raises(LoaderError) as err:
        assemble(f"{scheme}://bucket/model", "claude_code", _config(tmp_path), tmp_path / "s")
    assert f"{scheme}:// repositories are not supported" in str(err.value)
    assert "--repository" in str(err.value)
    assert not (tmp_path / "s" / "claude_code").exists()


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("missing-dir", "is not a directory"),
        ("no-versions", "no version directory"),
        ("no-model-file", "missing model.py"),
        ("bad-config", "not a valid Triton model config"),
        ("name-mismatch", "does not match --model-name"),
        ("specific-missing", "version_policy.specific.versions [7] not found"),
        ("unreadable-config", "--config"),
        ("relative", "expected an absolute path"),
    ],
)
def test_failures_name_the_field_or_path(tmp_path: Path, case: str, expected: str) -> None:
    repo = tmp_path / "repo"
    config = _config(tmp_path)
    name = "claude_code"
    repository = str(repo)
    if case == "missing-dir":
        pass
    elif case == "no-versions":
        repo.mkdir()
    elif case == "no-model-file":
        _repo(repo, filename="weights.bin")
    else:
        _repo(repo)
    if case == "bad-config":
        config.write_text("max_batch_size: [oops\n")
    elif case == "name-mismatch":
        name = "other"
    elif case == "specific-missing":
        config = _config(tmp_path, versionPolicy={"policy": "Specific", "versions": [1, 7]})
    elif case == "unreadable-config":
        config = tmp_path / "absent.pbtxt"
    elif case == "relative":
        repository = "models/claude_code"
    with pytest.raises(LoaderError, match=expected.replace("[", r"\[").replace("]", r"\]")):
        assemble(repository, name, config, tmp_path / "store")
    store = tmp_path / "store"
    leftovers = list(store.iterdir()) if store.exists() else []
    assert leftovers == [], "nothing half-assembled is left in Triton's repository"


def test_libtorch_platform_needs_model_pt(tmp_path: Path) -> None:
    config = _config(tmp_path, "claude-code.yaml")
    with pytest.raises(LoaderError, match=r"missing model\.pt \(needed by pytorch_libtorch\)"):
        assemble(str(_repo(tmp_path / "r")), "claude_code", config, tmp_path / "s")
    repo = _repo(tmp_path / "t", filename="model.pt")
    ok = assemble(str(repo), "claude_code", config, tmp_path / "s")
    assert (ok / "1" / "model.pt").exists()


def test_reassembly_replaces_the_previous_store(tmp_path: Path) -> None:
    config = _config(tmp_path)
    store = tmp_path / "models"
    assemble(str(_repo(tmp_path / "a", ("1", "2"))), "claude_code", config, store)
    assemble(str(_repo(tmp_path / "b", ("5",))), "claude_code", config, store)
    assert sorted(p.name for p in (store / "claude_code").iterdir()) == ["5", "config.pbtxt"]


def test_main_exit_codes_and_messages(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _config(tmp_path)
    base = ["--model-name", "claude_code", "--config", str(config)]
    assert main(["--repository", "s3://b/m", *base, "--model-store", str(tmp_path / "s")]) == 2
    assert "ccs-model-loader: error: --repository 's3://b/m'" in capsys.readouterr().err
    assert main(["--repository", str(SAMPLE_MODEL_DIR), *base, "--model-store", str(tmp_path)]) == 0
    assert "ready (versions 1)" in capsys.readouterr().out


def test_wrapper_script_runs_the_loader(tmp_path: Path) -> None:
    config = _config(tmp_path)
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "serving_image" / "ccs-model-loader"),
            "--repository",
            str(SAMPLE_MODEL_DIR),
            "--model-name",
            "claude_code",
            "--config",
            str(config),
            "--model-store",
            str(tmp_path / "models"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "models" / "claude_code" / "1" / "model.py").is_file()
