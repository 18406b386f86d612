"""Merge the constants of a chain of Adds or Muls.

    (x + c1) + c2 == x + (c1 + c2)        (x * c1) * c2 == x * (c1 * c2)

Broadcasting is associative, so the result's shape is unchanged; in floating point the sum is rounded once
instead of twice (the difference is far below the verification tolerance). Only when the inner result feeds
nothing else and both constants have the value's type.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from ._rewire import const, new_initializer
from .registry import PassContext, graphs, register


def _split(node: ir.Node) -> tuple[ir.Value, np.ndarray] | None:
    """(the non-constant input, the constant) of a binary node with exactly one constant input."""
    a, b = node.inputs
    ca, cb = const(a), const(b)
    if (ca is None) == (cb is None):
        return None
    return (b, ca) if ca is not None else (a, cb)


def _merge(graph: ir.Graph, node: ir.Node) -> bool:
    outer = _split(node)
    if outer is None:
        return False
    inner_value, c2 = outer
    inner = inner_value.producer()
    if (inner is None or inner.op_type != node.op_type or inner.domain != "" or inner.graph is not graph
            or len(inner_value.uses()) != 1 or inner_value.is_graph_output()):
        return False
    split = _split(inner)
    if split is None:
        return False
    x, c1 = split
    if c1.dtype != c2.dtype:
        return False
    merged = (c1 + c2) if node.op_type == "Add" else (c1 * c2)
    c = new_initializer(graph, merged.astype(c1.dtype), f"{node.name or node.op_type}_c")
    node.replace_input_with(0, x)
    node.replace_input_with(1, c)
    graph.remove(inner, safe=True)
    return True


@register("constant-chains", "merge the constants of Add/Add and Mul/Mul chains", "fold")
def run(model: ir.Model, ctx: PassContext) -> int:
    count = 0
    for g in graphs(model):
        for node in list(g):
            if node.graph is g and node.op_type in ("Add", "Mul") and node.domain == "" and _merge(g, node):
                count += 1
    return count
