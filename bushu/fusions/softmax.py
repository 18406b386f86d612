"""Softmax from its decomposition.

    y = Exp(x) / ReduceSum(Exp(x), axes=[a], keepdims=1)                 == Softmax(x, axis=a)
    y = Exp(x - ReduceMax(x, [a])) / ReduceSum(Exp(x - ReduceMax(x, [a])), [a])   (the stable form, same result)

Softmax over one axis is the opset-13 meaning; before opset 13 Softmax flattens the dims from ``axis`` on, which
is the same thing only for the last axis, so older models fuse only a last-axis softmax.
"""

from __future__ import annotations

import onnx_ir as ir
from onnxscript.rewriter import pattern

from ..passes.registry import PassContext, register
from . import base
from .layer_norm import _axes


class Softmax(base.Fusion):
    op_type, since = "Softmax", 1

    def pattern(self, op, x):
        shifted = pattern.OrValue(
            [op.Sub(x, op.ReduceMax(x, _allow_other_inputs=True, _outputs=["mx"])), x], tag_var="stable",
            tag_values=[True, False])
        e = op.Exp(shifted)
        return op.Div(e, op.ReduceSum(e, _allow_other_inputs=True, _outputs=["total"]))

    def refuse(self, context, x, total, stable, mx=None, **_):
        axes = _axes(total.producer())
        if axes is None or len(axes) != 1:
            return "ReduceSum is not over one constant axis with keepdims"
        if stable and _axes(mx.producer()) != axes:
            return "ReduceMax and ReduceSum reduce different axes"
        rank = len(x.shape) if x.shape is not None else None
        last = axes[0] == -1 or (rank is not None and axes[0] == rank - 1)
        if context.model.opset_imports.get("", 1) < 13 and not last:
            return "before opset 13 Softmax means something else for a non-last axis (rerun with --opset 13)"
        if not base.is_float(x):
            return "input is not floating point"
        self._axis = axes[0]
        return None

    def replace(self, op, x, **_):
        return op.Softmax(x, axis=self._axis)


@register("fuse-softmax", "Softmax from Exp / ReduceSum(Exp) (plain and max-shifted)", "fusion")
def run(model: ir.Model, ctx: PassContext) -> int:
    return base.apply(model, ctx, "fuse-softmax", [Softmax], {"ReduceSum"})
