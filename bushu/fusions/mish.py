"""Mish (opset 18).

    y = x * Tanh(Softplus(x))   == Mish(x)

Run after ``fuse-softplus``, which turns ``Log(Exp(x) + 1)`` into the Softplus this pattern expects.
"""

from __future__ import annotations

import onnx_ir as ir

from ..passes.registry import PassContext, register
from . import base


class Mish(base.Fusion):
    op_type, since = "Mish", 18

    def pattern(self, op, x):
        return op.Mul(x, op.Tanh(op.Softplus(x)))

    def refuse(self, context, x, **_):
        return None if base.is_float(x) else "input is not floating point"

    def replace(self, op, x, **_):
        return op.Mish(x)


@register("fuse-mish", "Mish (opset 18) from x * Tanh(Softplus(x))", "fusion")
def run(model: ir.Model, ctx: PassContext) -> int:
    return base.apply(model, ctx, "fuse-mish", [Mish], {"Softplus"})
