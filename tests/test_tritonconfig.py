"""config.pbtxt is built with Triton's schema and parses back to the same values."""

from __future__ import annotations

from tritonclient.grpc import model_config_pb2 as pb

from ccs_operator.core.api import parse_service
from ccs_operator.core.tritonconfig import (
    build_model_config,
    config_hash,
    parse_config_pbtxt,
    render_config_pbtxt,
)

from helpers import minimal_service


def _config(**spec: object) -> pb.ModelConfig:
    return parse_config_pbtxt(render_config_pbtxt(parse_service(minimal_service(**spec)).spec))


def test_write_up_config_round_trips() -> None:
    spec = parse_service(minimal_service()).spec
    text = render_config_pbtxt(spec)
    config = parse_config_pbtxt(text)
    assert config == build_model_config(spec)
    assert config.name == "claude_code"
    assert config.platform == "pytorch_libtorch"
    assert config.max_batch_size == 32
    assert [(i.name, i.data_type, list(i.dims)) for i in config.input] == [
        ("input_ids", pb.TYPE_INT32, [-1])
    ]
    assert [(o.name, o.data_type, list(o.dims)) for o in config.output] == [
        ("output", pb.TYPE_FP32, [-1, 50257])
    ]
    assert [(g.count, g.kind) for g in config.instance_group] == [
        (2, pb.ModelInstanceGroup.KIND_GPU)
    ]
    assert config.HasField("dynamic_batching")
    assert config.dynamic_batching.max_queue_delay_microseconds == 2000


def test_queue_policy_is_the_degradation_path() -> None:
    config = _config(batching={
        "preferredBatchSizes": [8, 16],
        "queuePolicy": {"maxQueueSize": 64, "timeoutMicroseconds": 500000,
                        "timeoutAction": "REJECT", "allowTimeoutOverride": True},
    })
    policy = config.dynamic_batching.default_queue_policy
    assert list(config.dynamic_batching.preferred_batch_size) == [8, 16]
    assert policy.max_queue_size == 64
    assert policy.default_timeout_microseconds == 500000
    assert policy.timeout_action == pb.ModelQueuePolicy.REJECT
    assert policy.allow_timeout_override


def test_batching_disabled_has_no_dynamic_batcher() -> None:
    config = _config(batching={"enabled": False, "maxBatchSize": 8})
    assert not config.HasField("dynamic_batching")
    assert config.max_batch_size == 8


def test_python_platform_is_a_backend() -> None:
    config = _config(model={"name": "m", "repository": "/m", "platform": "python"})
    assert config.backend == "python" and config.platform == ""


def test_version_policies() -> None:
    model = {"name": "m", "repository": "/m"}
    assert _config(model={**model, "versionPolicy": {"policy": "All"}}).version_policy.HasField(
        "all"
    )
    specific = _config(model={**model, "versionPolicy": {"policy": "Specific", "versions": [3, 5]}})
    assert list(specific.version_policy.specific.versions) == [3, 5]


def test_warmup_samples_follow_declared_inputs() -> None:
    config = _config(model={"name": "m", "repository": "/m",
                            "warmup": {"enabled": True, "batchSize": 4, "count": 2}})
    (warmup,) = config.model_warmup
    assert warmup.batch_size == 4 and warmup.count == 2
    sample = warmup.inputs["input_ids"]
    assert sample.data_type == pb.TYPE_INT32 and list(sample.dims) == [1] and sample.zero_data


def test_hostile_model_name_cannot_escape_the_string() -> None:
    text = render_config_pbtxt(
        parse_service(minimal_service(model={"name": "a.b-c_d", "repository": '/x"\n}'})).spec
    )
    assert parse_config_pbtxt(text).name == "a.b-c_d"


def test_config_hash_changes_with_content() -> None:
    assert config_hash("a") != config_hash("b")
    assert config_hash("a") == config_hash("a")
