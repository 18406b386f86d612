"""LayerNormalization (opset 17) from its decomposition.

    mean = ReduceMean(x, axes)            axes: the last k dims
    d    = x - mean
    var  = ReduceMean(d ** 2, axes)       (or d * d)
    y    = d / Sqrt(var + eps) * scale + bias      (or d * Reciprocal(Sqrt(var + eps)))
      ==   LayerNormalization(x, scale, bias, axis=-k, epsilon=eps)

Refused when the two reductions differ or are not over the trailing dims, keepdims is off, the exponent is
not 2, eps/scale/bias are not constants, or scale/bias don't fit the normalized dims.

Where the scale and bias are gone (``eliminate-no-ops`` removes a Mul by ones and an Add of zeros), a second run
matches the bare ``d / Sqrt(var + eps)`` and writes ``LayerNormalization(x, ones)`` (the normalized dims must be
static); then a constant Mul or Add right after a LayerNormalization is folded into its scale and bias
(``LN(x, s, b) * c == LN(x, s*c, b*c)``, ``LN(x, s, b) + c == LN(x, s, b + c)``, c fitting the normalized dims).
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


class BareLayerNorm(LayerNorm):
    reciprocal = False  # onnxscript can't match alternatives at a pattern's root: one class per form

    def pattern(self, op, x, two, eps):
        mean = op.ReduceMean(x, _allow_other_inputs=True, _outputs=["mean"])
        d = op.Sub(x, mean)
        sq = pattern.OrValue([op.Pow(d, two), op.Mul(d, d)])
        var = op.ReduceMean(sq, _allow_other_inputs=True, _outputs=["var"])
        std = op.Sqrt(op.Add(var, eps))
        return op.Mul(d, op.Reciprocal(std)) if self.reciprocal else op.Div(d, std)

    def refuse(self, context, x, two, eps, mean, var, **_):
        one = ir.Value(const_value=ir.tensor(np.ones((), np.float32)))
        why = super().refuse(context, x=x, two=two, eps=eps, scale=one, bias=one, mean=mean, var=var)
        if why:
            return why
        dims = list(x.shape)[-self._k:]
        if not all(isinstance(d, int) for d in dims):
            return "the normalized dims are not static (no scale to write)"
        self._dims = dims
        return None

    def replace(self, op, x, eps, **_):
        dtype = x.dtype.numpy()
        s = op.initializer(ir.tensor(np.ones(self._dims, dtype)), self.fresh_name("ln_scale"))
        return op.LayerNormalization(x, s, axis=-self._k, epsilon=base.scalar(eps))


class BareLayerNormReciprocal(BareLayerNorm):
    reciprocal = True


class _Affine(base.Fusion):
    """A constant Mul/Add after a LayerNormalization folded into its scale and bias."""

    op_type, since = "LayerNormalization", 17

    def refuse(self, context, x, scale, c, ln, **_):
        node = ln.producer()
        k = -node.attributes.get_int("axis", -1)
        s, cv = const(scale), const(c)
        b = const(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] is not None else None
        if k <= 0 or s is None or cv is None or s.ndim != k or not _fits(cv, k) or len(node.outputs) > 1:
            return "the added/multiplied value is not a constant that fits the normalized dims"
        if (len(node.inputs) > 2 and node.inputs[2] is not None and b is None) or cv.dtype != s.dtype:
            return "the bias is not constant or the types differ"
        cv = cv.reshape(cv.shape[max(0, cv.ndim - k):])
        if cv.ndim > s.ndim or any(c not in (1, d) for c, d in zip(cv.shape[::-1], s.shape[::-1])):
            return "the constant would broadcast beyond the normalized dims"
        cv = np.broadcast_to(cv, s.shape)
        self._s, self._b, self._c, self._k, self._eps = s, b, cv, k, node.attributes.get_float("epsilon", 1e-5)
        return None

    def _write(self, op, x, s, b):
        s = op.initializer(ir.tensor(np.ascontiguousarray(s)), self.fresh_name("ln_scale"))
        b = op.initializer(ir.tensor(np.ascontiguousarray(b)), self.fresh_name("ln_bias"))
        return op.LayerNormalization(x, s, b, axis=-self._k, epsilon=self._eps)


class LayerNormMul(_Affine):
    def pattern(self, op, x, scale, c):
        return op.Mul(op.LayerNormalization(x, scale, _allow_other_inputs=True, _outputs=["ln"]), c)

    def replace(self, op, x, **_):
        b = np.zeros_like(self._s) if self._b is None else self._b
        return self._write(op, x, self._s * self._c, b * self._c)


class LayerNormAdd(_Affine):
    def pattern(self, op, x, scale, c):
        return op.Add(op.LayerNormalization(x, scale, _allow_other_inputs=True, _outputs=["ln"]), c)

    def replace(self, op, x, **_):
        b = np.zeros_like(self._s) if self._b is None else self._b
        return self._write(op, x, self._s, b + self._c)


@register("fuse-layernorm", "LayerNormalization (opset 17) from ReduceMean/Sub/Pow/Sqrt/Div/Mul/Add", "fusion")
def run(model: ir.Model, ctx: PassContext) -> int:
    count = base.apply(model, ctx, "fuse-layernorm", [LayerNorm], {"ReduceMean", "Sub", "Sqrt"})
    count += base.apply(model, ctx, "fuse-layernorm", [BareLayerNorm, BareLayerNormReciprocal],
                        {"ReduceMean", "Sub", "Sqrt"})
    return count + base.apply(model, ctx, "fuse-layernorm", [LayerNormMul, LayerNormAdd], {"LayerNormalization"})
