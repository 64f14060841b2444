"""The typed spec: the write-up's defaults, the CRD's defaults, and errors that name fields."""

from __future__ import annotations

import pytest

from ccs_operator.core.api import DEFAULT_IMAGE, SpecError, parse_service, parse_spec

from helpers import apply_structural_defaults, crd_schema, minimal_service


def test_defaults_are_the_write_up_values() -> None:
    spec = parse_service(minimal_service()).spec
    assert spec.model.platform == "pytorch_libtorch"
    assert [(t.name, t.data_type, t.dims) for t in spec.model.inputs] == [
        ("input_ids", "TYPE_INT32", (-1,))
    ]
    assert [(t.name, t.data_type, t.dims) for t in spec.model.outputs] == [
        ("output", "TYPE_FP32", (-1, 50257))
    ]
    assert spec.batching.max_batch_size == 32 and spec.batching.enabled
    assert [(g.count, g.kind) for g in spec.instance_groups] == [(2, "KIND_GPU")]
    assert (spec.replicas.min, spec.replicas.max) == (2, 10)
    assert spec.autoscaling.cpu_utilization == 60
    assert spec.autoscaling.requests_per_second == 1000
    assert spec.ports.http == 8000 and spec.ports.metrics == 8002
    assert spec.image == DEFAULT_IMAGE


@pytest.mark.parametrize(
    "spec",
    [
        {},
        {"batching": {"queuePolicy": {}}},
        {"autoscaling": {"floor": {"prewarm": {"enabled": True}}}},
        {"model": {"name": "m", "repository": "/models", "warmup": {"enabled": True}}},
    ],
)
def test_crd_defaults_agree_with_api_defaults(spec: dict) -> None:
    """An object defaulted by the API server parses to the same spec as the raw object."""
    body = minimal_service(**spec)
    defaulted = apply_structural_defaults(crd_schema()["properties"]["spec"], body["spec"])
    assert defaulted != body["spec"]  # the CRD really defaults something
    assert parse_spec(defaulted) == parse_spec(body["spec"])


@pytest.mark.parametrize(
    ("spec", "path", "words"),
    [
        ({"replicas": {"min": 5, "max": 2}}, "spec.replicas", "min (5) must be <= max (2)"),
        ({"batching": {"preferredBatchSizes": [8, 64]}}, "spec.batching", "maxBatchSize"),
        ({"batching": {"maxBatchSize": 0}}, "spec.batching.maxBatchSize", "greater than"),
        ({"model": {"name": "m", "repository": "http://x"}}, "spec.model", "s3://"),
        ({"model": {"name": "bad name", "repository": "/m"}}, "spec.model.name", "pattern"),
        (
            {"model": {"name": "m", "repository": "/m",
                       "inputs": [{"name": "a", "dataType": "TYPE_INT32", "dims": [0]}]}},
            "spec.model.inputs[0]", "dims",
        ),
        ({"resources": {"gpus": 0}}, "spec", "resources.gpus is 0"),
        ({"ports": {"http": 8001}}, "spec.ports", "different ports"),
        ({"replcas": {}}, "spec.replcas", "unknown field"),
        (
            {"batching": {"queuePolicy": {"timeoutAction": "DELAY"}}},
            "spec.batching.queuePolicy", "timeoutMicroseconds",
        ),
        (
            {"autoscaling": {"floor": {"evaluationIntervalSeconds": 60, "cooldownSeconds": 30}}},
            "spec.autoscaling.floor", "cooldownSeconds",
        ),
        (
            {"autoscaling": {"floor": {"prewarm": {"leadTimeSeconds": 0}}}},
            "spec.autoscaling.floor.prewarm.leadTimeSeconds", "greater than or equal to 1",
        ),
        (
            {"autoscaling": {"floor": {"prewarm": {"leadTimeSeconds": 10}}}},
            "spec.autoscaling.floor", "leadTimeSeconds must be at least evaluationIntervalSeconds",
        ),
        (
            {"autoscaling": {"floor": {"burstCoverPercent": 100}}},
            "spec.autoscaling.floor.burstCoverPercent", "less than or equal to 99",
        ),
    ],
)
def test_invalid_spec_names_the_field(spec: dict, path: str, words: str) -> None:
    with pytest.raises(SpecError) as err:
        parse_service(minimal_service(**spec))
    assert err.value.path == path
    assert words in err.value.message


@pytest.mark.parametrize(
    ("name", "words"),
    [("x" * 51, "at most 50"), ("Upper", "lowercase"), ("9lives", "lowercase"), ("", "required")],
)
def test_bad_names_are_refused(name: str, words: str) -> None:
    body = minimal_service()
    body["metadata"]["name"] = name
    with pytest.raises(SpecError) as err:
        parse_service(body)
    assert err.value.path == "metadata.name"
    assert words in err.value.message


def test_missing_spec_is_a_spec_error() -> None:
    with pytest.raises(SpecError) as err:
        parse_service({"metadata": {"name": "a"}})
    assert err.value.path == "spec"


def test_pvc_repository_accepted() -> None:
    spec = parse_spec({"model": {"name": "m", "repository": "pvc://models-claim/llm/v1"}})
    assert spec.model.repository.startswith("pvc://")
