"""``bushu.quantize``: post-training quantization to an accuracy budget, with per-layer diagnosis and measured
speed on the target engine.

    import bushu
    from bushu.quant import QuantConfig
    result = bushu.quantize("model.onnx", calibration_feeds, QuantConfig(engine="ort", budget="cosine>=0.99"))
    bushu.save(result.model, "model.int8.onnx")
    print(result.render())

Calibration data is any iterable of feeds (dicts of input name → array), a folder of .npz/.npy feeds, or a folder
of images with an :class:`~bushu.quant.data.ImagePreprocess`; it is streamed. Policy (which tensors, per engine:
:mod:`.spec`, :mod:`.annotate`) is apart from mechanism (:mod:`.calibrate`, :mod:`.convert`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

import onnx_ir as ir

from .. import ir as bir
from ..engines.base import model_specs
from ..errors import BushuError
from ..run import model_name
from .data import ImagePreprocess, feeds
from .prepare import check_selection
from .result import QuantizeResult
from .spec import PRESETS, QuantConfig

__all__ = ["PRESETS", "ImagePreprocess", "QuantConfig", "QuantizeResult", "quantize"]


def quantize(model: ir.Model | str | os.PathLike, calibration_data=None, config: QuantConfig | Mapping | None = None, *,
             heldout=None, preprocess: ImagePreprocess | None = None, output: str | os.PathLike | None = None,
             force: bool = False, **overrides) -> QuantizeResult:
    """Quantize ``model`` (an ``ir.Model`` or a path; never modified) and return a :class:`QuantizeResult` whose
    ``model`` is the quantized ``ir.Model``; with ``output`` it is also saved there (atomically; an existing input
    is not overwritten without ``force``).

    ``calibration_data``: see the module docstring; static INT8 needs it, the other modes use its first feed (or a
    synthesized one) only to verify and time the result. ``heldout``: feeds to measure accuracy on (default: the
    first ``config.heldout`` calibration feeds). Keyword ``overrides`` replace fields of ``config``.
    """
    src = bir.source_path(model) if isinstance(model, ir.Model) else Path(model).resolve()
    if output is not None and src is not None and Path(output).resolve() == src and not force:
        # checked before the work: the quantized model no longer remembers the file it came from
        raise BushuError(f"refusing to overwrite the input {output}: choose another -o path or pass --force")
    config = _config(config)
    if overrides:
        config = config.replace(**overrides)
    m = bir.load(model) if isinstance(model, (str, os.PathLike)) else model
    name = model_name(model if isinstance(model, (str, os.PathLike)) else m)
    check_selection(m, config.include, config.exclude)
    specs = model_specs(m)[0]
    held = None
    if heldout is not None:
        held_iter, _ = feeds(heldout, specs, preprocess)
        held = [dict(f) for f in held_iter]
    if config.mode == "static":
        from .pipeline import build_static, place

        def build(cfg: QuantConfig):
            data, total = feeds(calibration_data, specs, preprocess)
            return build_static(m, data, cfg, total=total, heldout=held, source=name)

        # verified on the target engine; of the placements it computes right, the fastest there is kept
        one_shot = isinstance(calibration_data, Iterator)  # a generator: calibrated on once, can't retry
        result = place(config, build, reiterable=not one_shot)
    else:
        from .modes import quantize_mode

        data = feeds(calibration_data, specs, preprocess)[0] if calibration_data is not None else None
        result = quantize_mode(m, data, config, heldout=held, source=name)
    if output is not None:
        result = dataclasses.replace(result, saved_to=str(bir.save(result.model, output, force=True)))
    return result


def _config(config) -> QuantConfig:
    """``config`` as a :class:`QuantConfig`: None is the defaults, a mapping (read from YAML/JSON) its fields."""
    if config is None or isinstance(config, QuantConfig):
        return config or QuantConfig()
    if isinstance(config, Mapping):
        fields = {f.name for f in dataclasses.fields(QuantConfig)}
        unknown = sorted(set(config) - fields)
        if unknown:
            raise BushuError(f"unknown quantization setting(s) {', '.join(map(str, unknown))}: use fields of "
                             f"QuantConfig ({', '.join(sorted(fields))})")
        return QuantConfig(**config)
    raise BushuError(f"config must be a QuantConfig or a mapping of its fields, not {type(config).__name__}")
