"""Fold ``BatchNormalization`` into the preceding ``Conv``, ``ConvTranspose`` or ``Gemm`` (onnxscript's rules).

    y = gamma * (W*x + B - mean) / sqrt(var + eps) + beta
      = (W * s) * x + ((B - mean) * s + beta),   s = gamma / sqrt(var + eps)

Only when W, B and the BatchNorm statistics are initializers used by nothing else: run ``lift-constants``
first so exports that store weights as Constant nodes qualify. BatchNormalization after MatMul is left alone
(its scale would have to move into a MatMul weight of unknown layout).
"""

from __future__ import annotations

import onnx_ir as ir
from onnxscript.rewriter.rules import common as rules

from ._rules import apply_rules
from .registry import PassContext, register

_RULES = [rules.fuse_batchnorm_into_conv_rule, rules.fuse_batchnorm_into_conv_transpose_rule,
          rules.fuse_batchnorm_into_gemm_rule]


@register("fold-batchnorm", "fold BatchNormalization into the preceding Conv/ConvTranspose/Gemm weights", "fold")
def run(model: ir.Model, ctx: PassContext) -> int:
    return apply_rules(model, _RULES)
