"""Softplus (opset 1).

    y = Log(Exp(x) + 1)   == Softplus(x)

The fused op is also safer: Exp overflows to inf for x > 88 (float32) where Softplus returns x.
"""

from __future__ import annotations

import onnx_ir as ir

from ..passes.registry import PassContext, register
from . import base


class Softplus(base.Fusion):
    op_type, since = "Softplus", 1

    def pattern(self, op, x, one):
        return op.Log(op.Add(op.Exp(x), one))

    def refuse(self, context, x, one, **_):
        return base.near(one, 1.0, "the added one") or (None if base.is_float(x) else "input is not floating point")

    def replace(self, op, x, **_):
        return op.Softplus(x)


@register("fuse-softplus", "Softplus from Log(Exp(x) + 1)", "fusion")
def run(model: ir.Model, ctx: PassContext) -> int:
    return base.apply(model, ctx, "fuse-softplus", [Softplus], {"Exp"})
