"""Per-node FLOPs and bytes over every graph of a model (``node_costs``), after binding and shape inference.

Bytes moved by a node = bytes of the tensors it reads (inputs, weights included) + bytes it writes (outputs).
Constant nodes cost nothing: engines materialize them once at load time, and their readers count the bytes.

Control flow: the nodes inside If/Loop/Scan bodies are listed right after their parent, with ``graph`` naming the
body (``If_0.then_branch``); they are not added to the totals on their own. Their parent carries them: an If costs
its costlier branch (an upper bound for one run), a Loop its body times a trip count that is a constant, a Scan
its body times the scan length. A parent with an unknown body or trip count is unknown itself.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import onnx_ir as ir

from .cost import UnknownCost, flops
from .result import NodeCost
from .shapes import Bindings, bind_and_infer, dims

CONTROL_FLOW = frozenset({"If", "Loop", "Scan"})


def node_costs(model: ir.Model, shapes: Bindings | None = None) -> list[NodeCost]:
    """FLOPs and bytes of every node of ``model`` in topological order (bodies after their parent), named as in
    the model, with ``shapes`` binding symbolic dims first (see :mod:`bushu.inspect.shapes`). A figure that
    can't be computed is ``None`` and ``note`` says why. ``model`` is not modified."""
    return costs_of_inferred(bind_and_infer(model, shapes)[0])


def costs_of_inferred(model: ir.Model) -> list[NodeCost]:
    """:func:`node_costs` of a model whose shapes are already bound and inferred."""
    return _graph_costs(model.graph, "")


def static_shape(value: ir.Value | None) -> tuple[int, ...] | None:
    d = dims(value) if value is not None else None
    return d if d is not None and all(isinstance(x, int) for x in d) else None  # type: ignore[return-value]


def nbytes(value: ir.Value) -> int | None:
    shape = static_shape(value)
    if shape is None or value.dtype is None:
        return None
    return math.ceil(math.prod(shape) * value.dtype.itemsize)


def _describe_open(values: list[ir.Value]) -> str:
    """Names the first value without a static shape or a dtype, and what it has instead."""
    for v in values:
        d = dims(v)
        if d is None:
            return f"'{v.name}' has no inferred shape"
        if not all(isinstance(x, int) for x in d):
            return f"'{v.name}' has shape [{'x'.join('?' if x is None else str(x) for x in d)}]"
        if v.dtype is None:
            return f"'{v.name}' has no inferred dtype"
    return ""


def subgraphs(node: ir.Node) -> list[tuple[str, ir.Graph]]:
    out = []
    for attr in node.attributes.values():
        if attr.type == ir.AttributeType.GRAPH:
            out.append((attr.name, attr.as_graph()))
        elif attr.type == ir.AttributeType.GRAPHS:
            out.extend((f"{attr.name}[{i}]", g) for i, g in enumerate(attr.as_graphs()))
    return out


def _graph_costs(graph: ir.Graph, path: str) -> list[NodeCost]:
    out: list[NodeCost] = []
    for index, node in enumerate(graph):
        bodies = {}
        inner: list[NodeCost] = []
        for attr_name, sub in subgraphs(node):
            body_path = f"{path}/" if path else ""
            body_path += f"{node.name or f'{node.op_type}#{index}'}.{attr_name}"
            body = _graph_costs(sub, body_path)
            bodies[attr_name] = [c for c in body if c.graph == body_path]
            inner.extend(body)
        f, read, written, note = _control_cost(node, bodies) if node.op_type in CONTROL_FLOW else _node_cost(node)
        out.append(NodeCost(node.name or "", node.op_type, f, read, written, _out_shapes(node), graph=path,
                            index=index, note=note))
        out.extend(inner)
    return out


def _out_shapes(node: ir.Node) -> tuple:
    return tuple(dims(v) for v in node.outputs)


def _node_cost(node: ir.Node) -> tuple[int | None, int | None, int | None, str | None]:
    """(flops, bytes read, bytes written, note) of a node without subgraphs."""
    if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
        return 0, 0, 0, None
    ins = [v for v in node.inputs if v is not None]
    reads = [nbytes(v) for v in ins]
    writes = [nbytes(v) for v in node.outputs]
    read = None if None in reads else sum(reads)  # type: ignore[arg-type]
    written = None if None in writes else sum(writes)  # type: ignore[arg-type]
    open_note = _describe_open(ins + list(node.outputs)) if read is None or written is None else ""
    if node.domain not in ("", "ai.onnx", "com.microsoft"):
        return None, read, written, f"no cost formula for {node.domain}.{node.op_type}"
    try:
        f = flops(node.op_type, node.attributes, [static_shape(v) for v in node.inputs],
                  [static_shape(v) for v in node.outputs])
    except UnknownCost as e:
        detail = _describe_open(ins + list(node.outputs)) if "shape" in str(e) else ""
        return None, read, written, f"{e}" + (f" ({detail})" if detail else "")
    return f, read, written, (f"bytes unknown: {open_note}" if open_note else None)


def _sum(costs: list[NodeCost], field: str) -> int | None:
    values = [getattr(c, field) for c in costs]
    return None if None in values else sum(values)


def _control_cost(node: ir.Node, bodies: Mapping[str, list[NodeCost]]) -> tuple:
    totals = {name: (_sum(b, "flops"), _sum(b, "bytes_read"), _sum(b, "bytes_written")) for name, b in bodies.items()}
    unknown = [name for name, t in totals.items() if t[0] is None]
    if unknown:
        n = sum(1 for name in unknown for c in bodies[name] if c.flops is None)
        return None, None, None, f"{n} node(s) in {', '.join(unknown)} have unknown cost"
    if node.op_type == "If":
        name = max(totals, key=lambda k: totals[k][0])  # type: ignore[arg-type, return-value]
        return (*totals[name], f"costlier branch: {name}")
    body = totals["body"]
    if node.op_type == "Loop":
        trips = _const_int(node.inputs[0] if node.inputs else None)
        if trips is None:
            return None, None, None, "trip count known only at run time"
        note = f"body x {trips} iterations (at most: the condition may stop it sooner)"
    else:
        trips = _scan_length(node)
        if trips is None:
            return None, None, None, "scan length unknown"
        note = f"body x {trips} scan steps"
    return (*(None if t is None else t * trips for t in body), note)


def _const_int(value: ir.Value | None) -> int | None:
    if value is None:
        return None
    tensor = value.const_value
    producer = value.producer()
    if tensor is None and producer is not None and producer.op_type == "Constant" and "value" in producer.attributes:
        tensor = producer.attributes["value"].as_tensor()
    if tensor is None or math.prod(tensor.shape) != 1:
        return None
    return int(tensor.numpy().reshape(()))


def _scan_length(node: ir.Node) -> int | None:
    n_scan = node.attributes.get_int("num_scan_inputs", 0)
    if not n_scan:
        return None
    first = node.inputs[len(node.inputs) - n_scan]
    axes = node.attributes.get_ints("scan_input_axes", None) or [0]
    shape = static_shape(first)
    return None if shape is None else shape[axes[0]]
