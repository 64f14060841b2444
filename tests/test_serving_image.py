"""The serving image's static parts: Dockerfile contract, sample model, TorchScript export.

No Docker engine exists here, so the Dockerfile is checked against what the operator renders
(base image, user, health check, loader path, baked model path) rather than built.
"""

from __future__ import annotations

import importlib.util
import json
import shlex
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import yaml

from ccs_operator.core.api import DEFAULT_IMAGE, parse_service
from ccs_operator.core.render import render_children, triton_args
from serving_image import SAMPLE_MODEL_DIR
from serving_image.export_torchscript import VOCAB, reference_output, reference_table
from serving_image.local import TritonDist

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "serving_image" / "Dockerfile"


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_builds_on_the_operators_default_image() -> None:
    instructions = _instructions()
    args = dict(a.split("=", 1) for i, a in instructions if i == "ARG" and "=" in a)
    assert args["TRITON_IMAGE"] == DEFAULT_IMAGE
    assert ("FROM", "${TRITON_IMAGE}") in instructions
    # The client library pinned to the base image's Triton release (25.01 = 2.54.0).
    assert args["TRITONCLIENT_VERSION"] == "2.54.0"


def test_dockerfile_runs_as_the_pods_non_root_user_with_a_readiness_healthcheck() -> None:
    instructions = _instructions()
    users = [a for i, a in instructions if i == "USER"]
    assert users == ["1000"]
    ccs = parse_service(yaml.safe_load((ROOT / "samples" / "cpu-dev.yaml").read_text()))
    pod = next(c for c in render_children(ccs) if c["kind"] == "Deployment")["spec"]["template"]
    assert pod["spec"]["securityContext"]["runAsUser"] == 1000
    health = next(a for i, a in instructions if i == "HEALTHCHECK")
    assert "/v2/health/ready" in health and "127.0.0.1:8000" in health
    assert pod["spec"]["containers"][0]["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"


def test_dockerfile_installs_the_loader_the_deployment_calls() -> None:
    instructions = _instructions()
    run = " ".join(a for i, a in instructions if i == "RUN")
    ccs = parse_service(yaml.safe_load((ROOT / "samples" / "cpu-dev.yaml").read_text()))
    pod = next(c for c in render_children(ccs) if c["kind"] == "Deployment")["spec"]["template"]
    command = pod["spec"]["initContainers"][0]["command"][0]
    assert f"/usr/local/bin/{command}" in run and f"{command} --help" in run
    # Every COPY source exists and is let through by the build context's ignore file.
    allowed = {
        line[1:]
        for line in (DOCKERFILE.parent / "Dockerfile.dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    for i, a in instructions:
        if i == "COPY":
            parts = [p for p in shlex.split(a) if not p.startswith("--")]
            for source in parts[:-1]:
                assert (ROOT / source).is_file(), source
                assert source in allowed, f"{source} is excluded from the build context"


def test_dockerfile_bakes_the_sample_model_where_cpu_dev_points() -> None:
    ccs = parse_service(yaml.safe_load((ROOT / "samples" / "cpu-dev.yaml").read_text()))
    copies = [a for i, a in _instructions() if i == "COPY" and "models/claude_code" in a]
    assert copies and copies[0].endswith(f"{ccs.spec.model.repository}/1/")


def test_dockerfile_default_command_uses_the_operators_flags() -> None:
    cmd = json.loads(next(a for i, a in _instructions() if i == "CMD"))
    ccs = parse_service(yaml.safe_load((ROOT / "samples" / "cpu-dev.yaml").read_text()))
    operator_flags = set(triton_args(ccs.spec))
    assert cmd[0] == "tritonserver"
    assert set(cmd[1:]) <= operator_flags


def _load_sample_model(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """model.py with the Python backend's real helper module (shipped by nvidia-pytriton)."""
    utils = TritonDist.find().python_backend / "triton_python_backend_utils.py"
    spec = importlib.util.spec_from_file_location("triton_python_backend_utils", utils)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", module)
    spec.loader.exec_module(module)
    path = SAMPLE_MODEL_DIR / "1" / "model.py"
    spec = importlib.util.spec_from_file_location("ccs_sample_model", path)
    assert spec and spec.loader
    model = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(model)
    return model


def test_python_sample_and_torchscript_export_share_one_table(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CCS_SAMPLE_BATCH_COST_MS", "7")
    sample = _load_sample_model(monkeypatch).TritonPythonModel()
    config = {
        "max_batch_size": 32,
        "input": [{"name": "input_ids", "data_type": "TYPE_INT32", "dims": [-1]}],
        "output": [{"name": "output", "data_type": "TYPE_FP32", "dims": [-1, VOCAB]}],
        "parameters": {"item_cost_ms": {"string_value": "0.25"}},
    }
    sample.initialize({"model_config": json.dumps(config), "model_instance_name": "m_0"})
    np.testing.assert_array_equal(sample.table, reference_table())
    assert (sample.batch_cost_s, sample.item_cost_s) == (0.007, 0.00025)
    ids = np.array([[3, 67]], dtype=np.int32)
    assert sample._output_shape(ids) == [1, 2, VOCAB]
    assert reference_output(ids).shape == (1, 2, VOCAB)
    np.testing.assert_array_equal(reference_output(ids)[0, 0], reference_output(ids)[0, 1])


def test_torchscript_export_matches_the_reference(tmp_path: Path) -> None:
    pytest.importorskip("torch", reason="torch is not installed here (not a dependency)")
    from serving_image.export_torchscript import export

    target = export(tmp_path / "claude_code")
    assert target == tmp_path / "claude_code" / "1" / "model.pt" and target.stat().st_size > 0


def test_torchscript_export_without_torch_says_so() -> None:
    if importlib.util.find_spec("torch") is not None:
        pytest.skip("torch is installed: the export itself is tested above")
    result = subprocess.run(
        [sys.executable, str(ROOT / "serving_image" / "export_torchscript.py"), "--out", "/x"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 3 and "torch is not installed" in result.stderr
