"""Which ONNX nodes each engine kernel ran: the map from an engine's fused kernels back to the model's nodes.

Engines fuse and rename: ONNX Runtime runs ``FusedConv`` for Conv+BatchNormalization+Relu, names NCHWc
convolutions after their output tensor plus ``_nchwc``, and inserts ``ReorderInput``/``ReorderOutput`` layout
nodes; OpenVINO lists the ONNX names a fused layer came from in ``originalLayersNames`` but may lose the head of
the chain (a Conv whose weights took in a BatchNormalization is renamed) and the activation nodes it fused behind
it. Each engine backend names *anchors* for each kernel — ONNX nodes it certainly ran — and :func:`attribute`
gives every node no kernel names to a neighbouring kernel by the engine's fusion pattern. Constant nodes are
never attributed (they are folded at load time and cost nothing per run).
"""

from __future__ import annotations

from collections.abc import Sequence

import onnx_ir as ir


def name_nodes(model: ir.Model) -> ir.Model:
    """Give every unnamed node of the main graph a unique name (``<op>_<index>``), in place, so that engine kernels,
    the cost table and the report all say the same name."""
    taken = {n.name for n in model.graph if n.name}
    for i, node in enumerate(model.graph):
        if not node.name:
            name = f"{node.op_type}_{i}"
            while name in taken:
                name += "_"
            node.name = name
            taken.add(name)
    return model


def producers(model: ir.Model) -> dict[str, ir.Node]:
    """ONNX tensor name → the main-graph node that produces it."""
    return {v.name: node for node in model.graph for v in node.outputs if v.name}


# Heavy ops whose name OpenVINO drops when it folds a following BatchNormalization/scale into their weights.
_HEADS = {"Conv", "ConvTranspose", "MatMul", "Gemm"}


def attribute(model: ir.Model, anchors: Sequence[Sequence[str]], *, renamed_heads: bool = False) -> list[tuple[str, ...]]:
    """For each kernel (given as its anchor node names, in execution order), the ONNX nodes it ran.

    Default (ONNX Runtime, whose anchors are the tail of each fused chain): an unnamed node joins the kernel
    downstream of it, walking back from the anchors. ``renamed_heads`` (OpenVINO, whose layers name the middle of
    a chain and lose both its head and the activation nodes it fused behind): an unnamed Conv/MatMul/Gemm joins
    the kernel it feeds; any other unnamed node joins the kernel of the node it reads from; what is left joins
    the kernel downstream.
    """
    nodes = {n.name: n for n in model.graph}
    owner: dict[str, int] = {}
    for k, names in enumerate(anchors):
        for name in names:
            if name in nodes:
                owner.setdefault(name, k)

    def free(p: ir.Node | None) -> bool:
        return p is not None and p.graph is model.graph and p.op_type != "Constant" and p.name not in owner

    if renamed_heads:
        for node in model.graph:
            if node.name in owner:
                for v in node.inputs:
                    p = v.producer() if v is not None else None
                    if free(p) and p.op_type in _HEADS:
                        owner[p.name] = owner[node.name]
        for node in model.graph:  # topological order: a chain of unnamed nodes follows its first named producer
            if free(node):
                src = next((v.producer() for v in node.inputs if v is not None and v.producer() is not None
                            and v.producer().name in owner), None)
                if src is not None:
                    owner[node.name] = owner[src.name]
    covered: list[list[str]] = [[] for _ in anchors]
    for name, k in owner.items():
        covered[k].append(name)
    for k in range(len(anchors)):
        stack = list(covered[k])
        while stack:
            node = nodes[stack.pop()]
            for v in node.inputs:
                p = v.producer() if v is not None else None
                if free(p):
                    owner[p.name] = k
                    covered[k].append(p.name)
                    stack.append(p.name)
    order = {n.name: i for i, n in enumerate(model.graph)}
    return [tuple(sorted(set(c), key=order.__getitem__)) for c in covered]
