"""Remove operations that compute their input unchanged.

Cases (onnxscript's rules and our Identity elimination, applied in every graph):
1. ``Identity`` (kept only where it must name a graph output, see :mod:`.identity`).
2. ``Dropout`` at inference (``training_mode`` false or ratio 0).
3. ``Cast`` to the type the value already has; ``Expand`` to the shape it already has.
4. ``Transpose`` with the identity permutation; a ``Transpose`` pair whose permutations cancel.
5. ``Mul``/``Div`` by one, ``Add``/``Sub`` of zero (scalar constants only: a broadcast could change the shape).
6. ``Unsqueeze`` of ``Unsqueeze`` merged into one.
"""

from __future__ import annotations

import onnx_ir as ir
from onnxscript.rewriter.rules import common as rules

from ._rules import apply_rules
from .identity import eliminate_identities
from .registry import PassContext, register

_RULES = [
    *rules.mul_by_1_rule.commute(), *rules.add_0_rule.commute(), rules.sub_0_rule, rules.div_by_1_rule,
    rules.dropout_zero_rule, rules.dropout_inference_rule, rules.no_op_cast_rule, rules.no_op_expand_rule,
    rules.no_op_transpose_rule, rules.transpose_transpose_rule, rules.unsqueeze_unsqueeze_rule,
]


@register("eliminate-no-ops", "remove Identity, inference Dropout, no-op Cast/Transpose/Expand, x*1, x+0", "cleanup")
def run(model: ir.Model, ctx: PassContext) -> int:
    return apply_rules(model, _RULES) + eliminate_identities(model)
