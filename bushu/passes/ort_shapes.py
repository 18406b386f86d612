"""Write the shapes ONNX shape inference lost, so ONNX Runtime's own fusions fire (``--target ort``).

ONNX Runtime fuses SkipLayerNormalization, BiasGelu and others at load only where it knows the input shapes; after a
Reshape to a computed shape (TorchScript exports of transformers) ``onnx.shape_inference`` knows none, so ORT leaves
those blocks unfused. This pass records the shapes ORT's symbolic shape inference finds
(:mod:`.symbolic_shapes`) as the values' shapes (``value_info`` in the file). The graph is unchanged and stays
standard ONNX; it is in ``--target ort`` because only ONNX Runtime's speed is measured for it.
"""

from __future__ import annotations

import onnx_ir as ir

from .registry import PassContext, register
from .symbolic_shapes import fill_missing_shapes


@register("ort-shapes", "[--target ort] record the shapes ORT's symbolic inference finds, so ORT fuses more at load",
          "ort")
def run(model: ir.Model, ctx: PassContext) -> int:
    return len(fill_missing_shapes(model))
