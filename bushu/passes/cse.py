"""Common-subexpression elimination in every graph.

Two nodes with the same op, the same input values and equal attributes compute the same thing (unless the op is
random): the second one's outputs are replaced by the first one's. Like onnx-ir's CSE pass, but it also works
inside If/Loop/Scan bodies (per graph; a body's nodes may read outer values, which keep their identity), and it
merges small Constant nodes with equal values (large ones are initializer de-duplication's business).
"""

from __future__ import annotations

import onnx_ir as ir

from .registry import PassContext, graphs, register

_RANDOM = {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial", "Bernoulli",
           "Dropout"}
_CONST_LIMIT = 64  # elements: bigger constants are compared by initializer de-duplication, with hashes


def _attr_key(attr: ir.Attr):
    if attr.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS):
        return None  # two bodies are never compared: not worth the cost
    if attr.type == ir.AttributeType.TENSOR:
        t = attr.as_tensor()
        if t.size > _CONST_LIMIT:
            return None
        a = t.numpy()
        return (a.shape, str(a.dtype), a.tobytes())
    v = attr.value
    return tuple(v) if isinstance(v, (list, tuple)) else v


def _key(node: ir.Node):
    attrs = []
    for name, attr in sorted(node.attributes.items()):
        if attr.is_ref():
            return None
        k = _attr_key(attr)
        if k is None:
            return None
        attrs.append((name, attr.type, k))
    return (node.domain, node.op_type, node.overload, len(node.outputs),
            tuple(id(v) if v is not None else None for v in node.inputs), tuple(attrs))


def _cse_graph(graph: ir.Graph) -> int:
    seen: dict[tuple, ir.Node] = {}
    count = 0
    for node in list(graph):
        if node.op_type in _RANDOM:
            continue
        key = _key(node)
        if key is None:
            continue
        first = seen.setdefault(key, node)
        if first is node:
            continue
        if any(o.is_graph_output() for o in node.outputs):
            continue  # the output's name is part of the signature; keep the node
        ir.convenience.replace_all_uses_with(node.outputs, first.outputs)
        graph.remove(node, safe=True)
        count += 1
    return count


@register("cse", "merge nodes that compute the same thing from the same inputs (subgraphs too)", "cleanup")
def run(model: ir.Model, ctx: PassContext) -> int:
    return sum(_cse_graph(g) for g in graphs(model))
