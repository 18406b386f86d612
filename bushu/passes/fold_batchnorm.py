"""Fold ``BatchNormalization`` (inference) into the preceding ``Conv``, ``ConvTranspose``, ``Gemm`` or ``MatMul``.

    y = gamma * (W*x + B - mean) / sqrt(var + eps) + beta
      = (W * s) * x + ((B - mean) * s + beta),   s = gamma / sqrt(var + eps)

Conv/ConvTranspose/Gemm are onnxscript's rules. MatMul is ours: BatchNormalization scales axis 1 of its input, so
the scale moves into the MatMul's constant weight only where that axis is one of the weight's: a rank-2 product
``x @ W`` (axis 1 = W's columns) or a rank-3 product ``W @ x`` with a 2-D W (axis 1 = W's rows); the shift
becomes an ``Add`` after it (which ``constant-chains`` merges with a bias Add, and level ``all`` turns into a
Gemm). Only when the weights and statistics are initializers used by nothing else: run ``lift-constants`` first
so exports that store them as Constant nodes qualify.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter.rules import common as rules

from ._rewire import const, new_initializer
from ._rules import apply_rules
from .registry import PassContext, graphs, register

_RULES = [rules.fuse_batchnorm_into_conv_rule, rules.fuse_batchnorm_into_conv_transpose_rule,
          rules.fuse_batchnorm_into_gemm_rule]


def _private(v: ir.Value | None, user: ir.Node) -> bool:
    return v is not None and v.is_initializer() and not v.is_graph_input() and all(u is user for u, _ in v.uses())


def _stats(bn: ir.Node) -> tuple[np.ndarray, np.ndarray] | None:
    """(scale s, shift t) with BN(z) = z * s + t, or None when BN isn't a constant inference BatchNorm."""
    if bn.attributes.get_int("training_mode", 0) != 0 or any(o.uses() or o.is_graph_output() for o in bn.outputs[1:]):
        return None
    arrays = [const(v) for v in bn.inputs[1:5]]
    if len(arrays) != 4 or any(a is None or a.ndim != 1 for a in arrays):
        return None
    gamma, beta, mean, var = (a.astype(np.float64) for a in arrays)
    s = gamma / np.sqrt(var + bn.attributes.get_float("epsilon", 1e-5))
    return s, beta - mean * s


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
    count = apply_rules(model, _RULES)
    for g in graphs(model):
        for node in list(g):
            if node.op_type == "BatchNormalization" and node.domain == "" and node.graph is g:
                count += _fold_into_matmul(g, node)
    return count
