"""ONNX shape inference over the whole model, keeping symbolic dims (``batch``, ``seq``) as they are.

Reuses onnx-ir's ``ShapeInferencePass`` (which hides large initializers from ``onnx.shape_inference`` so models
over 2 GB work); non-strict, so one op it can't infer doesn't stop the rest. Returns the number of values whose
type or shape became better known.
"""

from __future__ import annotations

import onnx_ir as ir
from onnx_ir.passes.common import ShapeInferencePass

from .registry import PassContext, graphs, register


def _signature(model: ir.Model) -> dict[int, str]:
    sig = {}
    for g in graphs(model):
        for v in [*g.inputs, *(o for n in g for o in n.outputs)]:
            sig[id(v)] = f"{v.type}|{v.shape}"
    return sig


@register("shape-inference", "infer value types and shapes, symbolic dims kept", "cleanup")
def run(model: ir.Model, ctx: PassContext) -> int:
    before = _signature(model)
    ShapeInferencePass(strict_mode=False)(model)
    after = _signature(model)
    return sum(1 for k, s in after.items() if before.get(k) != s)
