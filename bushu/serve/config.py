"""A served model's configuration: Triton's ``config.pbtxt`` plus a small ``bushu.toml`` beside it.

The configuration *is* Triton's ``ModelConfig`` message (the schema generated in ``tritonclient.grpc``), parsed with
protobuf's text format, so a Triton repository's config means here what it means in Triton. What Triton's config
can't say -- which engine, how many threads, the optimization level -- goes in ``bushu.toml``::

    [bushu]
    engine = "openvino"
    threads = 1

Where no ``config.pbtxt`` exists, or it leaves inputs/outputs/max_batch_size out, :func:`complete` fills them in from
the model the way Triton's auto-complete does: a model whose every input and output has a dynamic first dimension
batches (``max_batch_size = defaults.max_batch_size``, with dynamic batching), other models don't.
"""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

from ..engines.base import TensorSpec
from ..errors import BushuError

# ModelConfig data_type <-> KServe v2 datatype
_TYPES = {"TYPE_BOOL": "BOOL", "TYPE_UINT8": "UINT8", "TYPE_UINT16": "UINT16", "TYPE_UINT32": "UINT32",
          "TYPE_UINT64": "UINT64", "TYPE_INT8": "INT8", "TYPE_INT16": "INT16", "TYPE_INT32": "INT32",
          "TYPE_INT64": "INT64", "TYPE_FP16": "FP16", "TYPE_FP32": "FP32", "TYPE_FP64": "FP64",
          "TYPE_STRING": "BYTES", "TYPE_BF16": "BF16"}
_FROM_NUMPY = {"bool": "BOOL", "uint8": "UINT8", "uint16": "UINT16", "uint32": "UINT32", "uint64": "UINT64",
               "int8": "INT8", "int16": "INT16", "int32": "INT32", "int64": "INT64", "float16": "FP16",
               "float32": "FP32", "float64": "FP64", "object": "BYTES", "bfloat16": "BF16"}
# int64 fields protobuf's JSON writes as strings; Triton writes them as numbers and perf_analyzer reads numbers
_INT64_KEYS = {"dims", "max_queue_delay_microseconds", "default_timeout_microseconds",
               "max_sequence_idle_microseconds", "priority_levels", "default_priority_level", "versions"}


def pb():
    """Triton's generated ``model_config_pb2`` (ships in ``tritonclient[grpc]``)."""
    from ..errors import require

    return require("tritonclient.grpc.model_config_pb2", extra="serve", feature="bushu serve")


@dataclasses.dataclass(frozen=True)
class ModelDefaults:
    """What a model gets when its configuration doesn't say: the engine and its threads, the batch size for
    auto-completed models, dynamic batching's queue delay, instances, and the queue bound (overload answers 503)."""

    engine: str = "ort"
    threads: int | None = None
    opt_level: str = "all"
    max_batch_size: int = 8
    max_queue_delay_us: int = 0
    instances: int = 1
    max_queue_size: int = 256


@dataclasses.dataclass(frozen=True)
class EngineSection:
    """The ``[bushu]`` section of ``bushu.toml``."""

    engine: str
    threads: int | None
    opt_level: str


def datatype(config_type: int) -> str:
    """The KServe v2 datatype (``FP32``) of a ``ModelConfig`` DataType enum value."""
    return _TYPES.get(pb().DataType.Name(config_type), "BYTES")


def config_type(spec_dtype: str) -> int:
    name = _FROM_NUMPY.get(spec_dtype)
    if name is None:
        raise BushuError(f"can't serve a tensor of type {spec_dtype}")
    rev = {v: k for k, v in _TYPES.items()}
    return pb().DataType.Value(rev[name])


def read_config(model_dir: Path, name: str):
    """Parse ``model_dir/config.pbtxt`` (an empty ``ModelConfig`` when absent); the name is always the folder's."""
    from google.protobuf import text_format

    cfg = pb().ModelConfig()
    path = model_dir / "config.pbtxt"
    if path.is_file():
        try:
            text_format.Parse(path.read_text(), cfg)
        except text_format.ParseError as e:
            raise BushuError(f"{path}: {e}: fix the file (it is Triton's ModelConfig in protobuf text format)") from None
    if cfg.name and cfg.name != name:
        raise BushuError(f"{path} names the model '{cfg.name}' but its folder is '{name}': make them the same")
    cfg.name = name
    return cfg


def read_engine_section(model_dir: Path, defaults: ModelDefaults) -> EngineSection:
    path = model_dir / "bushu.toml"
    sec = {}
    if path.is_file():
        try:
            sec = tomllib.loads(path.read_text()).get("bushu", {})
        except tomllib.TOMLDecodeError as e:
            raise BushuError(f"{path}: {e}: fix the TOML") from None
        unknown = set(sec) - {"engine", "threads", "opt_level"}
        if unknown:
            raise BushuError(f"{path}: unknown keys {sorted(unknown)} in [bushu]: use engine, threads, opt_level")
    return EngineSection(sec.get("engine", defaults.engine), sec.get("threads", defaults.threads),
                         sec.get("opt_level", defaults.opt_level))


def _dims(shape) -> list[int]:
    return [d if isinstance(d, int) else -1 for d in shape]


def complete(cfg, inputs: list[TensorSpec], outputs: list[TensorSpec], defaults: ModelDefaults, *,
             configured: bool) -> None:
    """Fill what ``cfg`` leaves out from the session's signature, in place. Sequence state inputs/outputs are
    the server's, not the client's, so they are left out of ``input``/``output``."""
    state_in = {s.input_name for s in cfg.sequence_batching.state}
    state_out = {s.output_name for s in cfg.sequence_batching.state}
    user_in = [s for s in inputs if s.name not in state_in]
    user_out = [s for s in outputs if s.name not in state_out]
    batchable = all(s.shape and not isinstance(s.shape[0], int) for s in user_in + user_out)
    if not configured and batchable and not cfg.HasField("sequence_batching"):
        cfg.max_batch_size = defaults.max_batch_size
        cfg.dynamic_batching.max_queue_delay_microseconds = defaults.max_queue_delay_us
    if cfg.HasField("dynamic_batching") and not cfg.dynamic_batching.default_queue_policy.max_queue_size:
        cfg.dynamic_batching.default_queue_policy.max_queue_size = defaults.max_queue_size
    skip = 1 if cfg.max_batch_size > 0 else 0
    if not cfg.input:
        for s in user_in:
            cfg.input.add(name=s.name, data_type=config_type(s.dtype), dims=_dims(s.shape or ())[skip:])
    if not cfg.output:
        for s in user_out:
            cfg.output.add(name=s.name, data_type=config_type(s.dtype), dims=_dims(s.shape or ())[skip:])
    if not cfg.instance_group:
        cfg.instance_group.add(count=defaults.instances, kind=pb().ModelInstanceGroup.KIND_CPU)
    if not cfg.platform and not cfg.backend:
        cfg.platform, cfg.backend = "onnxruntime_onnx", "onnxruntime"
    names_in, names_out = {s.name for s in inputs}, {s.name for s in outputs}
    for t in cfg.input:
        if t.name not in names_in:
            raise BushuError(f"config.pbtxt of '{cfg.name}' lists input '{t.name}' that the model doesn't have "
                             f"(it has {', '.join(sorted(names_in))})")
    for t in cfg.output:
        if t.name not in names_out:
            raise BushuError(f"config.pbtxt of '{cfg.name}' lists output '{t.name}' that the model doesn't have "
                             f"(it has {', '.join(sorted(names_out))})")


def instance_count(cfg) -> int:
    return max(1, sum(g.count or 1 for g in cfg.instance_group))


def _numbers(obj):
    if isinstance(obj, dict):
        return {k: ([int(x) for x in v] if isinstance(v, list) else int(v)) if k in _INT64_KEYS and
                not isinstance(v, dict) else _numbers(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_numbers(v) for v in obj]
    return obj


def config_json(cfg) -> dict:
    """The configuration as Triton's ``/config`` answers it: every field present, int64 as numbers."""
    from google.protobuf import json_format

    return _numbers(json_format.MessageToDict(cfg, preserving_proto_field_name=True,
                                              always_print_fields_with_no_presence=True))
