"""The GPU-memory leak alert, proven with the real `promtool test rules` on synthetic series.

A steady climb fires; a model load (a step, then a plateau), a wobbling allocator cache and
a slow benign growth that would take days to fill the GPU do not.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from e2e.prometheus import ensure_binary

pytestmark = pytest.mark.prometheus

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "serving_image" / "prometheus" / "gpu-memory-leak.rules.yaml"
GB = 1_000_000_000
TOTAL = 16 * GB
ALERT = "TritonGPUMemoryLeak"


def _promtool() -> str:
    prometheus = Path(ensure_binary())
    promtool = shutil.which("promtool") or str(prometheus.with_name("promtool"))
    assert Path(promtool).exists(), "promtool ships with prometheus"
    return promtool


def _series(pod: str, values: str) -> list[dict[str, str]]:
    labels = f'gpu_uuid="GPU-{pod}",pod="{pod}"'
    return [
        {"series": f"nv_gpu_memory_used_bytes{{{labels}}}", "values": values},
        {"series": f"nv_gpu_memory_total_bytes{{{labels}}}", "values": f"{TOTAL}+0x300"},
    ]


def test_rules_file_is_valid() -> None:
    result = subprocess.run(
        [_promtool(), "check", "rules", str(RULES)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_leak_fires_and_load_steps_wobble_and_slow_growth_do_not(tmp_path: Path) -> None:
    wobble = " ".join(str(10 * GB + (50_000_000 if i % 2 else 0)) for i in range(301))
    series = [
        # +20 MB per minute from 10 GB: full (16 GB) in 5 hours.
        *_series("leak", f"{10 * GB}+20000000x300"),
        # A model load: 2 GB, then 14 GB at minute 30, flat afterwards.
        *_series("load", f"{2 * GB}+0x29 {14 * GB}+0x270"),
        # An allocator cache going up and down by 50 MB.
        *_series("wobble", wobble),
        # +1 MB per minute from 4 GB: would take 8 days to fill the GPU.
        *_series("slow", f"{4 * GB}+1000000x300"),
    ]
    leak_alert = {
        "exp_labels": {
            "alertname": "TritonGPUMemoryLeak",
            "severity": "warning",
            "gpu_uuid": "GPU-leak",
            "pod": "leak",
        },
        "exp_annotations": {
            "summary": "GPU GPU-leak memory keeps growing on leak",
            "description": yaml.safe_load(RULES.read_text())["groups"][0]["rules"][0][
                "annotations"
            ]["description"],
        },
    }
    tests = {
        "rule_files": [str(RULES)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": series,
                "alert_rule_test": [
                    # Too early: an hour of history is needed before anything can fire.
                    {"eval_time": "50m", "alertname": ALERT, "exp_alerts": []},
                    # Only the leak, never the load step, the wobble or the slow growth.
                    {"eval_time": "2h", "alertname": ALERT, "exp_alerts": [leak_alert]},
                    {"eval_time": "4h", "alertname": ALERT, "exp_alerts": [leak_alert]},
                ],
            }
        ],
    }
    test_file = tmp_path / "leak-test.yaml"
    test_file.write_text(yaml.safe_dump(tests, sort_keys=False))
    result = subprocess.run(
        [_promtool(), "test", "rules", str(test_file)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
