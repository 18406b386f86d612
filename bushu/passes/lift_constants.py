"""Turn ``Constant`` nodes into initializers (every graph; onnx-ir's pass).

A Constant node is a node engines must schedule and optimizers must look through; an initializer is data that
shows in ``inspect`` as a weight, is de-duplicated, and can move to external data. Constants that are graph
outputs stay nodes (an initializer can't be an output here).
"""

from __future__ import annotations

import onnx_ir as ir
from onnx_ir.passes.common import LiftConstantsToInitializersPass

from .registry import PassContext, graphs, register


def _constants(model: ir.Model) -> int:
    return sum(1 for g in graphs(model) for n in g if n.op_type == "Constant" and n.domain == "")


@register("lift-constants", "turn Constant nodes into initializers", "cleanup")
def run(model: ir.Model, ctx: PassContext) -> int:
    before = _constants(model)
    if not before:
        return 0
    LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0)(model)
    return before - _constants(model)
