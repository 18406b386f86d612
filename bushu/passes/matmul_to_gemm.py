"""``Add(MatMul(a, b), c)`` → ``Gemm(a, b, c)``, absorbing a 2-D ``Transpose`` of a or b into transA/transB.

Legal only where Gemm means the same: a and b of rank 2 (onnxscript's check) and c broadcastable to the
(M, N) result without raising its rank (Add would broadcast both ways; Gemm only C to (M, N)).
"""

from __future__ import annotations

import onnx_ir as ir
from onnxscript.rewriter._basics import MatchResult
from onnxscript.rewriter.rules.common import _matmul_add_to_gemm as gemm

from ._rules import apply_rules
from .registry import PassContext, register


class _CheckBias:
    def check(self, context, input_a, input_b, input_c=None, **kw):
        result = super().check(context, input_a, input_b, **kw)
        if result and (input_c is None or input_c.shape is None or len(input_c.shape) > 2):
            return MatchResult().fail("the added value's rank is unknown or above 2")
        return result


def _rules():
    # NOTE: the Transpose forms first, or the plain rule takes the MatMul and leaves the Transpose.
    classes = [gemm.TransABMatMulAddToGemm, gemm.TransAMatMulAddToGemm, gemm.TransBMatMulAddToGemm,
               gemm.MatMulAddToGemm]
    return [type(c.__name__, (_CheckBias, c), {}).rule() for c in classes]


@register("matmul-to-gemm", "MatMul+Add (and 2-D Transposes) into Gemm where legal", "fold")
def run(model: ir.Model, ctx: PassContext) -> int:
    return apply_rules(model, _rules())
