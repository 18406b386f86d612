"""Bind symbolic dims and run ONNX shape inference on a copy of a model.

``bind_and_infer(model, shapes)`` never touches ``model``: it clones the graph (tensors are shared, not copied),
binds the dims on the clone, and returns a new model whose values carry the inferred dtypes and shapes, plus the
error text when ONNX shape inference failed (the model is then returned with the shapes it already had).

Bindings (as :func:`bushu.inputs.parse_shape_args` returns them): ``{"x": (1, 3, 48, 320)}`` fixes the whole shape
of graph input ``x``; ``{"batch": 8}`` replaces the symbolic dim named ``batch`` wherever it occurs (inputs,
outputs and value_info of every graph). A binding that names nothing in the model, has the wrong rank or
contradicts a static dim is refused with a :class:`~bushu.errors.BushuError`.
"""

from __future__ import annotations

from collections.abc import Mapping

import onnx
import onnx.version_converter
import onnx_ir as ir

from ..errors import BushuError, first_line

Bindings = Mapping[str, "tuple[int, ...] | int"]

# Initializers above this size become typed graph inputs in the copy handed to onnx.shape_inference, so the
# protobuf it serializes stays small (weights never cross the 2 GB limit); inference needs only their shapes.
_BIG_TENSOR_BYTES = 1024


def dims(value: ir.Value) -> tuple[int | str | None, ...] | None:
    """A value's shape as plain Python: ints for static dims, names for symbolic ones, ``None`` for unknown dims
    (including the ``-1`` some exporters write); ``None`` when even the rank is unknown."""
    if value.shape is None:
        return None
    out: list[int | str | None] = []
    for d in value.shape:
        if isinstance(d, int):
            out.append(d if d >= 0 else None)
        else:
            out.append(d.value or None)
    return tuple(out)


def _all_values(model: ir.Model):
    for graph in model.graphs():
        yield from graph.inputs
        yield from graph.outputs
        for node in graph:
            yield from node.outputs


def _check_binding(name: str, value: ir.Value, want: tuple[int, ...]) -> None:
    have = dims(value)
    if any(d <= 0 for d in want):
        raise BushuError(f"--shape {name}: dims must be positive, got {'x'.join(map(str, want))}")
    if have is None:
        return
    if len(have) != len(want):
        raise BushuError(
            f"--shape {name} has rank {len(want)} but the model's input '{name}' has rank {len(have)} "
            f"({'x'.join('?' if d is None else str(d) for d in have)})"
        )
    for i, (h, w) in enumerate(zip(have, want)):
        if isinstance(h, int) and h != w:
            raise BushuError(f"--shape {name}: dim {i} of '{name}' is {h} in the model, not {w}: fix the --shape")


def bind(model: ir.Model, shapes: Bindings | None) -> None:
    """Apply ``shapes`` to ``model`` in place (call it on a copy). See the module docstring."""
    if not shapes:
        return
    inputs = {v.name: v for v in model.graph.inputs if v.name not in model.graph.initializers}
    symbols = {d for v in _all_values(model) for d in (dims(v) or ()) if isinstance(d, str)}
    for name, want in shapes.items():
        if isinstance(want, tuple):
            if name not in inputs:
                raise BushuError(f"--shape {name}: the model has no input '{name}' (its inputs: {', '.join(inputs)})")
            _check_binding(name, inputs[name], want)
            inputs[name].shape = ir.Shape(want)
        elif name not in symbols:
            known = ", ".join(sorted(symbols)) or "none"
            raise BushuError(
                f"--shape {name}={want}: the model has no symbolic dim '{name}' (its symbolic dims: {known}); "
                f"bind a whole input with --shape INPUT:1x3x224x224"
            )
        elif int(want) <= 0:
            raise BushuError(f"--shape {name}={want}: a dim must be positive")
    sizes = {k: int(v) for k, v in shapes.items() if not isinstance(v, tuple)}
    if not sizes:
        return
    for value in _all_values(model):
        if value.shape is not None and any(not isinstance(d, int) and d.value in sizes for d in value.shape):
            value.shape = ir.Shape([d if isinstance(d, int) or d.value not in sizes else sizes[d.value]
                                    for d in value.shape])


def _forget_declared_outputs(model: ir.Model) -> None:
    """Make the open dims of every declared non-input shape anonymous, in place (on the copy).

    ONNX inference merges what it infers into what the file declares and keeps the declaration on a conflict:
    PP-OCR cls declares its output ``[-1, 2]`` and rec ``[p2o.DynamicDimension.2, ...]``, which would hide the
    dims inferred from the bound inputs. Graph outputs lose their declared shape altogether: inference does not
    refine a declared graph output.
    """
    for graph in model.graphs():
        for value in graph.outputs:
            if value.shape is not None and not _is_static(value):
                value.shape = None
        for value in (v for n in graph for v in n.outputs):
            if value.shape is not None and not _is_static(value):
                value.shape = ir.Shape([d if isinstance(d, int) and d >= 0 else None for d in value.shape])


def _drop_big_initializers(model: ir.Model) -> None:
    """Turn large initializers of the (cloned) main graph into typed inputs: see ``_BIG_TENSOR_BYTES``."""
    graph = model.graph
    for name, value in list(graph.initializers.items()):
        tensor = value.const_value
        if tensor is None or tensor.nbytes > _BIG_TENSOR_BYTES:
            if tensor is not None:
                value.shape = value.shape or ir.Shape(tensor.shape)
                value.dtype = value.dtype or tensor.dtype
            graph.initializers.pop(name)
            if value not in graph.inputs:
                graph.inputs.append(value)


def _infer(proto: onnx.ModelProto) -> onnx.ModelProto:
    # strict_mode=False: a node inference can't handle (a custom op) leaves its outputs unknown instead of failing
    # the whole model; check_type=False: a model the engines accept is not refused here.
    return onnx.shape_inference.infer_shapes(proto, check_type=False, strict_mode=False, data_prop=True)


def _type_of(vi: onnx.ValueInfoProto) -> tuple[ir.DataType | None, ir.Shape | None]:
    tt = vi.type.tensor_type
    dtype = ir.DataType(tt.elem_type) if tt.elem_type else None
    if not tt.HasField("shape"):
        return dtype, None
    return dtype, ir.Shape([d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim])


def _apply_types(graph: ir.Graph, proto: onnx.GraphProto) -> None:
    """Copy the dtypes and shapes of ``proto`` (the inferred serialization of ``graph``) onto ``graph``'s values,
    walking bodies in parallel so sibling bodies that reuse a name can't mix."""
    types = {vi.name: vi for vi in [*proto.input, *proto.output, *proto.value_info]}
    for value in [*graph.inputs, *(v for n in graph for v in n.outputs)]:
        if value.name in types:
            dtype, shape = _type_of(types[value.name])
            value.dtype = dtype or value.dtype
            value.shape = shape if shape is not None else value.shape
    for node, node_proto in zip(graph, proto.node):
        bodies = {a.name: a for a in node_proto.attribute}
        for attr in node.attributes.values():
            if attr.type == ir.AttributeType.GRAPH:
                _apply_types(attr.as_graph(), bodies[attr.name].g)
            elif attr.type == ir.AttributeType.GRAPHS:
                for g, gp in zip(attr.as_graphs(), bodies[attr.name].graphs):
                    _apply_types(g, gp)


def _static_shapes(proto: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    """Value name -> fully static shape, over every graph of ``proto``."""
    out: dict[str, tuple[int, ...]] = {}
    graphs = [proto.graph]
    while graphs:
        g = graphs.pop()
        for vi in [*g.input, *g.output, *g.value_info]:
            shape = _type_of(vi)[1]
            if shape is not None and shape.is_static() and all(d >= 0 for d in shape):
                out[vi.name] = tuple(shape)
        for node in g.node:
            for a in node.attribute:
                graphs.extend([a.g] if a.type == onnx.AttributeProto.GRAPH else a.graphs)
    return out


def _is_static(value: ir.Value) -> bool:
    return value.shape is not None and all(isinstance(d, int) and d >= 0 for d in value.shape)


def _non_static(model: ir.Model) -> list[ir.Value]:
    return [v for g in model.graphs() for n in g for v in n.outputs if not _is_static(v)]


# ONNX's data propagation (shape arithmetic through Shape/Slice/Concat/Cast...) is registered for recent op
# versions only: on PP-OCR's opset-12 graphs it leaves every Reshape after a computed shape unknown, while the
# same graph converted to opset 17 infers completely. The converted copy only lends shapes, by value name.
_DATA_PROP_OPSET = 17


def bind_and_infer(model: ir.Model, shapes: Bindings | None = None) -> tuple[ir.Model, str | None]:
    """A copy of ``model`` with ``shapes`` bound and shapes inferred (data propagation on), and the error text
    when inference failed. Large main-graph initializers are typed inputs in the copy (values gone, shapes kept);
    nodes, their names and order, attributes and Constant tensors are as in ``model``. Where inference at the
    model's own opset leaves a shape open, a copy converted to opset 17 may supply it (matched by value name)."""
    work = model.clone()
    bind(work, shapes)
    _forget_declared_outputs(work)
    _drop_big_initializers(work)
    proto = ir.serde.serialize_model(work)
    try:
        inferred = _infer(proto)
    except Exception as e:  # onnx raises InferenceError, ValidationError or RuntimeError by cause
        return work, f"ONNX shape inference failed: {first_line(e)}"
    _apply_types(work.graph, inferred.graph)
    if _non_static(work) and model.opset_imports.get("", _DATA_PROP_OPSET) < _DATA_PROP_OPSET:
        try:
            _lend(work, _static_shapes(_infer(onnx.version_converter.convert_version(proto, _DATA_PROP_OPSET))))
        except Exception:  # the converter lacks adapters for some ops: keep what the first inference found
            pass
    return work, None


def _lend(model: ir.Model, shapes: dict[str, tuple[int, ...]]) -> None:
    """Give the values whose shape is still open the static shape found for their name by another inference."""
    for v in _non_static(model):
        if v.name in shapes:
            v.shape = ir.Shape(shapes[v.name])
