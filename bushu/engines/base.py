"""The one small Protocol every engine sits behind.

An :class:`Engine` loads a model with :class:`EngineOptions` into a :class:`Session`; a session knows its input and
output :class:`TensorSpec` and runs ``feeds -> {output name: ndarray}``. One file per engine, heavy imports lazy.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Protocol, Union, runtime_checkable

import numpy as np
import onnx_ir as ir

Dim = Union[int, str, None]


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """A graph input or output: name, numpy dtype name (``float32``, ``int64``, ``object`` for strings), shape.

    Shape entries are ints for static dims, strings for symbolic dims, ``None`` for unknown ones; ``shape`` is
    ``None`` when the rank itself is unknown.
    """

    name: str
    dtype: str
    shape: tuple[Dim, ...] | None

    def __str__(self) -> str:
        dims = "?" if self.shape is None else "x".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.name}: {self.dtype}[{dims}]"

    @property
    def is_static(self) -> bool:
        return self.shape is not None and all(isinstance(d, int) for d in self.shape)


@dataclasses.dataclass(frozen=True)
class EngineOptions:
    """Options every engine understands (an engine ignores what it can't apply).

    ``opt_level``: ``disable|basic|extended|all`` (ONNX Runtime's graph optimization levels; other engines map it
    as close as they can). ``shapes`` binds dynamic dims for engines that need static shapes. ``providers`` picks
    ONNX Runtime execution providers (``cpu``, ``cuda``, ``tensorrt``). ``spin=False`` stops idle worker threads
    from spinning, which matters when several sessions share a process (a server). ``values`` gives scalar inputs'
    values to engines that must fix them when they convert the model (ncnn: pnnx takes no scalar inputs).
    """

    threads: int | None = None
    opt_level: str = "all"
    shapes: Mapping[str, tuple[int, ...]] = dataclasses.field(default_factory=dict)
    providers: tuple[str, ...] = ()
    spin: bool = True
    profile: bool = False
    values: Mapping[str, object] = dataclasses.field(default_factory=dict)


@runtime_checkable
class Session(Protocol):
    engine: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]

    def run(self, feeds: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Run once; ``outputs`` selects (and orders) the outputs returned, all of them by default."""
        ...


@runtime_checkable
class Engine(Protocol):
    name: str
    extra: str  # the pip extra that provides it

    def available(self) -> bool: ...

    def load(self, model: ir.Model | str, options: EngineOptions) -> Session: ...


_DTYPES = {
    ir.DataType.FLOAT: "float32",
    ir.DataType.FLOAT16: "float16",
    ir.DataType.DOUBLE: "float64",
    ir.DataType.BFLOAT16: "bfloat16",
    ir.DataType.INT8: "int8",
    ir.DataType.INT16: "int16",
    ir.DataType.INT32: "int32",
    ir.DataType.INT64: "int64",
    ir.DataType.UINT8: "uint8",
    ir.DataType.UINT16: "uint16",
    ir.DataType.UINT32: "uint32",
    ir.DataType.UINT64: "uint64",
    ir.DataType.BOOL: "bool",
    ir.DataType.STRING: "object",
}


def dtype_name(dt: ir.DataType | None) -> str:
    if dt is None:
        return "unknown"
    return _DTYPES.get(dt, dt.name.lower())


def value_spec(v: ir.Value) -> TensorSpec:
    shape = None
    if v.shape is not None:
        # A negative dim (PP-OCR cls declares -1) means unknown, like an unnamed symbolic dim.
        shape = tuple((d if d >= 0 else None) if isinstance(d, int) else (d.value or None) for d in v.shape)
    return TensorSpec(v.name or "", dtype_name(v.dtype), shape)


def model_specs(model: ir.Model) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """The model's graph inputs (minus those that are initializers) and outputs."""
    inits = set(model.graph.initializers)
    ins = [value_spec(v) for v in model.graph.inputs if v.name not in inits]
    outs = [value_spec(v) for v in model.graph.outputs]
    return ins, outs


def has_external_data(model: ir.Model) -> bool:
    for g in [model.graph, *model.graph.subgraphs()]:
        for v in g.initializers.values():
            if isinstance(v.const_value, ir.ExternalTensor):
                return True
    return False


class ModelFile:
    """A model as something an engine can open: ``bytes`` for small in-memory models, else a file path.

    Use as a context manager; a temporary copy (for large or external-data models) is removed on exit.
    """

    def __init__(self, model: ir.Model | str, *, need_path: bool = False):
        self._model = model
        self._need_path = need_path
        self._tmp: str | None = None

    def __enter__(self) -> bytes | str:
        import os
        import tempfile

        from .. import ir as bir

        if isinstance(self._model, (str, os.PathLike)):
            return str(self._model)
        if isinstance(self._model, bytes) and not self._need_path:  # a model serialized already (one protobuf)
            return self._model
        if not self._need_path and not has_external_data(self._model) and bir.weight_bytes(self._model) < bir.EXTERNAL_DATA_THRESHOLD:
            return bir.to_bytes(self._model)
        self._tmp = tempfile.mkdtemp(prefix="bushu-engine-")
        path = os.path.join(self._tmp, "model.onnx")
        external = has_external_data(self._model) or bir.weight_bytes(self._model) >= bir.EXTERNAL_DATA_THRESHOLD
        bir.save(self._model, path, external_data=external, force=True)
        return path

    def __exit__(self, *exc) -> None:
        if self._tmp:
            import shutil

            shutil.rmtree(self._tmp, ignore_errors=True)
