"""Small graph edits shared by the passes."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir


def const(value: ir.Value | None) -> np.ndarray | None:
    """The constant array behind ``value`` (an initializer or a Constant node's output), else None."""
    if value is None:
        return None
    tensor = ir.convenience.get_const_tensor(value)
    return None if tensor is None else tensor.numpy()


def static_shape(value: ir.Value | None) -> tuple[int, ...] | None:
    if value is None or value.shape is None or not all(isinstance(d, int) for d in value.shape):
        return None
    return tuple(int(d) for d in value.shape)


def to_identity(node: ir.Node, source: ir.Value) -> None:
    """Replace single-output ``node`` by ``Identity(source)`` under the same output name; the Identity pass then
    removes it (it knows when an Identity must stay to name a graph output)."""
    graph = node.graph
    assert graph is not None
    ident = ir.node("Identity", [source], name=node.name)
    ir.convenience.replace_nodes_and_values(graph, node, [node], [ident], [node.outputs[0]], [ident.outputs[0]])


def new_initializer(graph: ir.Graph, array: np.ndarray, name: str) -> ir.Value:
    """A new initializer holding ``array`` (a new tensor: the old one may be shared with a snapshot)."""
    fresh = ir.Value(name=_unique(graph, name), const_value=ir.tensor(array))
    fresh.type = ir.TensorType(ir.DataType.from_numpy(array.dtype))
    fresh.shape = ir.Shape(array.shape)
    graph.register_initializer(fresh)
    return fresh


def _unique(graph: ir.Graph, name: str) -> str:
    if name not in graph.initializers:
        return name
    i = 1
    while f"{name}_{i}" in graph.initializers:
        i += 1
    return f"{name}_{i}"
