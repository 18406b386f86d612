"""Which ONNX nodes each engine kernel ran: the map from an engine's fused kernels back to the model's nodes.

Engines fuse and rename: ONNX Runtime runs ``FusedConv`` for Conv+BatchNormalization+Relu, names NCHWc
convolutions after their output tensor plus ``_nchwc``, and inserts ``ReorderInput``/``ReorderOutput`` layout
nodes; OpenVINO lists the ONNX names a fused layer came from in ``originalLayersNames`` but may lose the head of
the chain (a Conv whose weights took in a BatchNormalization is renamed). Each engine backend names *anchors* for
each kernel — ONNX nodes it certainly ran — and :func:`attribute` gives the kernel the anchors plus every node
upstream of them that no kernel names (the fused-away part of the chain), stopping at nodes another kernel owns
and at graph inputs. Constant nodes are never attributed (they are folded at load time and cost nothing per run).
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


def attribute(model: ir.Model, anchors: Sequence[Sequence[str]]) -> list[tuple[str, ...]]:
    """For each kernel (given as its anchor node names, in execution order), the ONNX nodes it ran."""
    nodes = {n.name: n for n in model.graph}
    owner: dict[str, int] = {}
    for k, names in enumerate(anchors):
        for name in names:
            if name in nodes:
                owner.setdefault(name, k)
    covered: list[list[str]] = [[] for _ in anchors]
    for k, names in enumerate(anchors):
        stack = [n for n in names if owner.get(n) == k]
        while stack:
            node = nodes[stack.pop()]
            covered[k].append(node.name)
            for v in node.inputs:
                p = v.producer() if v is not None else None
                if p is None or p.graph is not model.graph or p.op_type == "Constant" or p.name in owner:
                    continue
                owner[p.name] = k
                stack.append(p.name)
    order = {n.name: i for i, n in enumerate(model.graph)}
    return [tuple(sorted(c, key=order.__getitem__)) for c in covered]
