"""RMSNormalization (opset 23).

    y = x / Sqrt(ReduceMean(x^2, axes) + eps) * scale      (or x * Reciprocal(Sqrt(...)), x^2 as x * x)
      == RMSNormalization(x, scale, axis=-k, epsilon=eps)      axes: the last k dims

Refused when the reduction is not over the trailing dims with keepdims, the exponent is not 2, or eps/scale are
not constants that fit.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import pattern

from ..passes._rewire import const
from ..passes.registry import PassContext, register
from . import base
from .layer_norm import _axes, _fits, _trailing


class RmsNorm(base.Fusion):
    op_type, since = "RMSNormalization", 23

    def pattern(self, op, x, two, eps, scale):
        sq = pattern.OrValue([op.Pow(x, two), op.Mul(x, x)])
        ms = op.ReduceMean(sq, _allow_other_inputs=True, _outputs=["ms"])
        rms = op.Sqrt(op.Add(ms, eps))
        normed = pattern.OrValue([op.Div(x, rms), op.Mul(x, op.Reciprocal(rms))])
        return op.Mul(normed, scale)

    def refuse(self, context, x, two, eps, scale, ms, **_):
        axes = _axes(ms.producer())
        k = None if axes is None else _trailing(axes, len(x.shape) if x.shape is not None else None)
        if k is None:
            return "the ReduceMean is not over the trailing dims with keepdims"
        if not base.is_float(x):
            return "input is not floating point"
        if two is not None and (why := base.near(two, 2.0, "the exponent")):
            return why
        if base.scalar(eps) is None:
            return "epsilon is not a scalar constant"
        if not _fits(const(scale), k):
            return "scale is not a constant that fits the normalized dims"
        self._k = k
        return None

    def replace(self, op, x, eps, scale, **_):
        s = const(scale)
        s = np.ascontiguousarray(s.reshape(s.shape[max(0, s.ndim - self._k):]))
        s = op.initializer(ir.tensor(s), self.fresh_name(f"{scale.name}_rms"))
        return op.RMSNormalization(x, s, axis=-self._k, epsilon=base.scalar(eps))


@register("fuse-rmsnorm", "RMSNormalization (opset 23) from x / Sqrt(ReduceMean(x^2) + eps) * scale", "fusion")
def run(model: ir.Model, ctx: PassContext) -> int:
    return base.apply(model, ctx, "fuse-rmsnorm", [RmsNorm], {"ReduceMean", "Sqrt"})
