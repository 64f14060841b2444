"""Pure: ServiceSpec -> Triton model configuration (config.pbtxt).

Built with Triton's own protobuf schema (model_config_pb2) and serialised with text_format,
so the output is exactly what Triton parses: no string pasting, and a field Triton does not
know cannot be emitted.
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from google.protobuf import text_format

from ccs_operator.core.api import ServiceSpec, Tensor

_PB2 = "tritonclient.grpc.model_config_pb2"


def _model_config_pb2() -> ModuleType:
    """Triton's schema module alone: `tritonclient.grpc`'s package init pulls in grpc and
    numpy (~28 MB of the operator's resident memory) that the operator never uses. The module
    is registered under its own name, so a later `import tritonclient.grpc` reuses it."""
    if _PB2 in sys.modules:
        return sys.modules[_PB2]
    package = importlib.util.find_spec("tritonclient")
    if package is None or not package.submodule_search_locations:
        raise ImportError("tritonclient is not installed")
    path = Path(package.submodule_search_locations[0]) / "grpc" / "model_config_pb2.py"
    spec = importlib.util.spec_from_file_location(_PB2, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[_PB2] = module
    spec.loader.exec_module(module)
    return module


pb = _model_config_pb2()

# Platforms Triton names by `backend` rather than `platform` in config.pbtxt.
_BACKEND_FOR_PLATFORM = {"python": "python", "openvino": "openvino"}


def _tensor_input(tensor: Tensor) -> Any:
    return pb.ModelInput(
        name=tensor.name, data_type=pb.DataType.Value(tensor.data_type), dims=list(tensor.dims)
    )


def _tensor_output(tensor: Tensor) -> Any:
    return pb.ModelOutput(
        name=tensor.name, data_type=pb.DataType.Value(tensor.data_type), dims=list(tensor.dims)
    )


def _version_policy(spec: ServiceSpec) -> Any:
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


def _dynamic_batching(spec: ServiceSpec) -> Any:
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


def _warmup(spec: ServiceSpec) -> Any:
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


def build_model_config(spec: ServiceSpec) -> Any:
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


def parse_config_pbtxt(text: str) -> Any:
    """Parse config.pbtxt text back into a ModelConfig (Triton's own parser does the same)."""
    return text_format.Parse(text, pb.ModelConfig())


def config_hash(config_pbtxt: str) -> str:
    """Short content hash of the config, put on the pod template so a change rolls pods."""
    return hashlib.sha256(config_pbtxt.encode()).hexdigest()[:16]
