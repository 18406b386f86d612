"""Fold a constant zero ``Pad`` into the following ``Conv``'s ``pads`` (onnxscript's rules).

    Conv(Pad(x, p, mode=constant, value=0), pads=q) == Conv(x, pads=p+q)   when p pads only spatial axes, p >= 0

``auto_pad`` is first rewritten to explicit pads so the sum is defined.
"""

from __future__ import annotations

import onnx_ir as ir
from onnxscript.rewriter.rules import common as rules

from ._rules import apply_rules
from .registry import PassContext, register

_RULES = [rules.normalize_pad_format_conv_rule, rules.fuse_pad_into_conv_rule]


@register("fold-pad", "fold zero Pad into the following Conv's pads", "fold")
def run(model: ir.Model, ctx: PassContext) -> int:
    return apply_rules(model, _RULES)
