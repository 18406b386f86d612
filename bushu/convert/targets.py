"""The converters by target name, and conversion into the content-keyed cache (what the ncnn/MNN engines use)."""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import onnx_ir as ir

from ..engines.base import TensorSpec, model_specs
from ..errors import BushuError
from . import cache

TARGETS = {"ncnn": "bushu.convert.ncnn", "mnn": "bushu.convert.mnn", "openvino": "bushu.convert.openvino"}
# converters that fix input shapes: the shapes become part of the cache key
SHAPE_FIXING = {"ncnn"}


def converter(target: str):
    if target not in TARGETS:
        raise BushuError(f"unknown conversion target '{target}': choose one of {', '.join(TARGETS)}")
    return importlib.import_module(TARGETS[target])


def onnx_bytes(model: ir.Model | str | os.PathLike) -> tuple[ir.Model, bytes]:
    from .. import ir as bir

    m = bir.load(model) if isinstance(model, (str, os.PathLike)) else model
    return m, bir.to_bytes(m)


def convert_into(data: bytes, target: str, out_dir: Path, specs: Sequence[TensorSpec], shapes: Mapping | None,
                 values: Mapping | None = None) -> list[Path]:
    """Write the ONNX ``data`` beside the converter's output and convert it; the ONNX copy is removed after.
    ``values`` binds scalar inputs where the converter needs them constant (ncnn)."""
    mod = converter(target)
    src = out_dir / "source.onnx"
    src.write_bytes(data)
    try:
        return mod.convert(src, out_dir, specs, shapes, values)
    finally:
        src.unlink(missing_ok=True)


def cached(model: ir.Model | str | os.PathLike, target: str, shapes: Mapping | None = None,
           values: Mapping | None = None) -> tuple[Path, ir.Model]:
    """The cache folder holding ``model`` converted to ``target`` (converted on first use). ``values`` binds
    scalar inputs for ncnn (part of the key)."""
    m, data = onnx_bytes(model)
    mod = converter(target)
    specs, _ = model_specs(m)
    settings = {"converter": mod.version()}
    if target in SHAPE_FIXING:
        from .ncnn import two_shapes

        settings["shapes"] = two_shapes(specs, shapes)
        scalars = {s.name: (values or {}).get(s.name) for s in specs if s.shape == ()}
        if scalars:
            settings["scalars"] = scalars
    entry = cache.key(data, target, settings)
    folder = cache.get_or_create(target, entry, lambda tmp: convert_into(data, target, tmp, specs, shapes, values))
    return folder, m
