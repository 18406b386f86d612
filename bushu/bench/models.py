"""Model arguments as the performance commands take them: an ONNX path, an ``ir.Model``, or a zoo name.

A zoo name (``ppocr-rec``) or the path of an installed zoo model brings the input shapes and values the model
needs (:data:`bushu.zoo.MODELS`), which the caller's own ``shapes``/``values`` override.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import onnx_ir as ir

from .. import zoo
from ..errors import BushuError


@dataclasses.dataclass(frozen=True)
class ModelRef:
    source: ir.Model | str  # what an engine opens
    label: str  # how results name it
    shapes: dict
    values: dict


def _zoo_name(path: Path) -> str | None:
    for name in zoo.MODELS:
        try:
            if zoo.path(name).resolve() == path.resolve():
                return name
        except BushuError:  # that zoo package is not installed
            continue
    return None


def resolve(model: ir.Model | str | os.PathLike, shapes: dict | None = None, values: dict | None = None) -> ModelRef:
    """What to open and which synthesized-input defaults to use for ``model``."""
    shapes, values = dict(shapes or {}), dict(values or {})
    if isinstance(model, ir.Model):
        p = model.meta.get("bushu.path")
        return ModelRef(model, str(p) if p else (model.graph.name or "model"), shapes, values)
    path = Path(model)
    name = None
    if not path.exists():
        if str(model) not in zoo.MODELS:
            raise BushuError(f"no such model file: {model} (or give a zoo model: {', '.join(zoo.MODELS)})")
        name, path = str(model), zoo.path(str(model))
    else:
        name = _zoo_name(path)
    if name:
        shapes = {**zoo.MODELS[name].shapes, **shapes}
        values = {**zoo.MODELS[name].values, **values}
    return ModelRef(str(path), name or str(model), shapes, values)
