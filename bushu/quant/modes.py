"""The modes other than static INT8 (dynamic, weight-only INT8, INT4, FP16): no calibration; each result is
verified against the float model on held-out feeds (or one synthesized feed) and timed on the target engine."""

from __future__ import annotations

import itertools
from collections.abc import Iterable

import onnx_ir as ir

from .. import ir as bir
from ..engines.base import model_specs
from ..inputs import Feed, check_feed, synthesize
from .budget import accuracy
from .convert import clone
from .dynamic import dynamic
from .fp16 import fp16
from .prepare import check_float, prepare
from .result import QuantizeResult
from .spec import QuantConfig
from .speed import measure_speed
from .static import run_all
from .weight_only import int4, int8

INT4_OPSET = 21


def quantize_mode(model: ir.Model, data: Iterable[Feed] | None, config: QuantConfig, *,
                  heldout: list[Feed] | None = None, source: str = "model") -> QuantizeResult:
    check_float(model)
    specs = model_specs(model)[0]
    feeds = heldout or (list(itertools.islice(data, config.heldout)) if data is not None else [])
    if not feeds:
        feeds = [synthesize(specs)]
    for i, f in enumerate(feeds):
        check_feed(f, specs, source=f"feed {i}")
    notes: list[str] = []
    kw = dict(include=config.include, exclude=config.exclude)
    if config.mode == "fp16":
        base, notes = model, ["fp16 with float32 inputs/outputs; ops kept in float32: see bushu.quant.fp16.BLOCK_LIST"]
        q, layers, reasons = fp16(model), 0, {}
    else:
        base, notes = prepare(model)
        if config.mode == "int4":
            q, p = int4(bir.convert_opset(clone(base), INT4_OPSET), config.block_size, **kw)
            notes.append(f"opset {INT4_OPSET} for block-wise int4 DequantizeLinear (block {config.block_size})")
        elif config.mode == "dynamic":
            q, p = dynamic(clone(base), **kw)
        else:
            q, p = int8(clone(base), config.preset, **kw)
        layers, reasons = len(p.weights), dict(p.reasons)
    acc = accuracy(run_all(base, feeds), run_all(q, feeds, config.engine))
    speed = measure_speed(base, q, feeds[0], engine=config.engine) if config.measure_speed else None
    return QuantizeResult(source=source, mode=config.mode, engine=config.preset.name, method="none",
                          quantized_layers=layers, float_layers=reasons, notes=tuple(notes), calibration_samples=0,
                          accuracy=acc, speed=speed, model=q)
