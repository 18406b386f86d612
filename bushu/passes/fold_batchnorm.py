"""Fold ``BatchNormalization`` (inference) into the preceding ``Conv``, ``ConvTranspose``, ``Gemm`` or ``MatMul``.

    y = gamma * (W*x + B - mean) / sqrt(var + eps) + beta
      = (W * s) * x + ((B - mean) * s + beta),   s = gamma / sqrt(var + eps)

A direct walk: each BatchNormalization looks at its input's producer (no pattern matcher: onnxscript's rules for
Conv/ConvTranspose/Gemm cost ~0.15 s of matching on a ResNet-18 for ~20 folds worth a few ms of numpy). For
Conv/ConvTranspose/Gemm the weight (and bias, if any) must be initializers used by that node alone, not graph inputs,
and the product used by the BatchNormalization alone; the node is rewritten with the scaled weight and the shifted
bias (Gemm's ``beta`` folded into it) under the old names. Refused like onnxscript refuses: a ConvTranspose whose
input channels don't divide by its group, and (beyond it) a scale whose length isn't the weight's channel count.
MatMul: BatchNormalization scales axis 1 of its input, so
the scale moves into the MatMul's constant weight only where that axis is one of the weight's: a rank-2 product
``x @ W`` (axis 1 = W's columns) or a rank-3 product ``W @ x`` with a 2-D W (axis 1 = W's rows); the shift
becomes an ``Add`` after it (which ``constant-chains`` merges with a bias Add, and level ``all`` turns into a
Gemm). Only when the weights and statistics are initializers used by nothing else: run ``lift-constants`` first
so exports that store them as Constant nodes qualify.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from ._rewire import const, new_initializer
from .registry import PassContext, graphs, register


def _private(v: ir.Value | None, user: ir.Node) -> bool:
    return v is not None and v.is_initializer() and not v.is_graph_input() and all(u is user for u, _ in v.uses())


def _stats(bn: ir.Node) -> tuple[np.ndarray, np.ndarray] | None:
    """(scale s, shift t) with BN(z) = z * s + t, or None when BN isn't a constant inference BatchNorm."""
    if bn.attributes.get_int("training_mode", 0) != 0 or any(o.uses() or o.is_graph_output() for o in bn.outputs[1:]):
        return None
    params = list(bn.inputs[1:5])
    if len(params) != 4 or any(v is None or v.is_graph_input() for v in params):
        return None
    arrays = [const(v) for v in params]
    if any(a is None or a.ndim != 1 for a in arrays):
        return None
    gamma, beta, mean, var = (a.astype(np.float64) for a in arrays)
    s = gamma / np.sqrt(var + bn.attributes.get_float("epsilon", 1e-5))
    return s, beta - mean * s


def _scaled_weight(op: ir.Node, w: np.ndarray, s: np.ndarray) -> np.ndarray | None:
    """``w`` with its output-channel axis scaled by ``s``, or None when ``s`` doesn't fit that axis."""
    if op.op_type == "Conv":
        return w * s.reshape((-1,) + (1,) * (w.ndim - 1)) if w.ndim >= 1 and w.shape[0] == s.size else None
    if op.op_type == "Gemm":
        axis = 0 if op.attributes.get_int("transB", 0) else 1
        if w.ndim != 2 or w.shape[axis] != s.size:
            return None
        return w * (s.reshape(-1, 1) if axis == 0 else s.reshape(1, -1))
    # ConvTranspose: W is (C_in, M/group, *kernel), output channel m = g * M/group + j
    group = op.attributes.get_int("group", 1)
    if w.ndim < 2 or group < 1 or w.shape[0] % group or group * w.shape[1] != s.size:
        return None
    kernel = w.shape[2:]
    per_group = s.reshape((group, 1, w.shape[1]) + (1,) * len(kernel))
    return (w.reshape((group, w.shape[0] // group, w.shape[1], *kernel)) * per_group).reshape(w.shape)


def _fold_into_weighted(graph: ir.Graph, bn: ir.Node) -> bool:
    """BatchNormalization(Conv|ConvTranspose|Gemm(x, W[, B])) -> the same node with W * s and (B - mean) * s + beta."""
    z = bn.inputs[0]
    op = z.producer() if z is not None else None
    if (op is None or op.op_type not in ("Conv", "ConvTranspose", "Gemm") or op.domain != "" or op.graph is not graph
            or len(op.outputs) != 1 or len(z.uses()) != 1 or z.is_graph_output() or len(op.inputs) < 2):
        return False
    w_value = op.inputs[1]
    b_value = op.inputs[2] if len(op.inputs) > 2 else None
    if not _private(w_value, op) or (b_value is not None and (b_value is w_value or not _private(b_value, op))):
        return False
    st = _stats(bn)
    w = const(w_value)
    if st is None or w is None or w.dtype.kind != "f":
        return False
    s, t = st
    scaled = _scaled_weight(op, w, s.astype(w.dtype))  # in the weight's dtype: a float64 copy of 44 MB costs 0.1 s
    if scaled is None:
        return False
    attrs = {k: v for k, v in op.attributes.items() if not (op.op_type == "Gemm" and k == "beta")}
    if b_value is not None:
        b = const(b_value)
        if b is None or b.dtype.kind != "f" or b.size not in (1, s.size):
            return False
        gemm_beta = op.attributes.get_float("beta", 1.0) if op.op_type == "Gemm" else 1.0
        bias = b.astype(np.float64).reshape(-1 if b.size == s.size else ()) * gemm_beta
        bias_name = b_value.name
        graph.initializers.pop(b_value.name)
    else:
        bias, bias_name = 0.0, f"{w_value.name}_bias"
    graph.initializers.pop(w_value.name)
    new_w = new_initializer(graph, scaled.astype(w.dtype, copy=False), w_value.name)
    new_b = new_initializer(graph, (bias * s + t).astype(w.dtype), bias_name)
    fused = ir.node(op.op_type, [op.inputs[0], new_w, new_b], attrs, domain=op.domain, overload=op.overload,
                    name=op.name)
    ir.convenience.replace_nodes_and_values(graph, op, [op, bn], [fused], [bn.outputs[0]], [fused.outputs[0]])
    return True


def _fold_into_matmul(graph: ir.Graph, bn: ir.Node) -> bool:
    z = bn.inputs[0]
    mm = z.producer() if z is not None else None
    if (mm is None or mm.op_type != "MatMul" or mm.domain != "" or mm.graph is not graph or len(z.uses()) != 1
            or z.is_graph_output() or z.shape is None):
        return False
    st = _stats(bn)
    a, b = mm.inputs
    rank = len(z.shape)
    if rank == 2 and _private(b, mm) and const(b).ndim == 2:
        side, w = 1, const(b)
        channels, scale_shape, shift_shape = w.shape[1], (1, -1), (-1,)
    elif rank == 3 and _private(a, mm) and const(a).ndim == 2:
        side, w = 0, const(a)
        channels, scale_shape, shift_shape = w.shape[0], (-1, 1), (-1, 1)
    else:
        return False
    if st is None or st[0].size != channels or w.dtype.kind != "f":
        return False
    s, t = st
    name = mm.name or "MatMul"
    mm.replace_input_with(side, new_initializer(graph, (w * s.reshape(scale_shape)).astype(w.dtype), f"{name}_w"))
    shift = new_initializer(graph, t.reshape(shift_shape).astype(w.dtype), f"{name}_bn_shift")
    add = ir.node("Add", [z, shift], name=bn.name)
    out = bn.outputs[0]
    ir.convenience.replace_nodes_and_values(graph, bn, [bn], [add], [out], [add.outputs[0]])
    return True


@register("fold-batchnorm", "fold BatchNormalization into the preceding Conv/ConvTranspose/Gemm/MatMul weights",
          "fold")
def run(model: ir.Model, ctx: PassContext) -> int:
    count = 0
    for g in graphs(model):
        for node in list(g):
            if node.op_type == "BatchNormalization" and node.domain == "" and node.graph is g:
                count += _fold_into_weighted(g, node) or _fold_into_matmul(g, node)
    return count
