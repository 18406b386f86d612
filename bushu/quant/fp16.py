"""FP16 conversion that keeps the model's float32 inputs and outputs (Cast nodes at the boundary), with a block
list of ops that lose accuracy in half precision or have no FP16 kernel on CPU engines; they stay in float32
behind Casts. The conversion itself is ONNX Runtime's ``float16`` converter (standard ONNX ops only)."""

from __future__ import annotations

import onnx_ir as ir

from .. import ir as bir

# Beyond ONNX Runtime's own list: reductions and normalizations that overflow or lose precision in fp16, and
# ops whose index/shape arithmetic must stay exact.
BLOCK_LIST = ("Range", "Resize", "Upsample", "ReduceMean", "ReduceSum", "ReduceProd", "Pow", "Sqrt", "Softmax",
              "LayerNormalization", "CumSum", "TopK", "NonMaxSuppression", "RoiAlign", "Min", "Max", "Erf")


def fp16(model: ir.Model, *, block_list=BLOCK_LIST) -> ir.Model:
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    proto = bir.to_proto(model)
    out = convert_float_to_float16(proto, keep_io_types=True, disable_shape_infer=True,
                                   op_block_list=sorted(set(DEFAULT_OP_BLOCK_LIST) | set(block_list)))
    m = ir.serde.deserialize_model(out)
    m.meta.update({k: v for k, v in model.meta.items() if k != "bushu.path"})
    return m
