"""LayerNormalization (opset 17) from its decomposition.

    mean = ReduceMean(x, axes)            axes: the last k dims
    d    = x - mean
    var  = ReduceMean(d ** 2, axes)       (or d * d)
    y    = d / Sqrt(var + eps) * scale + bias      (or d * Reciprocal(Sqrt(var + eps)))
      ==   LayerNormalization(x, scale, bias, axis=-k, epsilon=eps)

Refused when the two reductions differ or are not over the trailing dims, keepdims is off, the exponent is
not 2, eps/scale/bias are not constants, or scale/bias don't fit the normalized dims. A second rule folds a
constant Add after a bias-less LayerNormalization into its bias.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import pattern

from ..passes._rewire import const
from ..passes.registry import PassContext, register
from . import base


def _axes(node: ir.Node) -> list[int] | None:
    if node.attributes.get_int("keepdims", 1) != 1:
        return None
    if len(node.inputs) > 1 and node.inputs[1] is not None:
        a = const(node.inputs[1])
        return None if a is None else [int(v) for v in a.reshape(-1)]
    attr = node.attributes.get("axes")
    return None if attr is None else list(attr.as_ints())


def _trailing(axes: list[int], rank: int | None) -> int | None:
    """k when ``axes`` are the last k dims, else None."""
    k = len(axes)
    if rank is not None:
        axes = [a % rank for a in axes]
        return k if sorted(axes) == list(range(rank - k, rank)) else None
    return k if sorted(axes) == list(range(-k, 0)) else None


def _fits(v: np.ndarray | None, k: int) -> bool:
    return v is not None and (v.ndim <= k or all(d == 1 for d in v.shape[: v.ndim - k]))


class LayerNorm(base.Fusion):
    op_type, since = "LayerNormalization", 17

    def pattern(self, op, x, two, eps, scale, bias):
        mean = op.ReduceMean(x, _allow_other_inputs=True, _outputs=["mean"])
        d = op.Sub(x, mean)
        sq = pattern.OrValue([op.Pow(d, two), op.Mul(d, d)])
        var = op.ReduceMean(sq, _allow_other_inputs=True, _outputs=["var"])
        std = op.Sqrt(op.Add(var, eps))
        normed = pattern.OrValue([op.Div(d, std), op.Mul(d, op.Reciprocal(std))])
        return op.Add(op.Mul(normed, scale), bias)

    def refuse(self, context, x, two, eps, scale, bias, mean, var, **_):
        a1, a2 = _axes(mean.producer()), _axes(var.producer())
        if a1 is None or a1 != a2:
            return "the two ReduceMeans differ, drop keepdims, or have non-constant axes"
        k = _trailing(a1, len(x.shape) if x.shape is not None else None)
        if k is None:
            return f"ReduceMean axes {a1} are not the trailing dims"
        if not base.is_float(x):
            return "input is not floating point"
        if two is not None and (why := base.near(two, 2.0, "the exponent")):
            return why
        if base.scalar(eps) is None:
            return "epsilon is not a scalar constant"
        if not (_fits(const(scale), k) and _fits(const(bias), k)):
            return "scale or bias is not a constant that fits the normalized dims"
        self._k = k
        return None

    def replace(self, op, x, eps, scale, bias, **_):
        k = self._k
        s, b = (v.reshape(v.shape[max(0, v.ndim - k):]) for v in (const(scale), const(bias)))
        trail = np.broadcast_shapes(s.shape, b.shape)
        s = op.initializer(ir.tensor(np.broadcast_to(s, trail).copy()), self.fresh_name(f"{scale.name}_ln"))
        b = op.initializer(ir.tensor(np.broadcast_to(b, trail).copy()), self.fresh_name(f"{bias.name}_ln"))
        return op.LayerNormalization(x, s, b, axis=-k, epsilon=base.scalar(eps))


@register("fuse-layernorm", "LayerNormalization (opset 17) from ReduceMean/Sub/Pow/Sqrt/Div/Mul/Add", "fusion")
def run(model: ir.Model, ctx: PassContext) -> int:
    return base.apply(model, ctx, "fuse-layernorm", [LayerNorm], {"ReduceMean"})
