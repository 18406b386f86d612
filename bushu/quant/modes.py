"""The modes other than static INT8 (dynamic, weight-only INT8, INT4, FP16): no calibration; each result is checked
against the float model on held-out feeds (or one synthesized feed) on the target engine, and timed there.

Per engine (the placement, ``QuantConfig(placement=...)``, default the target engine's):

* ``dynamic`` — ONNX Runtime: ``DynamicQuantizeLinear`` + ``MatMulInteger``, fused into ``DynamicQuantizeMatMul``.
  OpenVINO has no integer kernel for ``MatMulInteger`` (it runs the pattern in FP32: all-MiniLM-L6-v2 0.46× FP32);
  its dynamic quantization is its int8-weight ``FullyConnected``, which quantizes the activations at run time
  (``DYNAMIC_QUANTIZATION_GROUP_SIZE``, 32 by default), so for OpenVINO the file holds int8 weights behind a
  ``DequantizeLinear``.
* ``int4`` — blocked int4 ``DequantizeLinear`` (opset 21) → ``MatMul``: ONNX Runtime fuses it into ``MatMulNBits``,
  OpenVINO compiles it into a ``FullyConnected`` with int4 weights. OpenVINO 2026.4 can't read a blocked
  ``DequantizeLinear`` whose rows are not a whole number of blocks, so for OpenVINO such MatMuls stay float.
* ``weight-only`` (int8 per channel) and ``fp16`` write the same file for both.

On an engine other than ONNX Runtime the file is run there and on ONNX Runtime (:func:`bushu.quant.verify.
engine_check`, as static INT8 is); an engine that can't load the file, or computes it wrong, makes the result falsy
and says so; a file of the other placement is then tried (:func:`bushu.quant.pipeline.fall_back`). The result
names the kernels the target engine runs the weighted layers with (from ONNX Runtime's optimized graph, from
OpenVINO's execution graph) and the weights' size before and after.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
from collections.abc import Iterable

import onnx_ir as ir

from .. import engines
from .. import ir as bir
from ..engines.base import EngineOptions, model_specs
from ..inputs import Feed, check_feed, synthesize
from ..timing import cpu_flags
from .budget import accuracy
from .convert import clone
from .dynamic import dynamic
from .fp16 import BLOCK_LIST, fp16
from .prepare import check_float, prepare
from .result import QuantizeResult
from .spec import QuantConfig, preset
from .speed import measure_speed, ort_optimized
from .static import run_all
from .verify import REFERENCE, engine_check
from .weight_only import int4, int8

INT4_OPSET = 21
# Modes whose file depends on the placement: for them a placement the engine can't run is replaced by the other.
PER_ENGINE = ("dynamic", "int4")
_FP16_FLAGS = {"avx512_fp16", "amx_fp16"}


def quantize_mode(model: ir.Model, data: Iterable[Feed] | None, config: QuantConfig, *,
                  heldout: list[Feed] | None = None, source: str = "model") -> QuantizeResult:
    check_float(model)
    specs = model_specs(model)[0]
    feeds = heldout or (list(itertools.islice(data, config.heldout)) if data is not None else [])
    if not feeds:
        feeds = [synthesize(specs)]
    for i, f in enumerate(feeds):
        check_feed(f, specs, source=f"feed {i}")
    result = _quantize_one(model, feeds, config, source)
    if config.mode in PER_ENGINE:
        from .pipeline import fall_back

        result = fall_back(result, config, lambda cfg: _quantize_one(model, feeds, cfg, source))
    return result


def _build(model: ir.Model, config: QuantConfig, placement: str):
    """(float model the result is compared with, quantized model, weighted layers, layers left float, notes)."""
    kw = {"include": config.include, "exclude": config.exclude}
    if config.mode == "fp16":
        note = (f"fp16 with float32 inputs/outputs; ops kept in float32: {', '.join(sorted(_ops_in(model)))}"
                if _ops_in(model) else "fp16 with float32 inputs/outputs")
        if config.exclude or config.include:
            note += "; " + "; ".join(f"{k} {', '.join(v)}" for k, v in (("kept in float32:", config.exclude),
                                                                        ("converted only:", config.include)) if v)
        return model, fp16(model, **kw), 0, {}, [note]
    # Q/K/V projections merged for ONNX Runtime's dynamic path: one DynamicQuantizeMatMul each instead of a shared
    # DynamicQuantizeLinear and three MatMulIntegerToFloat (all-MiniLM-L6-v2: 42 → 24 kernels, same outputs)
    base, notes = prepare(model, merge_matmuls=config.mode == "dynamic" and placement == "ort")
    if config.mode == "int4":
        whole = placement != "ort"  # OpenVINO 2026.4 reads no partial int4 block
        q, p = int4(bir.convert_opset(clone(base), INT4_OPSET), config.block_size, whole_blocks=whole, **kw)
        notes.append(f"opset {INT4_OPSET} for block-wise int4 DequantizeLinear (block {config.block_size})")
    elif config.mode == "dynamic" and placement == "openvino":
        q, p = int8(clone(base), config.preset, ops=("MatMul",), **kw)
        notes.append("dynamic for OpenVINO: int8 MatMul weights; OpenVINO quantizes the activations at run time in its "
                     "FullyConnected kernel (it has no integer kernel for MatMulInteger)")
    elif config.mode == "dynamic":
        q, p = dynamic(clone(base), **kw)
    else:
        q, p = int8(clone(base), config.preset, **kw)
    return base, q, len(p.weights), dict(p.reasons), notes


def _ops_in(model: ir.Model) -> set[str]:
    return {n.op_type for n in model.graph if n.op_type in BLOCK_LIST}


def _quantize_one(model: ir.Model, feeds: list[Feed], config: QuantConfig, source: str) -> QuantizeResult:
    placement = config.preset.name
    target = preset(config.engine).name
    base, q, layers, reasons, notes = _build(model, config, placement)
    ref = run_all(base, feeds)
    check = None
    if target != REFERENCE:
        check = engine_check(base, q, feeds, config.engine, placement=placement, reference=ref)
    if check is not None and check.error is None:
        acc = check.target  # on the target engine
    else:
        acc = accuracy(ref, run_all(q, feeds, REFERENCE if check is not None else config.engine))
        if check is not None:
            notes.append(f"accuracy measured on {REFERENCE}: {target} can't run this file")
    runs = check is None or check.error is None
    kernels = weighted_kernels(q, target) if runs else {}
    speed = None
    if config.measure_speed and (check is None or check):
        speed = measure_speed(base, q, feeds[0], engine=config.engine)
        if speed.speedup < 1.0:
            speed = dataclasses.replace(speed, reasons=slower_because(config.mode, target, kernels, q) or speed.reasons)
    elif config.measure_speed:
        notes.append(f"not timed: {target} {'computes this file wrong' if runs else 'cannot run this file'}")
    return QuantizeResult(source=source, mode=config.mode, engine=target, method="none", quantized_layers=layers,
                          float_layers=reasons, notes=tuple(notes), calibration_samples=0, accuracy=acc, speed=speed,
                          placement=placement, engine_check=check, kernels=kernels,
                          weight_bytes=(bir.weight_bytes(base), bir.weight_bytes(q)), model=q)


_ORT_WEIGHTED = ("MatMul", "Gemm", "FusedMatMul", "FusedGemm", "Conv", "FusedConv", "ConvTranspose", "NhwcFusedConv")


def weighted_kernels(model: ir.Model, engine: str) -> dict[str, int]:
    """How the engine runs the layers that have weights: ONNX Runtime's kernels in its optimized graph
    (``MatMulNBits``, ``DynamicQuantizeMatMul``, ``MatMul``, a ``float16`` suffix for half precision), OpenVINO's
    layer types with their runtime precision in the compiled model (``FullyConnected i4``)."""
    found: collections.Counter = collections.Counter()
    if engine == "openvino":
        from .speed import _OV_WEIGHTED

        sess = engines.open_session(model, "openvino", EngineOptions())
        for op in sess.compiled.get_runtime_model().get_ordered_ops():
            info = op.get_rt_info()
            kind = info["layerType"].astype(str)
            if kind in _OV_WEIGHTED:
                found[f"{kind} {info['runtimePrecision'].astype(str)}"] += 1
        return dict(found.most_common())
    from .speed import _INTEGER_OPS

    opt = ort_optimized(model)
    for n in opt.graph:
        if n.op_type.startswith(_INTEGER_OPS) or (n.op_type in _ORT_WEIGHTED and _weighted(n)):
            half = any(o.dtype == ir.DataType.FLOAT16 for o in n.outputs)
            found[n.op_type + (" float16" if half else "")] += 1
    return dict(found.most_common())


def _weighted(node: ir.Node) -> bool:
    """The node's second input is a weight: a constant, or a constant through DequantizeLinear/Cast."""
    w = node.inputs[1] if len(node.inputs) > 1 else None
    while w is not None and w.const_value is None and w.producer() is not None and \
            w.producer().op_type in ("DequantizeLinear", "Cast"):
        w = w.producer().inputs[0]
    return w is not None and w.const_value is not None


def slower_because(mode: str, engine: str, kernels: dict[str, int], model: ir.Model) -> tuple[str, ...]:
    """Why a non-static mode is not faster than FP32 on ``engine``, from the kernels it runs the weighted layers
    with; empty when there is nothing mode-specific to say."""
    ks = ", ".join(f"{k} ×{v}" for k, v in kernels.items())
    if mode == "fp16":
        out = []
        if not _FP16_FLAGS & cpu_flags():
            out.append("this CPU has no FP16 arithmetic (no AVX512-FP16/AMX-FP16): "
                       + ("OpenVINO computes in FP32 and converts the FP16 weights at load, so FP16 saves size, "
                          "not time" if engine == "openvino" else
                          "ONNX Runtime's CPU kernels convert float16 to float32 and back"))
        casts = sum(1 for n in model.graph if n.op_type == "Cast")
        out.append(f"{casts} Casts between float32 and float16 (the float32 inputs/outputs and the blocked ops)")
        return tuple(out + ([f"weighted layers run as {ks}"] if ks else []))
    if engine == "openvino":
        fp32 = {k: v for k, v in kernels.items() if k.endswith(("f32", "f16", "bf16"))}
        if fp32:
            return ((f"{sum(fp32.values())} weighted layers run in floating point on OpenVINO "
                    f"({', '.join(f'{k} ×{v}' for k, v in fp32.items())})"),)
        return ((f"the weighted layers run as {ks}; the model is small or memory-bound: the integer kernels' gain "
                "is below the dequantization overhead"),)
    plain = {k: v for k, v in kernels.items() if k in _ORT_WEIGHTED}
    if plain:
        return ((f"{sum(plain.values())} weighted layers found no integer kernel on ONNX Runtime "
                f"({', '.join(f'{k} ×{v}' for k, v in plain.items())}): the weights are dequantized at every run"),)
    return ()
