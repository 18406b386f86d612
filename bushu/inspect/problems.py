"""Structural problems of a model: unused initializers and inputs, dead nodes.

A node is dead when none of its outputs reaches a graph output, directly or through other nodes, including
through the bodies of live If/Loop/Scan nodes (outer-scope values are shared objects in onnx-ir, so a body's use
of an outer value counts). Nodes inside the body of a dead node are not listed again.
"""

from __future__ import annotations

import dataclasses

import onnx_ir as ir

from .walk import subgraphs


@dataclasses.dataclass(frozen=True)
class Problem:
    """One finding. ``kind``: ``unused-initializer``, ``unused-input``, ``dead-node``, ``unsupported-op``,
    ``conversion-failed`` or ``shape-inference``; ``subject``: the tensor, node or op type concerned;
    ``engine``: the engine an ``unsupported-op`` / ``conversion-failed`` finding is about."""

    kind: str
    subject: str
    detail: str = ""
    engine: str | None = None

    def __str__(self) -> str:
        where = f"[{self.engine}] " if self.engine else ""
        return f"{self.kind}: {where}{self.subject}" + (f" ({self.detail})" if self.detail else "")


def unused_values(model: ir.Model) -> list[Problem]:
    """Initializers (in every graph) and main-graph inputs that no node reads and no graph returns."""
    out = []
    for graph in model.graphs():
        for name, value in graph.initializers.items():
            if not value.uses() and not value.is_graph_output():
                size = value.const_value.nbytes if value.const_value is not None else 0
                where = "" if graph is model.graph else f"in graph '{graph.name}', "
                out.append(Problem("unused-initializer", name, f"{where}{size} bytes"))
    for value in model.graph.inputs:
        if value.name not in model.graph.initializers and not value.uses() and not value.is_graph_output():
            out.append(Problem("unused-input", value.name or "", "no node reads it"))
    return out


def dead_nodes(model: ir.Model) -> list[Problem]:
    """Nodes whose outputs never reach an output of their graph (see the module docstring)."""
    live: set[ir.Node] = set()
    stack: list[ir.Value] = list(model.graph.outputs)
    while stack:
        node = stack.pop().producer()
        if node is None or node in live:
            continue
        live.add(node)
        stack.extend(v for v in node.inputs if v is not None)
        for _, body in subgraphs(node):
            stack.extend(body.outputs)
    out = []
    graphs = [model.graph]
    while graphs:
        graph = graphs.pop(0)
        for index, node in enumerate(graph):
            if node in live:
                graphs.extend(body for _, body in subgraphs(node))
            else:
                where = "" if graph is model.graph else f"in graph '{graph.name}'"
                out.append(Problem("dead-node", node.name or f"{node.op_type} #{index}",
                                   f"{node.op_type}{', ' + where if where else ''}: no output reaches a graph output"))
    return out
