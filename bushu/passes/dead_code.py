"""Remove what no graph output depends on.

Cases:
1. Nodes none of whose outputs is used (every graph; onnx-ir's ``RemoveUnusedNodesPass``).
2. Initializers nobody reads, in the main graph (onnx-ir) and in subgraphs (onnx-ir leaves those).
3. Initializers also listed as graph inputs (old exports, IR < 4): the listing goes, so engines may fold them.
The model's real inputs and outputs are kept even when unused: the signature is a contract with its callers.
"""

from __future__ import annotations

import onnx_ir as ir
from onnx_ir.passes.common import (
    RemoveInitializersFromInputsPass,
    RemoveUnusedNodesPass,
)

from .registry import PassContext, graphs, register


def _size(model: ir.Model) -> int:
    return sum(len(g) + len(g.initializers) + len(g.inputs) for g in graphs(model))


@register("dead-code", "remove unused nodes, initializers and initializer-inputs", "cleanup")
def run(model: ir.Model, ctx: PassContext) -> int:
    before = _size(model)
    RemoveUnusedNodesPass()(model)
    # Readers are found by walking the nodes that are in the graphs: a value's use list can still hold a node
    # that a rewrite detached.
    read = {id(v) for g in graphs(model) for n in g for v in n.inputs if v is not None}
    for g in graphs(model)[1:]:
        for name, v in list(g.initializers.items()):
            if id(v) not in read and not v.is_graph_output():
                del g.initializers[name]
    if model.ir_version >= 4:
        RemoveInitializersFromInputsPass()(model)
    return before - _size(model)
