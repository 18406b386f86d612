"""Weight-only INT8 and INT4: weights stored quantized behind a DequantizeLinear, activations left in float.

* INT8 (``--mode weight-only``): MatMul/Gemm weights, symmetric int8 per output channel (opset 13).
* INT4 (``--mode int4``): MatMul weights of at least ``block_size`` rows, symmetric int4 with one scale per block of
  ``block_size`` rows and column (ONNX ``DequantizeLinear(block_size=…)``, opset 21). ONNX Runtime fuses
  DequantizeLinear(int4, blocked) → MatMul into its MatMulNBits kernel; other engines run the standard ops.

Both shrink the file 4–8× for weight-dominated models (transformers); speed depends on the engine fusing the
dequantization into the matmul (see the result's speed section).
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import TopologicalSortPass

from .annotate import Plan, WeightSpec, weight_axis
from .convert import Builder, convert
from .spec import EnginePreset

INT4_MIN, INT4_MAX = -8, 7  # symmetric (zero point 0); -8 is used when the scale search finds it pays


def weight_plan(model: ir.Model, *, ops=("MatMul", "Gemm"), include=(), exclude=()) -> Plan:
    weights, reasons = [], {}
    for node in model.graph:
        if node.op_type not in ops:
            continue
        w = node.inputs[1]
        if w is None or w.const_value is None or len(w.const_value.shape) != 2:
            continue  # activation × activation (attention scores): not a weighted layer
        if (exclude and (node.name in exclude or node.op_type in exclude)) or (
                include and node.name not in include and node.op_type not in include):
            reasons[node.name] = "excluded" if exclude else "not included"
            continue
        weights.append(WeightSpec(node.name, w.name, weight_axis(node), None, ""))
    return Plan(tuple(weights), {}, (), tuple(w.node for w in weights), reasons)


def int8(model: ir.Model, preset: EnginePreset, **kw) -> tuple[ir.Model, Plan]:
    p = weight_plan(model, **kw)
    return convert(model, p, {}, preset), p


# max|w| maps to ±7 · r, or (r / 7 · 8) to -8 when the block's extreme is negative
CLIP_RATIOS = np.concatenate([np.linspace(1.0, 0.5, 11), np.linspace(1.0, 0.5, 11) * 7 / 8])


def block_scales(blocks: np.ndarray) -> np.ndarray:
    """Per block and column (``blocks``: blocks × rows × columns), the int4 scale with the least squared error on
    the block's weights among ``max|w| · r / 7`` for the ratios ``r`` in :data:`CLIP_RATIOS` (r = 1: min-max over
    -7…7; r = 7/8: a negative extreme on -8). Clipping a block's largest weight buys a finer grid for the rest."""
    amax = np.abs(blocks).max(axis=1)
    amax = np.where(amax > 0, amax, 1.0).astype(np.float32)
    best, best_err = None, None
    for r in CLIP_RATIOS:
        s = amax * np.float32(r / INT4_MAX)
        err = ((np.clip(np.rint(blocks / s[:, None, :]), INT4_MIN, INT4_MAX) * s[:, None, :] - blocks) ** 2).sum(axis=1)
        if best is None:
            best, best_err = s, err
        else:
            better = err < best_err
            best, best_err = np.where(better, s, best), np.where(better, err, best_err)
    return best.astype(np.float32)


def whole_block(k: int, block_size: int) -> int | None:
    """The largest block of at least 16 rows, at most ``block_size``, that divides ``k`` rows (None: none does)."""
    return next((d for d in range(block_size, 15, -1) if k % d == 0), None)


def int4(model: ir.Model, block_size: int = 32, *, whole_blocks: bool = False, **kw) -> tuple[ir.Model, Plan]:
    """Block-wise INT4 MatMul weights in place (the model must be at opset ≥ 21). With ``whole_blocks`` (OpenVINO
    2026.4 can't read a partial last block), a MatMul whose rows are not a whole number of blocks gets the largest
    block below ``block_size`` that divides them (PP-OCRv4 rec's 120 rows: 30), or stays float if none does."""
    p = weight_plan(model, ops=("MatMul",), **kw)
    b = Builder(model.graph)
    nodes = {n.name: n for n in model.graph}
    done, reasons = [], dict(p.reasons)
    for ws in p.weights:
        node = nodes[ws.node]
        w = node.inputs[1].const_value.numpy().astype(np.float32)  # K x N
        k, n = w.shape
        if k < block_size:
            reasons[node.name] = f"{k} rows, fewer than one int4 block of {block_size}"
            continue
        bs = whole_block(k, block_size) if whole_blocks else block_size
        if bs is None:
            reasons[node.name] = (f"no int4 block of 16–{block_size} rows divides its {k} rows (OpenVINO can't "
                                  "read a partial block)")
            continue
        pad = (-k) % bs
        wp = np.pad(w, ((0, pad), (0, 0)))
        blocks = wp.reshape(-1, bs, n)
        scale = block_scales(blocks)
        q = np.clip(np.rint(blocks / scale[:, None, :]), INT4_MIN, INT4_MAX).reshape(-1, n)[:k]
        # DequantizeLinear's blocked scale has the data's shape with the blocked axis divided (rounded up)
        qv = b.const(f"{ws.weight}_int4", q.astype(ml_dtypes.int4))
        sv = b.const(f"{ws.weight}_scale", scale)
        dq = ir.node("DequantizeLinear", [qv, sv], {"axis": 0, "block_size": bs},
                     name=b.unique(f"{ws.weight}_DequantizeLinear"))
        dq.outputs[0].name = b.unique(f"{ws.weight}_dq")
        dq.outputs[0].dtype = ir.DataType.FLOAT
        model.graph.append(dq)
        node.replace_input_with(1, dq.outputs[0])
        done.append(ws)
    for name in [x for x, v in model.graph.initializers.items() if not v.uses()]:
        model.graph.initializers.pop(name)
    TopologicalSortPass()(model)
    return model, Plan(tuple(done), {}, (), tuple(w.node for w in done), reasons)
