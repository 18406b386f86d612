"""Gelu (opset 20), exact and tanh forms.

    exact:  y = 0.5 * x * (1 + Erf(x / sqrt(2)))                          == Gelu(x)
    tanh:   y = 0.5 * x * (1 + Tanh(sqrt(2/pi) * (x + 0.044715 * x^3)))  == Gelu(x, approximate="tanh")

``x / sqrt(2)`` may be written ``x * (1/sqrt(2))``, ``x^3`` as ``Pow(x, 3)`` or ``x * (x * x)``, and the product
``0.5 * x * (...)`` in any association (commuted forms are matched too). Refused when a constant differs.
"""

from __future__ import annotations

import math

import onnx_ir as ir
from onnxscript.rewriter import pattern

from ..passes.registry import PassContext, register
from . import base


def _half_x_times(op, x, half, a, form: int):
    # onnxscript can't match alternatives at a pattern's root, so each association is its own rule class.
    if form == 0:
        return op.Mul(op.Mul(x, a), half)
    if form == 1:
        return op.Mul(op.Mul(x, half), a)
    return op.Mul(x, op.Mul(a, half))


def _forms(cls: type[base.Fusion]) -> list[type[base.Fusion]]:
    return [type(f"{cls.__name__}{i}", (cls,), {"form": i}) for i in range(3)]


class ExactGelu(base.Fusion):
    op_type, since, form = "Gelu", 20, 0

    def pattern(self, op, x, s, one, half):
        scaled = pattern.OrValue([op.Div(x, s), op.Mul(x, s)], tag_var="by", tag_values=["div", "mul"])
        return _half_x_times(op, x, half, op.Add(op.Erf(scaled), one), self.form)

    def refuse(self, context, x, s, one, half, by, **_):
        target = math.sqrt(2) if by == "div" else 1 / math.sqrt(2)
        return (base.near(s, target, "the Erf scale") or base.near(one, 1.0, "the added one")
                or base.near(half, 0.5, "the half") or (None if base.is_float(x) else "input is not floating point"))

    def replace(self, op, x, **_):
        return op.Gelu(x)


class TanhGelu(base.Fusion):
    op_type, since, form = "Gelu", 20, 0

    def pattern(self, op, x, three, c1, c0, one, half):
        cube = pattern.OrValue([op.Pow(x, three), op.Mul(x, op.Mul(x, x))])
        inner = op.Mul(op.Add(x, op.Mul(c1, cube)), c0)
        return _half_x_times(op, x, half, op.Add(op.Tanh(inner), one), self.form)

    def refuse(self, context, x, three, c1, c0, one, half, **_):
        return ((base.near(three, 3.0, "the exponent") if three is not None else None)
                or base.near(c1, 0.044715, "the cubic coefficient") or base.near(c0, math.sqrt(2 / math.pi), "the scale")
                or base.near(one, 1.0, "the added one") or base.near(half, 0.5, "the half")
                or (None if base.is_float(x) else "input is not floating point"))

    def replace(self, op, x, **_):
        return op.Gelu(x, approximate="tanh")


@register("fuse-gelu", "Gelu (opset 20) from the Erf and the Tanh formulas", "fusion")
def run(model: ir.Model, ctx: PassContext) -> int:
    # Separate runs so a model with only one of Erf/Tanh skips the other's (many) commuted variants.
    return (base.apply(model, ctx, "fuse-gelu", _forms(ExactGelu), {"Erf"})
            + base.apply(model, ctx, "fuse-gelu", _forms(TanhGelu), {"Tanh"}))
