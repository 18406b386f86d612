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


def _vague(shape: ir.Shape | None) -> bool:
    """No shape, or one with a dim onnx inference named itself (``unk__3``): names that relate to nothing."""
    return shape is None or any(isinstance(d, ir.SymbolicDim) and (d.value is None or d.value.startswith("unk__"))
                                for d in shape)


def fill_missing_shapes(model: ir.Model) -> list[tuple[ir.Value, ir.Shape | None]]:
    """Give the main graph's values with no shape, or with dims onnx inference named ``unk__N``, the shape symbolic
    inference finds (its dim names are consistent: equal names are equal dims); returns (value, old shape) of
    each one changed, for :func:`restore`."""
    vague = [o for n in model.graph for o in n.outputs if o.name and _vague(o.shape)]
    if not vague:
        return []
    table = ort_shapes(model)
    changed = []
    for v in vague:
        found = table.get(v.name)
        if found is not None and (v.shape is None or len(found) == len(v.shape)):
            changed.append((v, v.shape))
            v.shape = ir.Shape(found)
    return changed


def restore(changed: list[tuple[ir.Value, ir.Shape | None]]) -> None:
    for v, shape in changed:
        v.shape = shape
