"""ONNX shape inference over the whole model, keeping symbolic dims (``batch``, ``seq``) as they are.

Does what onnx-ir's ``ShapeInferencePass`` does (hide initializers over 1 KB from ``onnx.shape_inference`` so
models over 2 GB work, infer non-strict so one op it can't infer doesn't stop the rest, then copy every inferred
type and shape onto the value of the same name) without its costly step: it deserializes the whole inferred model
to compare it. Here each inferred ``ValueInfoProto`` is compared with the value as it is, field by field, and only
the ones that differ are deserialized. Returns the number of values whose type or shape became better known.
"""

from __future__ import annotations

import onnx
import onnx_ir as ir
from onnx_ir.passes.common import _c_api_utils

from .registry import PassContext, graphs, register


def _signature(model: ir.Model) -> dict[int, str]:
    sig = {}
    for g in graphs(model):
        for v in [*g.inputs, *(o for n in g for o in n.outputs)]:
            sig[id(v)] = f"{v.type}|{v.shape}"
    return sig


def _proto_graphs(graph: onnx.GraphProto) -> list[onnx.GraphProto]:
    """``graph`` and its subgraphs, in the order :func:`.registry.graphs` lists the IR graphs."""
    found = [graph]
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                found += _proto_graphs(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    found += _proto_graphs(g)
    return found


def _infos(graphs_: list[onnx.GraphProto]) -> dict[str, onnx.ValueInfoProto]:
    """Name -> inferred value info over ``graphs_`` (the first of a name wins, as in onnx-ir's value mapping)."""
    out: dict[str, onnx.ValueInfoProto] = {}
    for g in graphs_:
        for vi in [*g.input, *g.output, *g.value_info]:
            out.setdefault(vi.name, vi)
    return out


def _same(value: ir.Value, info: onnx.ValueInfoProto) -> bool:
    """True when ``info`` holds exactly the tensor type and shape ``value`` already has (nothing to merge)."""
    if info.type.WhichOneof("value") != "tensor_type" or value.dtype is None:
        return False
    t = info.type.tensor_type
    if value.dtype != ir.DataType(t.elem_type):
        return False
    if not t.HasField("shape"):
        return True  # nothing inferred about the shape: it is left as it is
    shape = value.shape
    if shape is None or len(shape) != len(t.shape.dim):
        return False
    for d, mine in zip(t.shape.dim, shape):
        kind = d.WhichOneof("value")
        if kind == "dim_value":
            if not isinstance(mine, int) or mine != d.dim_value:
                return False
        elif isinstance(mine, int) or mine.value != (d.dim_param if kind == "dim_param" else None):
            return False
    return True


def _merge(model: ir.Model, inferred: onnx.ModelProto) -> None:
    """Copy inferred types and shapes onto ``model``'s values, as onnx-ir's merge does (an inferred shape or type
    that differs replaces the value's)."""
    ir_graphs, proto_graphs = graphs(model), _proto_graphs(inferred.graph)
    if len(ir_graphs) != len(proto_graphs):  # can't pair the graphs: onnx-ir's full merge
        from onnx_ir.passes.common.shape_inference import _merge_func

        _merge_func(model, inferred)
        return
    for i, graph in enumerate(ir_graphs):
        infos = _infos(_proto_graphs(proto_graphs[i]))
        for name, value in ir.convenience.create_value_mapping(graph).items():
            info = infos.get(name)
            if info is None or _same(value, info):
                continue
            got = ir.serde.deserialize_value_info_proto(info, None)
            if got.shape is not None and value.shape != got.shape:
                value.shape = got.shape
            if got.dtype is not None and value.dtype != got.dtype:
                value.dtype = got.dtype


@register("shape-inference", "infer value types and shapes, symbolic dims kept", "cleanup")
def run(model: ir.Model, ctx: PassContext) -> int:
    before = _signature(model)
    try:
        inferred = _c_api_utils.call_onnx_api(
            lambda proto: onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=False,
                                                            data_prop=True), model)
    except Exception:  # inference that fails leaves the model as it is (as onnx-ir's pass does)
        return 0
    _merge(model, inferred)
    after = _signature(model)
    return sum(1 for k, s in after.items() if before.get(k) != s)
