"""Merge consecutive ``Reshape`` nodes (onnxscript's rule).

    Reshape(Reshape(x, s1), s2) == Reshape(x, s2)   when s2 has no 0 (copy-dim) entry, or allowzero is set
"""

from __future__ import annotations

import onnx_ir as ir
from onnxscript.rewriter.rules import common as rules

from ._rules import apply_rules
from .registry import PassContext, register


@register("reshape-chain", "merge consecutive Reshapes", "fold")
def run(model: ir.Model, ctx: PassContext) -> int:
    return apply_rules(model, [rules.reshape_reshape_rule])
