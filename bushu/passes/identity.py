"""Identity elimination that is safe in subgraphs (used by the no-op passes).

``y = Identity(x)`` is removed and ``y``'s readers read ``x``. When ``y`` is a graph output, ``x`` takes ``y``'s name
instead, which is impossible, so the node is kept, when ``x`` is
1. a graph input or an initializer (a name can't be both input and output),
2. already an output of some graph (it would lose its own name), or
3. not computed in the same graph (a value from an outer scope: a body can't output it under another name).
onnx-ir's ``IdentityEliminationPass`` misses cases 2 and 3 and raises inside If bodies (silero VAD).
"""

from __future__ import annotations

import onnx_ir as ir

from .registry import graphs


def _removable(node: ir.Node) -> bool:
    if node.op_type != "Identity" or node.domain != "" or len(node.inputs) != 1 or node.inputs[0] is None:
        return False
    x, y = node.inputs[0], node.outputs[0]
    if not y.is_graph_output():
        return True
    producer = x.producer()
    return not (x.is_graph_input() or x.is_initializer() or x.is_graph_output() or producer is None
                or producer.graph is not node.graph)


def eliminate_identities(model: ir.Model) -> int:
    count = 0
    for g in graphs(model):
        for node in list(g):
            if not _removable(node):
                continue
            x, y = node.inputs[0], node.outputs[0]
            if x.type is None:
                x.type = y.type
            if x.shape is None:
                x.shape = y.shape
            was_output = y.is_graph_output()
            ir.convenience.replace_all_uses_with(y, x, replace_graph_outputs=True)
            if was_output:
                x.name = y.name
            g.remove(node, safe=True)
            count += 1
    return count
