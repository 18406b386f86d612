"""Engines by name. ``get("ort")`` imports the engine's module only when asked for."""

from __future__ import annotations

import importlib

import onnx_ir as ir

from ..errors import BushuError
from .base import Engine, EngineOptions, Session, TensorSpec, model_specs

# name -> (module, attribute); aliases map to a canonical name
_REGISTRY: dict[str, tuple[str, str]] = {
    "ort": ("bushu.engines.ort", "OrtEngine"),
    "openvino": ("bushu.engines.openvino", "OpenVinoEngine"),
    "reference": ("bushu.engines.reference", "ReferenceEngine"),
    "ncnn": ("bushu.engines.ncnn", "NcnnEngine"),
    "mnn": ("bushu.engines.mnn", "MnnEngine"),
}
_ALIASES = {"onnxruntime": "ort", "ov": "openvino", "ref": "reference"}

__all__ = ["Engine", "EngineOptions", "Session", "TensorSpec", "get", "names", "available", "open_session", "model_specs"]


def names() -> list[str]:
    return list(_REGISTRY)


def get(name: str) -> Engine:
    key = _ALIASES.get(name.lower(), name.lower())
    if key not in _REGISTRY:
        raise BushuError(f"unknown engine '{name}': choose one of {', '.join(_REGISTRY)}")
    mod_name, attr = _REGISTRY[key]
    try:
        mod = importlib.import_module(mod_name)
    except ModuleNotFoundError as e:
        if e.name == mod_name:
            raise BushuError(f"engine '{key}' is not part of this version of bushu") from None
        raise
    return getattr(mod, attr)()


def available() -> list[str]:
    """Names of the engines whose packages are installed."""
    out = []
    for n in _REGISTRY:
        try:
            if get(n).available():
                out.append(n)
        except BushuError:
            continue
    return out


def open_session(model: ir.Model | str, engine: str = "ort", options: EngineOptions | None = None, **kw) -> Session:
    """Load ``model`` (an ``ir.Model`` or a path) on ``engine``; keyword arguments become :class:`EngineOptions`."""
    opts = options if options is not None else EngineOptions(**kw)
    return get(engine).load(model, opts)
