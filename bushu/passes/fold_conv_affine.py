"""Fold a constant per-channel ``Mul`` or ``Add`` after ``Conv``/``Gemm`` into its weights and bias.

    Mul:  (W*x + b) * s == (W*s)*x + b*s       s scalar or one value per output channel
    Add:  (W*x + b) + a == W*x + (b + a)       a scalar or one value per output channel (a bias Add)

Conv's output channel is axis 1 (its weight's axis 0); Gemm's is the last axis (B's axis 1, or 0 with transB),
and for Gemm ``alpha*A*B + beta*C`` the added value goes into C as ``a / beta``. Only when the Conv/Gemm output
feeds nothing else and its weight and bias are initializers read by nothing else (a shared weight would have to
be duplicated, which grows the file).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from ._rewire import const, new_initializer
from .registry import PassContext, graphs, register


def _channel_vector(c: np.ndarray, out_rank: int, axis: int, channels: int) -> np.ndarray | None:
    """``c`` as a (channels,) vector if it broadcasts along ``axis`` only, without raising the output rank."""
    if c.ndim > out_rank:
        return None
    shape = (1,) * (out_rank - c.ndim) + c.shape
    if any(d != 1 for i, d in enumerate(shape) if i != axis % out_rank) or shape[axis % out_rank] not in (1, channels):
        return None
    return np.broadcast_to(c.reshape(-1), (channels,)).copy()


def _private(v: ir.Value | None, user: ir.Node) -> bool:
    return v is None or (v.is_initializer() and not v.is_graph_input() and all(u is user for u, _ in v.uses()))


def _fold(graph: ir.Graph, node: ir.Node, producer: ir.Node) -> bool:
    y = producer.outputs[0]
    other = node.inputs[1] if node.inputs[0] is y else node.inputs[0]
    c, w, b = const(other), const(producer.inputs[1]), None
    if c is None or w is None or len(y.uses()) != 1 or y.is_graph_output():
        return False
    has_bias = len(producer.inputs) > 2 and producer.inputs[2] is not None
    if not (_private(producer.inputs[1], producer) and _private(producer.inputs[2] if has_bias else None, producer)):
        return False
    if c.dtype != w.dtype or w.dtype.kind != "f":
        return False
    gemm = producer.op_type == "Gemm"
    trans_b = gemm and producer.attributes.get_int("transB", 0) == 1
    w_axis = (0 if trans_b else 1) if gemm else 0
    axis = -1 if gemm else 1
    rank = 2 if gemm else w.ndim  # Conv's output has its weight's rank: (N, C, spatial...)
    vec = _channel_vector(c, rank, axis, w.shape[w_axis])
    if vec is None:
        return False
    b = const(producer.inputs[2]) if has_bias else np.zeros(w.shape[w_axis], w.dtype)
    if b is None or b.size not in (1, vec.size) or b.ndim > 1:
        return False
    b = np.broadcast_to(b.reshape(-1), vec.shape)
    if node.op_type == "Mul":
        scale_shape = [1] * w.ndim
        scale_shape[w_axis] = -1
        new_w, new_b = w * vec.reshape(scale_shape), b * vec
    else:
        beta = producer.attributes.get_float("beta", 1.0) if gemm else 1.0
        new_w, new_b = None, b + vec / beta
    name = producer.name or producer.op_type
    if new_w is not None:
        producer.replace_input_with(1, new_initializer(graph, new_w.astype(w.dtype), f"{name}_w"))
    bias = new_initializer(graph, new_b.astype(w.dtype), f"{name}_b")
    if not has_bias:
        producer.resize_inputs(3)
    producer.replace_input_with(2, bias)
    out = node.outputs[0]
    ir.convenience.replace_all_uses_with(out, y, replace_graph_outputs=True)
    graph.remove(node, safe=True)
    if y.is_graph_output():  # the output's name and type are part of the signature
        y.name, y.type, y.shape = out.name, y.type or out.type, y.shape or out.shape
    return True


@register("fold-conv-affine", "fold constant per-channel Mul/Add (bias Add) after Conv/Gemm into weights", "fold")
def run(model: ir.Model, ctx: PassContext) -> int:
    count = 0
    for g in graphs(model):
        for node in list(g):
            if node.op_type not in ("Mul", "Add") or node.domain != "" or node.graph is None:
                continue
            for v in node.inputs:
                p = v.producer() if v is not None else None
                if p is not None and p.op_type in ("Conv", "Gemm") and p.domain == "" and p.graph is g:
                    if _fold(g, node, p):
                        count += 1
                    break
    return count
