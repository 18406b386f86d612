"""Remove operations that compute their input unchanged.

Cases (onnxscript's rules and our Identity elimination, applied in every graph):
1. ``Identity`` (kept only where it must name a graph output, see :mod:`.identity`).
2. ``Dropout`` at inference (no ``training_mode`` or a false one), its mask unused.
3. ``Cast`` to the type the value already has; ``Expand`` to the shape it already has.
4. ``Transpose`` with the identity permutation; a ``Transpose`` pair whose permutations cancel.
5. ``Mul``/``Div`` by one, ``Add``/``Sub`` of zero (scalar constants only: a broadcast could change the shape).
6. ``Unsqueeze`` of ``Unsqueeze`` merged into one.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter.rules import common as rules

from ._rewire import const, to_identity
from ._rules import apply_rules
from .identity import eliminate_identities
from .registry import PassContext, graphs, register

_RULES = [
    *rules.mul_by_1_rule.commute(), *rules.add_0_rule.commute(), rules.sub_0_rule, rules.div_by_1_rule,
    rules.no_op_cast_rule, rules.no_op_expand_rule,
    rules.no_op_transpose_rule, rules.transpose_transpose_rule, rules.unsqueeze_unsqueeze_rule,
]


def _inference_dropouts(model: ir.Model) -> int:
    count = 0
    for g in graphs(model):
        for node in list(g):
            if node.op_type != "Dropout" or node.domain != "" or node.inputs[0] is None:
                continue
            training = const(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] is not None else False
            mask_used = len(node.outputs) > 1 and (node.outputs[1].uses() or node.outputs[1].is_graph_output())
            if training is None or bool(np.any(training)) or mask_used:
                continue
            to_identity(node, node.inputs[0])
            count += 1
    return count


@register("eliminate-no-ops", "remove Identity, inference Dropout, no-op Cast/Transpose/Expand, x*1, x+0", "cleanup")
def run(model: ir.Model, ctx: PassContext) -> int:
    count = _inference_dropouts(model) + apply_rules(model, _RULES)
    return count + eliminate_identities(model)
