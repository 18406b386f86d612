"""Shapes ONNX shape inference leaves unknown, from ONNX Runtime's symbolic shape inference.

``onnx.shape_inference`` gives up on a Reshape to a computed shape (``Reshape(x, Concat(Shape(x)[0], ..., 32))``),
and every value after it loses its shape: the TorchScript exports of transformers are full of them. ONNX Runtime's
``SymbolicShapeInference`` follows such shape arithmetic. Passes that need a shape ask here when onnx-ir has none;
only for models under 1 GB (it works on a protobuf copy).
"""

from __future__ import annotations

import onnx_ir as ir

from .. import ir as bir

SIZE_LIMIT = 1 << 30


def ort_shapes(model: ir.Model) -> dict[str, list[int | str | None]]:
    """Value name → shape (ints for static dims, names for symbolic ones) for the main graph; empty if it fails."""
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    if bir.weight_bytes(model) > SIZE_LIMIT:
        return {}
    try:
        proto = SymbolicShapeInference.infer_shapes(bir.to_proto(model), auto_merge=True)
    except Exception:  # noqa: BLE001 -- it gives up on some ops; then we know no more than before
        return {}
    out = {}
    for v in proto.graph.value_info:
        t = v.type.tensor_type
        if t.HasField("shape"):
            out[v.name] = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim]
    return out


def fill_missing_shapes(model: ir.Model) -> int:
    """Give the main graph's values with no shape the one symbolic inference finds; returns how many."""
    missing = [o for n in model.graph for o in n.outputs if o.shape is None and o.name]
    if not missing:
        return 0
    table = ort_shapes(model)
    count = 0
    for v in missing:
        if v.name in table:
            v.shape = ir.Shape(table[v.name])
            count += 1
    return count
