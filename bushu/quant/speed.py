"""Speed is part of a quantization result: FP32 vs INT8 latency on the target engine, and why INT8 is not faster
when it isn't.

On ONNX Runtime the INT8 model is optimized the way a session would (level ``all``) and saved
(``SessionOptions.optimized_model_filepath``); what is left tells the reason: DequantizeLinear → float op →
QuantizeLinear groups that found no integer kernel, layout reorders (``ReorderInput``/``ReorderOutput``) around
them, and the CPU's lack of VNNI (int8 dot products then take three instructions instead of one). On OpenVINO the
compiled model's execution graph (``get_runtime_model()``) tells it: weighted layers whose runtime precision is
FP32, FakeQuantize layers left standing alone, reorders.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np
import onnx_ir as ir

from .. import engines
from ..engines.base import EngineOptions
from ..results import Result
from ..timing import Latency, cpu_flags, measure_interleaved

_INTEGER_OPS = ("QLinear", "QGemm", "MatMulInteger", "ConvInteger", "DynamicQuantize", "MatMulNBits", "QAttention",
                "MatMulIntegerToFloat")


@dataclasses.dataclass(frozen=True)
class Speed(Result):
    """FP32 and quantized latency on one engine; ``speedup`` = fp32 median / quantized median."""

    kind = "quant_speed"
    engine: str
    fp32: Latency
    quantized: Latency
    speedup: float
    integer_ops: int
    float_islands: dict[str, int]
    reorders: int
    reasons: tuple[str, ...]

    def __bool__(self) -> bool:
        return self.speedup >= 1.0

    def __str__(self) -> str:
        s = (f"{self.engine}: fp32 {self.fp32.median_ms:.3f} ms, quantized {self.quantized.median_ms:.3f} ms "
             f"({self.speedup:.2f}×)")
        return s + ("" if self.speedup >= 1.0 else "; slower because " + "; ".join(self.reasons))


def ort_optimized(model: ir.Model) -> ir.Model:
    """``model`` as ONNX Runtime's optimizer (level all) leaves it, with the hardware-specific layout nodes."""
    from ..engines.ort import optimized_model

    return optimized_model(model, "all")


def islands(model: ir.Model) -> tuple[int, dict[str, int], int]:
    """Integer-kernel nodes, float islands — connected float ops reading a DequantizeLinear and feeding a
    QuantizeLinear, by their op types joined with ``+`` (``HardSigmoid+Mul``) — and layout reorders, in an
    engine-optimized model."""
    integer = sum(1 for n in model.graph if n.op_type.startswith(_INTEGER_OPS))
    reorders = sum(1 for n in model.graph if n.op_type.startswith("Reorder"))

    def is_float(n: ir.Node) -> bool:
        return n.op_type not in ("QuantizeLinear", "DequantizeLinear") and not n.op_type.startswith(_INTEGER_OPS)

    order = {id(n): i for i, n in enumerate(model.graph)}
    group: dict[int, list[ir.Node]] = {}  # id(node) -> the shared list of its island's nodes
    for n in model.graph:
        if not is_float(n):
            continue
        mine = group.setdefault(id(n), [n])
        for i in n.inputs:
            p = i.producer() if i is not None else None
            if p is not None and is_float(p) and group.get(id(p)) is not mine:
                other = group[id(p)]
                mine.extend(other)
                for m in other:
                    group[id(m)] = mine
    found: collections.Counter = collections.Counter()
    seen: set[int] = set()
    for nodes in group.values():
        if id(nodes) in seen:
            continue
        seen.add(id(nodes))
        fed_by_dq = any(i is not None and i.producer() is not None and i.producer().op_type == "DequantizeLinear"
                        for n in nodes for i in n.inputs)
        feeds_q = any(u.op_type == "QuantizeLinear" for n in nodes for o in n.outputs for u in o.consumers())
        if fed_by_dq and feeds_q and len(nodes) <= 8:  # a long float stretch is a region, not an island
            found["+".join(n.op_type for n in sorted(nodes, key=lambda n: order[id(n)]))] += 1
    return integer, dict(found.most_common()), reorders


_OV_WEIGHTED = ("Convolution", "GroupConvolution", "Deconvolution", "FullyConnected", "MatMul")


def ov_exec_graph(model: ir.Model) -> tuple[int, dict[str, int], int, int]:
    """From OpenVINO's compiled (execution) graph of ``model``: weighted layers running in int8, weighted layers
    running in FP32 by layer type (``"Convolution (f32)"``), layout reorders, and FakeQuantize layers OpenVINO
    could not fuse into a kernel (each is a separate pass over its tensor)."""
    sess = engines.open_session(model, "openvino", EngineOptions())
    integer, reorders, fq = 0, 0, 0
    fp32: collections.Counter = collections.Counter()
    for op in sess.compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        kind, prec = info["layerType"].astype(str), info["runtimePrecision"].astype(str)
        if kind in _OV_WEIGHTED:
            if prec in ("u8", "i8", "u4", "i4"):  # i4/u4: int4-weight FullyConnected
                integer += 1
            else:
                fp32[f"{kind} ({prec})"] += 1
        reorders += kind == "Reorder"
        fq += kind == "FakeQuantize"
    return integer, dict(fp32.most_common()), reorders, fq


# Activations ONNX Runtime fuses into its float (NCHWc) Conv kernels but not into QLinearConv.
_FUSED_IN_FLOAT = ("HardSigmoid", "HardSwish", "Sigmoid", "Tanh", "LeakyRelu")


def reasons_for(engine: str, integer: int, float_islands: Mapping[str, int], reorders: int,
                dq_float: int) -> tuple[str, ...]:
    """Why INT8 is not faster. On ONNX Runtime ``float_islands`` are DQ → float ops → Q chains and ``dq_float`` the
    float ops reading dequantized tensors; on OpenVINO ``float_islands`` are the weighted layers it runs in FP32 and
    ``dq_float`` the FakeQuantize layers it runs on their own."""
    out = []
    if engine == "openvino":
        if float_islands:
            ops = ", ".join(f"{k} ×{v}" for k, v in float_islands.items())
            out.append(f"{sum(float_islands.values())} weighted layers run in FP32 on OpenVINO ({ops})")
        if dq_float:
            out.append(f"{dq_float} FakeQuantize layers run on their own (not fused into a kernel: a pass over the "
                       "tensor each)")
        float_islands, dq_float = {}, 0
    if float_islands:
        ops = ", ".join(f"{k} ×{v}" for k, v in float_islands.items())
        out.append(f"{sum(float_islands.values())} DQ → float op → Q groups have no integer kernel ({ops})")
        fused = sorted({op for k in float_islands for op in k.split("+") if op in _FUSED_IN_FLOAT})
        if fused and engine == "ort":
            out.append(f"in FP32 ONNX Runtime fuses {', '.join(fused)} into its Conv kernels; in INT8 each costs a "
                       "dequantize, a float pass and a quantize over the whole tensor")
    if dq_float:
        out.append(f"{dq_float} float ops read dequantized tensors (int8 ↔ float conversions at every boundary)")
    if reorders:
        out.append(f"{reorders} layout reorders (NCHWc) around float ops" if engine == "ort" else
                   f"{reorders} layout reorders in the execution graph")
    flags = cpu_flags()
    if flags and not ({"avx512_vnni", "avx_vnni", "amx_int8"} & flags):
        out.append("this CPU has no VNNI: int8 dot products take 3 instructions (vpmaddubsw+vpmaddwd+vpaddd)")
    if integer == 0:
        out.append("no integer kernel was used at all")
    if not out:
        out.append("the model is small or memory-bound: the int8 kernels' gain is below the Q/DQ overhead")
    return tuple(out)


def measure_speed(float_model: ir.Model, quant_model: ir.Model, feed: Mapping[str, np.ndarray], *,
                  engine: str = "ort", budget_s: float = 1.0, options: EngineOptions | None = None) -> Speed:
    """Median latency of both models on ``engine`` with ``feed``, timed in alternating blocks so that background load
    hits both alike (ONNX Runtime's spinning off: an idle session's spinning threads would slow the other), and the
    reasons when the quantized one is not faster."""
    fp32, quantized = time_interleaved([float_model, quant_model], feed, engine=engine, budget_s=budget_s,
                                       options=options)
    return speed_of(engine, fp32, quantized, quant_model)


def time_interleaved(models: Sequence[ir.Model], feed: Mapping[str, np.ndarray], *, engine: str = "ort",
                     budget_s: float = 1.0, options: EngineOptions | None = None) -> list[Latency]:
    """Latency of each model on ``engine`` with ``feed``, all timed in the same alternating rounds (A, B, …, then
    reversed), one session per model, ONNX Runtime's spinning off."""
    opts = dataclasses.replace(options or EngineOptions(), spin=False)
    sessions = [engines.open_session(m, engine, opts) for m in models]
    lats, _ = measure_interleaved([lambda s=s: s.run(feed) for s in sessions], rounds=6, warmup_s=0.3,
                                  budget_s=budget_s)
    return lats


def speed_of(engine: str, fp32: Latency, quantized: Latency, quant_model: ir.Model) -> Speed:
    """The :class:`Speed` of ``quant_model`` from its measured latency and its float model's, with the reasons
    (from the engine-optimized graph) when it is not faster."""
    speedup = fp32.median_ms / quantized.median_ms
    integer, isl, reorders, dq_float = 0, {}, 0, 0
    if engine == "ort":
        opt = ort_optimized(quant_model)
        integer, isl, reorders = islands(opt)
        dq_float = sum(1 for n in opt.graph if n.op_type == "DequantizeLinear"
                       for u in n.outputs[0].consumers() if u.op_type != "QuantizeLinear")
    elif engine == "openvino":
        integer, isl, reorders, dq_float = ov_exec_graph(quant_model)
    reasons = reasons_for(engine, integer, isl, reorders, dq_float) if speedup < 1.0 else ()
    return Speed(engine, fp32, quantized, speedup, integer, isl, reorders, reasons)
