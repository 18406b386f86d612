"""Fold shape arithmetic whose result is known although its inputs are not all constant.

A shape vector is often built as a ``Concat`` of one-element pieces: constants, and dims read from a tensor
(``Unsqueeze(Gather(Shape(x), i))``, ``Gather(Shape(x), [i])``, ``Slice(Shape(x), i, i+1)``, ``Shape(x, start=i,
end=i+1)``), which are never negative. Two cases fold (every graph):

1. ``Equal(v, c)`` with a constant ``c``: a constant piece is compared; a dim compared with a negative number is
   false. Folded to a constant when every element is decided (``expand``'s ``Where(Equal(shape, -1), 1, shape)``).
2. ``Where(c, a, b)`` with a constant condition, ``a`` and ``b`` constants or such Concats: each element is picked
   statically, so the result is one Concat of the picked pieces (runs of constants merged), or a constant.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from ._rewire import const, new_initializer, static_shape
from .registry import PassContext, graphs, register

# a piece: (constant value, None) or (None, the one-element value), with whether it is a dim (never negative)
Piece = tuple[object, ir.Value | None, bool]


def _is_dim(v: ir.Value) -> bool:
    """True when ``v`` is one element of a Shape output."""
    p = v.producer()
    if p is None or p.domain != "":
        return False
    if p.op_type == "Unsqueeze":
        q = p.inputs[0].producer()
        return q is not None and q.op_type == "Gather" and _from_shape(q) and const(q.inputs[1]) is not None
    if p.op_type in ("Gather", "Slice"):
        return _from_shape(p)
    return p.op_type == "Shape"  # a one-element Shape (start/end): the caller checked the length


def _from_shape(node: ir.Node) -> bool:
    src = node.inputs[0].producer() if node.inputs[0] is not None else None
    return src is not None and src.op_type == "Shape" and src.domain == ""


def _pieces(v: ir.Value | None) -> list[Piece] | None:
    """``v`` (a 1-D int vector) element by element, or None when it isn't built from known pieces."""
    if v is None:
        return None
    c = const(v)
    if c is not None:
        return [(x, None, False) for x in c.reshape(-1).tolist()] if c.ndim <= 1 else None
    p = v.producer()
    if p is None or p.op_type != "Concat" or p.domain != "" or p.attributes.get_int("axis", 0) not in (0, -1):
        return None
    out: list[Piece] = []
    for x in p.inputs:
        cx = const(x)
        if cx is not None:
            out += [(e, None, False) for e in cx.reshape(-1).tolist()]
        elif static_shape(x) == (1,):
            out.append((None, x, _is_dim(x)))
        else:
            return None
    return out


def _fold_equal(graph: ir.Graph, node: ir.Node) -> bool:
    for v, c in ((node.inputs[0], node.inputs[1]), (node.inputs[1], node.inputs[0])):
        cv, pieces = const(c), _pieces(v)
        if cv is None or pieces is None or const(v) is not None or cv.ndim > 1:
            continue
        targets = np.broadcast_to(cv.reshape(-1), (len(pieces),)).tolist() if cv.size in (1, len(pieces)) else None
        if targets is None:
            return False
        result = []
        for (value, _, is_dim), t in zip(pieces, targets):
            if value is not None:
                result.append(value == t)
            elif is_dim and t < 0:
                result.append(False)
            else:
                return False
        out = node.outputs[0]
        if out.is_graph_output():
            return False
        folded = new_initializer(graph, np.array(result, dtype=bool), f"{node.name or 'equal'}_folded")
        ir.convenience.replace_all_uses_with(out, folded)
        graph.remove(node, safe=True)
        return True
    return False


def _fold_where(graph: ir.Graph, node: ir.Node) -> bool:
    cond = const(node.inputs[0])
    if cond is None or cond.ndim != 1:
        return False
    a, b = _pieces(node.inputs[1]), _pieces(node.inputs[2])
    if a is None or b is None or (const(node.inputs[1]) is not None and const(node.inputs[2]) is not None):
        return False
    n = cond.size
    a, b = (p * n if len(p) == 1 else p for p in (a, b))
    if len(a) != n or len(b) != n:
        return False
    dtype = node.inputs[1].dtype or node.inputs[2].dtype
    if dtype is None or node.inputs[1].dtype != node.inputs[2].dtype:
        return False
    chosen = [pa if c else pb for c, pa, pb in zip(cond.tolist(), a, b)]
    inputs: list[ir.Value] = []
    run: list = []
    name = node.name or "where"

    def flush() -> None:
        if run:
            inputs.append(new_initializer(graph, np.array(run, dtype=dtype.numpy()), f"{name}_part"))
            run.clear()

    for value, piece, _ in chosen:
        if piece is None:
            run.append(value)
        else:
            flush()
            inputs.append(piece)
    flush()
    concat = ir.node("Concat", inputs, {"axis": 0}, name=name)
    out = node.outputs[0]
    concat.outputs[0].type, concat.outputs[0].shape = out.type, out.shape
    ir.convenience.replace_nodes_and_values(graph, node, [node], [concat], [out], [concat.outputs[0]])
    return True


@register("fold-shape-facts", "fold Equal/Where on shape vectors built from dims (never negative) and constants",
          "cleanup")
def run(model: ir.Model, ctx: PassContext) -> int:
    count = 0
    for g in graphs(model):
        for node in list(g):
            if node.domain != "" or node.graph is not g:
                continue
            if node.op_type == "Equal":
                count += _fold_equal(g, node)
            elif node.op_type == "Where":
                count += _fold_where(g, node)
    return count
