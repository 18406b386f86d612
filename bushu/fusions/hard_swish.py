"""HardSigmoid and HardSwish from Clip arithmetic.

    HardSigmoid: y = Clip(x + b, 0, 6) / 6            == HardSigmoid(x, alpha=1/6, beta=b/6)     (opset 6)
                 (also written Clip(x + b, 0, 6) * (1/6))
    HardSwish:   y = x * Clip(x + 3, 0, 6) / 6        == HardSwish(x)                            (opset 14)
                 y = x * HardSigmoid(x, 1/6, 0.5)     == HardSwish(x)

Below opset 14 HardSwish is refused (the note says to rerun with ``--opset 14``) and its Clip arithmetic is kept
whole, HardSigmoid included: the only shorter form there, ``x * HardSigmoid(x)``, runs 1.6-1.8x slower on OpenVINO
2026.4 than the Clip form (it fuses the Clip form into the Conv before it as HSwish, not this one; PP-OCRv4 det, rec
and cls, measured interleaved), although ONNX Runtime gains from it. With ``--opset 14`` the HardSwish op is as fast
as the original on OpenVINO and 1.5x faster on ONNX Runtime (PP-OCR cls). Refused also when the clip bounds are not 0
and 6 or a constant differs.
"""

from __future__ import annotations

import onnx_ir as ir

from ..passes.registry import PassContext, register
from . import base


def _clip_reason(lo, hi) -> str | None:
    return base.near(lo, 0.0, "the Clip minimum") or base.near(hi, 6.0, "the Clip maximum")


def _by_six(op, v, six, by: str):
    # onnxscript can't match alternatives at a pattern's root, so Div and Mul forms are separate rule classes.
    return op.Div(v, six) if by == "div" else op.Mul(v, six)


def _forms(cls: type[base.Fusion]) -> list[type[base.Fusion]]:
    return [type(f"{cls.__name__}_{by}", (cls,), {"by": by}) for by in ("div", "mul")]


def _six_reason(six, by) -> str | None:
    return base.near(six, 6.0 if by == "div" else 1 / 6, "the divisor")


class HardSwishFromClip(base.Fusion):
    op_type, since, by, outer = "HardSwish", 14, "div", True

    def pattern(self, op, x, three, lo, hi, six):
        clip = op.Clip(op.Add(x, three), lo, hi)
        return _by_six(op, op.Mul(x, clip), six, self.by) if self.outer else op.Mul(x, _by_six(op, clip, six, self.by))

    def refuse(self, context, x, three, lo, hi, six, **_):
        return _clip_reason(lo, hi) or base.near(three, 3.0, "the offset") or _six_reason(six, self.by)

    def replace(self, op, x, **_):
        return op.HardSwish(x)


class HardSwishFromHardSigmoid(base.Fusion):
    op_type, since = "HardSwish", 14

    def pattern(self, op, x):
        return op.Mul(x, op.HardSigmoid(x, _allow_other_attributes=True, _outputs=["hs"]))

    def refuse(self, context, x, hs, **_):
        node = hs.producer()
        alpha, beta = node.attributes.get_float("alpha", 0.2), node.attributes.get_float("beta", 0.5)
        if abs(alpha - 1 / 6) > 1e-6 or abs(beta - 0.5) > 1e-6:
            return f"HardSigmoid has alpha {alpha:g}, beta {beta:g}, not 1/6, 0.5"
        return None

    def replace(self, op, x, **_):
        return op.HardSwish(x)


def _inside_hardswish(context, x: ir.Value) -> str | None:
    """Below opset 14, x * (Clip(x + 3, 0, 6) / 6) stays whole: as x * HardSigmoid(x) OpenVINO runs it slower."""
    if context.model.opset_imports.get("", 1) >= 14:
        return None
    y = context.root.outputs[0]
    if any(use.op_type == "Mul" and x in use.inputs for use, _ in y.uses()):
        return "it is the inside of a HardSwish, which needs opset 14 (rerun with --opset 14)"
    return None


class HardSigmoidFromClip(base.Fusion):
    op_type, since, by = "HardSigmoid", 6, "div"

    def pattern(self, op, x, b, lo, hi, six):
        return _by_six(op, op.Clip(op.Add(x, b), lo, hi), six, self.by)

    def refuse(self, context, x, b, lo, hi, six, **_):
        return _clip_reason(lo, hi) or (None if base.scalar(b) is not None else "the offset is not a scalar constant") \
            or _six_reason(six, self.by) or _inside_hardswish(context, x)

    def replace(self, op, x, b, **_):
        return op.HardSigmoid(x, alpha=1 / 6, beta=base.scalar(b) / 6)


@register("fuse-hardswish", "HardSwish (opset 14) and HardSigmoid from Clip(x+3, 0, 6)/6 arithmetic", "fusion")
def run(model: ir.Model, ctx: PassContext) -> int:
    # NOTE: HardSwish rules first: HardSigmoidFromClip would otherwise take the Clip/Div inside x*Clip(x+3)/6.
    opset = model.opset_imports.get("", 1)
    rules = [*_forms(HardSwishFromClip), *_forms(type("HardSwishFromClipInner", (HardSwishFromClip,), {"outer": False}))]
    # NOTE: two runs, each skipped when its ops are absent: the Clip forms and the HardSigmoid form share no node.
    count = base.apply(model, ctx, "fuse-hardswish", rules, {"Clip", "Add", "Mul"})
    if opset >= 14:
        count += base.apply(model, ctx, "fuse-hardswish", [HardSwishFromHardSigmoid], {"HardSigmoid", "Mul"})
    return count + base.apply(model, ctx, "fuse-hardsigmoid", _forms(HardSigmoidFromClip), {"Clip"})
