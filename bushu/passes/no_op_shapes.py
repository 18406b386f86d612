"""Remove shape operations that change nothing.

Cases (every graph):
1. ``Pad`` whose pads are all zero.
2. ``Slice`` that keeps every element (starts 0, steps 1, ends at or past a static dim).
3. ``Concat`` of one input; ``Split`` into one output.
4. ``Reshape``/``Flatten`` whose static input shape equals its static output shape.
5. ``Squeeze(Unsqueeze(x, axes), axes)`` with the same constant axes.
Each becomes an ``Identity`` that the Identity pass then removes.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from ._rewire import const, static_shape, to_identity
from .identity import eliminate_identities
from .registry import PassContext, graphs, register


def _pads(node: ir.Node) -> np.ndarray | None:
    if len(node.inputs) > 1:
        return const(node.inputs[1])
    attr = node.attributes.get("pads")
    return None if attr is None else np.asarray(attr.as_ints())


def _full_slice(node: ir.Node) -> bool:
    shape = static_shape(node.inputs[0])
    starts, ends = const(node.inputs[1]), const(node.inputs[2])
    if shape is None or starts is None or ends is None:
        return False
    rank = len(shape)
    axes = const(node.inputs[3]) if len(node.inputs) > 3 and node.inputs[3] is not None else np.arange(len(starts))
    steps = const(node.inputs[4]) if len(node.inputs) > 4 and node.inputs[4] is not None else np.ones(len(starts))
    if axes is None or steps is None:
        return False
    for s, e, a, st in zip(starts.tolist(), ends.tolist(), axes.tolist(), steps.tolist()):
        if st != 1 or s not in (0, -shape[a % rank]) or e < shape[a % rank]:
            return False
    return True


def _axes(node: ir.Node) -> list[int] | None:
    if len(node.inputs) > 1 and node.inputs[1] is not None:
        a = const(node.inputs[1])
        return None if a is None else sorted(a.tolist())
    attr = node.attributes.get("axes")
    return None if attr is None else sorted(attr.as_ints())


def _is_no_op(node: ir.Node) -> bool:
    op = node.op_type
    if op == "Pad":
        p = _pads(node)
        return p is not None and not p.any() and (len(node.inputs) < 4 or node.inputs[3] is None)
    if op == "Slice":
        return _full_slice(node)
    if op == "Concat":
        return len(node.inputs) == 1
    if op == "Split":
        return len(node.outputs) == 1
    if op in ("Reshape", "Flatten"):
        src, dst = static_shape(node.inputs[0]), static_shape(node.outputs[0])
        return src is not None and src == dst
    if op == "Squeeze":
        producer = node.inputs[0].producer() if node.inputs[0] is not None else None
        if producer is None or producer.op_type != "Unsqueeze" or producer.domain != "":
            return False
        axes = _axes(node)
        return axes is not None and axes == _axes(producer) and all(a >= 0 for a in axes)
    return False


@register("eliminate-no-op-shapes", "remove zero Pad, full Slice, 1-input Concat, 1-output Split, same-shape "
          "Reshape, Squeeze(Unsqueeze)", "cleanup")
def run(model: ir.Model, ctx: PassContext) -> int:
    count = 0
    for g in graphs(model):
        for node in list(g):
            if node.domain != "" or len(node.outputs) != 1 or not _is_no_op(node):
                continue
            src = node.inputs[0]
            if node.op_type == "Squeeze":
                src = src.producer().inputs[0]
            to_identity(node, src)
            count += 1
    if count:
        eliminate_identities(model)
    return count
