"""serving_image.local: the CPU adaptation is explicit, and a failing server fails loudly."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import yaml
from tritonclient.grpc import model_config_pb2 as pb

from ccs_operator.core.api import parse_service
from ccs_operator.core.render import triton_args
from ccs_operator.core.tritonconfig import build_model_config, render_config_pbtxt
from serving_image import SAMPLE_MODEL_DIR
from serving_image.loader import assemble
from serving_image.local import (
    LocalTriton,
    TritonDist,
    TritonStartError,
    local_model_config,
    parse_metrics,
)

ROOT = Path(__file__).resolve().parents[1]


def _sample(name: str):  # type: ignore[no-untyped-def]
    return parse_service(yaml.safe_load((ROOT / "samples" / name).read_text()))


def test_gpu_groups_become_cpu_and_libtorch_becomes_python_with_notes() -> None:
    ccs = _sample("claude-code.yaml")
    config, notes = local_model_config(ccs)
    production = build_model_config(ccs.spec)
    assert [g.kind for g in production.instance_group] == [pb.ModelInstanceGroup.KIND_GPU]
    assert [(g.kind, g.count) for g in config.instance_group] == [
        (pb.ModelInstanceGroup.KIND_CPU, 2)
    ]
    assert (config.platform, config.backend) == ("", "python")
    assert len(notes) == 2 and "KIND_GPU x2 runs as KIND_CPU x2" in notes[0]
    assert "pytorch_libtorch is served by the Python-backend sample model" in notes[1]
    # Everything else is the operator's config, untouched.
    for field in ("input", "output", "max_batch_size", "dynamic_batching", "model_warmup"):
        assert getattr(config, field) == getattr(production, field)


def test_cpu_python_service_runs_unchanged() -> None:
    ccs = _sample("cpu-dev.yaml")
    config, notes = local_model_config(ccs)
    assert notes == []
    assert config == build_model_config(ccs.spec)


def test_command_keeps_the_operator_flags_and_binds_loopback(tmp_path: Path) -> None:
    ccs = _sample("claude-code.yaml")
    server = LocalTriton(tmp_path, server_args=triton_args(ccs.spec))
    server.http_port, server.grpc_port, server.metrics_port = 1, 2, 3
    argv = server.command(TritonDist.find(), tmp_path / "backends")
    for flag in (
        "--allow-metrics=true",
        "--metrics-config=summary_latencies=true",
        "--strict-readiness=true",
        "--exit-on-error=true",
    ):
        assert flag in argv
    assert f"--model-repository={tmp_path}" in argv
    assert "--model-repository=/models" not in argv
    assert {"--http-address=127.0.0.1", "--grpc-address=127.0.0.1"} <= set(argv)
    assert "--metrics-address=127.0.0.1" in argv and "--http-port=1" in argv


def test_parse_metrics_keeps_names_as_written() -> None:
    text = (
        "# TYPE nv_inference_count counter\n"
        'nv_inference_count{model="m",version="1"} 12\n'
        'nv_inference_queue_summary_us{model="m",version="1",quantile="0.99"} NaN\n'
    )
    metrics = parse_metrics(text)
    assert metrics["nv_inference_count"] == {(("model", "m"), ("version", "1")): 12.0}
    assert "nv_inference_queue_summary_us" in metrics


def _store_with_model(tmp_path: Path, model_py: str, **warmup: object) -> Path:
    repo = tmp_path / "repo" / "1"
    repo.mkdir(parents=True)
    (repo / "model.py").write_text(model_py)
    body = yaml.safe_load((ROOT / "samples" / "cpu-dev.yaml").read_text())
    if warmup:
        body["spec"]["model"]["warmup"] = warmup
    config = tmp_path / "config.pbtxt"
    config.write_text(render_config_pbtxt(parse_service(body).spec))
    assemble(str(tmp_path / "repo"), "claude_code", config, tmp_path / "models")
    return tmp_path / "models"


@pytest.mark.triton
def test_a_model_that_fails_to_load_fails_start_with_the_log_tail(tmp_path: Path) -> None:
    store = _store_with_model(tmp_path, "raise RuntimeError('broken sample for the test')\n")
    server = LocalTriton(store, server_args=["--exit-on-error=true", "--strict-readiness=true"])
    started = time.monotonic()
    with pytest.raises(TritonStartError) as err:
        server.start()
    assert time.monotonic() - started < 60
    assert "exited with code" in str(err.value)
    assert "broken sample for the test" in str(err.value)
    assert not server.running


@pytest.mark.triton
def test_a_server_that_is_not_ready_in_time_is_stopped_with_the_log_tail(tmp_path: Path) -> None:
    """Stands for the hang a missing library causes: start() gives up at its timeout."""
    model_py = (SAMPLE_MODEL_DIR / "1" / "model.py").read_text()
    store = _store_with_model(tmp_path, model_py, enabled=True, count=10)
    server = LocalTriton(
        store, env={"CCS_SAMPLE_BATCH_COST_MS": "2000"}, startup_timeout_s=2.0
    )
    with pytest.raises(TritonStartError) as err:
        server.start()
    message = str(err.value)
    assert "not ready" in message and "after 2s" in message and "log tail" in message
    assert not server.running
    assert _processes_mentioning(store) == [], "no tritonserver or stub left running"


def _processes_mentioning(text: Path | str) -> list[str]:
    """Live processes with `text` in an argument (the server's or a stub's command line)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv[0].endswith(b"pytest") or b"pytest" in b" ".join(argv[:3]):
            continue  # this test run itself
        if any(str(text).encode() in arg for arg in argv):
            found.append(f"{pid}: {b' '.join(argv).decode(errors='replace')}")
    return found


@pytest.mark.triton
def test_run_local_serves_a_sample_says_what_is_local_and_stops_on_sigterm() -> None:
    import signal
    import subprocess
    import sys
    import urllib.request

    from serving_image.local import free_ports

    http, grpc, metrics = free_ports(3)
    proc = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "serving_image" / "run-local"),
            "-f",
            str(ROOT / "samples" / "claude-code.yaml"),
            f"--http-port={http}",
            f"--grpc-port={grpc}",
            f"--metrics-port={metrics}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if "run-local: ready" in line or len(lines) > 50:
                break
        output = "".join(lines)
        assert "run-local: ready" in output, output
        assert "LOCAL ONLY: instance group KIND_GPU x2 runs as KIND_CPU x2" in output
        assert "LOCAL ONLY: platform pytorch_libtorch is served by the Python-backend" in output
        url = f"http://127.0.0.1:{http}/v2/models/claude_code/ready"
        with urllib.request.urlopen(url, timeout=5) as response:
            assert response.status == 200
        scrape = f"http://127.0.0.1:{metrics}/metrics"
        with urllib.request.urlopen(scrape, timeout=5) as response:
            assert b"nv_inference_queue_duration_us" in response.read()
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, rest
        assert "run-local: stopping" in rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    # The server and its stubs went with it (run-local waits for them before it exits).
    assert _processes_mentioning(f"--http-port={http}") == [], output
