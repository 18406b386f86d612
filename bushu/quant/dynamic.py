"""Dynamic INT8 for MatMul with constant weights: activations are quantized at run time, per tensor, from their
own min/max — no calibration, which suits transformers whose activation ranges vary from input to input.

Each ``MatMul(X, W)`` becomes the standard-op pattern ONNX Runtime fuses into ``DynamicQuantizeMatMul``::

    Xq, xs, xz = DynamicQuantizeLinear(X)                      # uint8
    Y = Cast(MatMulInteger(Xq, Wq, xz, 0), float) * (xs * ws)  # Wq int8 symmetric per output column
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import TopologicalSortPass

from .convert import Builder
from .qmath import channel_ranges, qparams, quantize
from .spec import INT8_SYM
from .weight_only import weight_plan


def dynamic(model: ir.Model, **kw):
    p = weight_plan(model, ops=("MatMul",), **kw)
    b = Builder(model.graph)
    nodes = {n.name: n for n in model.graph}
    for ws in p.weights:
        node = nodes[ws.node]
        x, w_val = node.inputs[0], node.inputs[1]
        w = w_val.const_value.numpy().astype(np.float32)
        lo, hi = channel_ranges(w, 1)
        s, z = qparams(lo, hi, INT8_SYM)
        wq = b.const(f"{w_val.name}_quantized", quantize(w, s, z, INT8_SYM, 1))
        wz = b.const(f"{w_val.name}_zero_point", z)
        ws_v = b.const(f"{w_val.name}_scale", s)
        dql = ir.node("DynamicQuantizeLinear", [x], num_outputs=3, name=b.unique(f"{node.name}_DynamicQuantize"))
        for o, suffix, dt in zip(dql.outputs, ("q", "scale", "zero_point"),
                                 (ir.DataType.UINT8, ir.DataType.FLOAT, ir.DataType.UINT8)):
            o.name, o.dtype = b.unique(f"{x.name}_{suffix}_{node.name}"), dt
        mmi = ir.node("MatMulInteger", [dql.outputs[0], wq, dql.outputs[2], wz], name=b.unique(f"{node.name}_Integer"))
        mmi.outputs[0].name, mmi.outputs[0].dtype = b.unique(f"{node.name}_int32"), ir.DataType.INT32
        cast = ir.node("Cast", [mmi.outputs[0]], {"to": ir.DataType.FLOAT}, name=b.unique(f"{node.name}_Cast"))
        cast.outputs[0].name, cast.outputs[0].dtype = b.unique(f"{node.name}_float"), ir.DataType.FLOAT
        sc = ir.node("Mul", [dql.outputs[1], ws_v], name=b.unique(f"{node.name}_scale_Mul"))
        sc.outputs[0].name, sc.outputs[0].dtype = b.unique(f"{node.name}_scale"), ir.DataType.FLOAT
        out = ir.node("Mul", [cast.outputs[0], sc.outputs[0]], name=b.unique(f"{node.name}_Mul"))
        out.outputs[0].dtype = ir.DataType.FLOAT
        y = node.outputs[0]
        out.outputs[0].shape = y.shape
        model.graph.extend([dql, mmi, cast, sc, out])
        name = y.name
        y.replace_all_uses_with(out.outputs[0], replace_graph_outputs=True)
        model.graph.remove(node, safe=True)
        out.outputs[0].name = name
    for name in [x for x, v in model.graph.initializers.items() if not v.uses()]:
        model.graph.initializers.pop(name)
    TopologicalSortPass()(model)
    return model, p
