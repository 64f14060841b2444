"""Pure: ServiceSpec -> Triton model configuration (config.pbtxt).

Built with Triton's own protobuf schema (model_config_pb2) and serialised with text_format,
so the output is exactly what Triton parses: no string pasting, and a field Triton does not
know cannot be emitted.
"""

from __future__ import annotations

import hashlib

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as pb

from .api import ServiceSpec, Tensor

# Platforms Triton names by `backend` rather than `platform` in config.pbtxt.
_BACKEND_FOR_PLATFORM = {"python": "python", "openvino": "openvino"}


def _tensor_input(tensor: Tensor) -> pb.ModelInput:
    return pb.ModelInput(
        name=tensor.name, data_type=pb.DataType.Value(tensor.data_type), dims=list(tensor.dims)
    )


def _tensor_output(tensor: Tensor) -> pb.ModelOutput:
    return pb.ModelOutput(
        name=tensor.name, data_type=pb.DataType.Value(tensor.data_type), dims=list(tensor.dims)
    )


def _version_policy(spec: ServiceSpec) -> pb.ModelVersionPolicy:
    policy = spec.model.version_policy
    if policy.policy == "All":
        return pb.ModelVersionPolicy(all=pb.ModelVersionPolicy.All())
    if policy.policy == "Specific":
        return pb.ModelVersionPolicy(
            specific=pb.ModelVersionPolicy.Specific(versions=list(policy.versions))
        )
    return pb.ModelVersionPolicy(
        latest=pb.ModelVersionPolicy.Latest(num_versions=policy.num_versions)
    )


def _dynamic_batching(spec: ServiceSpec) -> pb.ModelDynamicBatching:
    batching = spec.batching
    dynamic = pb.ModelDynamicBatching(
        preferred_batch_size=list(batching.preferred_batch_sizes),
        max_queue_delay_microseconds=batching.max_queue_delay_microseconds,
        preserve_ordering=batching.preserve_ordering,
    )
    if batching.queue_policy is not None:
        queue = batching.queue_policy
        dynamic.default_queue_policy.CopyFrom(
            pb.ModelQueuePolicy(
                timeout_action=pb.ModelQueuePolicy.TimeoutAction.Value(queue.timeout_action),
                default_timeout_microseconds=queue.timeout_microseconds,
                allow_timeout_override=queue.allow_timeout_override,
                max_queue_size=queue.max_queue_size,
            )
        )
    return dynamic


def _warmup(spec: ServiceSpec) -> pb.ModelWarmup:
    warmup = spec.model.warmup
    inputs = {
        tensor.name: pb.ModelWarmup.Input(
            data_type=pb.DataType.Value(tensor.data_type),
            # Variable dimensions become 1: the smallest real request.
            dims=[1 if d == -1 else d for d in tensor.dims],
            zero_data=True,
        )
        for tensor in spec.model.inputs
    }
    return pb.ModelWarmup(
        name="ccs_warmup", batch_size=warmup.batch_size, inputs=inputs, count=warmup.count
    )


def build_model_config(spec: ServiceSpec) -> pb.ModelConfig:
    """The Triton ModelConfig for a service, with dynamic batching as configured."""
    config = pb.ModelConfig(
        name=spec.model.name,
        max_batch_size=spec.batching.max_batch_size,
        input=[_tensor_input(t) for t in spec.model.inputs],
        output=[_tensor_output(t) for t in spec.model.outputs],
        version_policy=_version_policy(spec),
        instance_group=[
            pb.ModelInstanceGroup(
                count=group.count,
                kind=pb.ModelInstanceGroup.Kind.Value(group.kind),
                gpus=list(group.gpus),
            )
            for group in spec.instance_groups
        ],
    )
    backend = _BACKEND_FOR_PLATFORM.get(spec.model.platform)
    if backend is not None:
        config.backend = backend
    else:
        config.platform = spec.model.platform
    if spec.batching.enabled:
        config.dynamic_batching.CopyFrom(_dynamic_batching(spec))
    if spec.model.warmup.enabled:
        config.model_warmup.append(_warmup(spec))
    return config


def render_config_pbtxt(spec: ServiceSpec) -> str:
    """config.pbtxt text for the service's model."""
    return text_format.MessageToString(build_model_config(spec))


def parse_config_pbtxt(text: str) -> pb.ModelConfig:
    """Parse config.pbtxt text back into a ModelConfig (Triton's own parser does the same)."""
    return text_format.Parse(text, pb.ModelConfig())


def config_hash(config_pbtxt: str) -> str:
    """Short content hash of the config, put on the pod template so a change rolls pods."""
    return hashlib.sha256(config_pbtxt.encode()).hexdigest()[:16]
