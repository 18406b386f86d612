"""Mechanism: rewrite a float model into QDQ form from a :class:`~bushu.quant.annotate.Plan` and calibrated ranges.

Weights are stored pre-quantized (int8 initializers behind a DequantizeLinear, per output channel); each quantized
activation gets one QuantizeLinear → DequantizeLinear pair right after its producer, shared by all its consumers;
a bias is stored in int32 at ``input scale × weight scale`` (zero point 0), which is what ONNX Runtime's
QLinearConv/QGemm fusions and OpenVINO's low-precision transformations expect. Folded activations (Relu/Clip) are
removed: the uint8 QuantizeLinear after their producer clamps at 0 by itself.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import TopologicalSortPass

from .annotate import Plan
from .qmath import channel_ranges, qparams, quantize
from .spec import EnginePreset, QType

INT32 = QType("int32", symmetric=True, bits=32)


def clone(model: ir.Model) -> ir.Model:
    """A copy whose graph can be rewritten without touching ``model`` (weights are shared: convert never writes
    into an existing tensor, it adds new ones)."""
    out = model.clone()
    out.meta.update(model.meta)
    return out


class Builder:
    """Adds uniquely named initializers and DequantizeLinear nodes to a graph."""

    def __init__(self, graph: ir.Graph):
        self.graph = graph
        self.nodes = {n.name: n for n in graph}
        self._names = set(graph.initializers) | {v.name for n in graph for v in n.outputs}

    def unique(self, base: str) -> str:
        name, i = base, 1
        while name in self._names:
            name, i = f"{base}_{i}", i + 1
        self._names.add(name)
        return name

    def const(self, base: str, array: np.ndarray) -> ir.Value:
        name = self.unique(base)
        v = ir.Value(name=name, const_value=ir.tensor(array, name=name), shape=ir.Shape(array.shape),
                     type=ir.TensorType(ir.DataType.from_numpy(array.dtype)))
        self.graph.register_initializer(v)
        return v

    def dq(self, q: ir.Value, scale: ir.Value, zp: ir.Value, base: str, axis: int | None) -> ir.Value:
        attrs = {"axis": axis} if axis is not None else {}
        node = ir.node("DequantizeLinear", [q, scale, zp], attrs, name=self.unique(f"{base}_DequantizeLinear"))
        node.outputs[0].name = self.unique(f"{base}_dq")
        node.outputs[0].dtype = ir.DataType.FLOAT
        self.graph.append(node)
        return node.outputs[0]


def _act_params(rng: tuple[float, float], qt: QType) -> tuple[np.ndarray, np.ndarray]:
    s, z = qparams(rng[0], rng[1], qt)
    return np.asarray(s, np.float32).reshape(()), np.asarray(z).reshape(())


def convert(model: ir.Model, plan: Plan, ranges: dict[str, tuple[float, float]], preset: EnginePreset, *,
            per_channel: bool = True) -> ir.Model:
    """Rewrite ``model`` in place into QDQ form and return it. ``ranges`` maps every tensor in
    ``plan.observed`` to its calibrated ``(lo, hi)``."""
    if model.opset_imports.get("", 1) < 13:
        raise ValueError("per-channel Q/DQ needs opset 13: run bushu.quant.prepare.prepare() first")
    graph = model.graph
    b = Builder(graph)
    act_qt, w_qt = preset.activations, preset.weights
    act_scale: dict[str, np.ndarray] = {}

    for name in plan.folded:  # the producer's Q replaces the activation
        node = b.nodes[name]
        node.outputs[0].replace_all_uses_with(node.inputs[0])
        graph.remove(node, safe=True)

    values = {v.name: v for v in graph.inputs}
    values.update({v.name: v for n in graph for v in n.outputs})
    for tensor, source in plan.activations.items():
        v = values.get(tensor)
        if v is None or not v.uses():
            continue  # the output of a folded activation, or a tensor nobody reads
        scale, zp = _act_params(ranges[source], plan.qtypes.get(source, act_qt))
        act_scale[tensor] = scale
        uses = list(v.uses())
        s_v, z_v = b.const(f"{tensor}_scale", scale), b.const(f"{tensor}_zero_point", zp)
        q = ir.node("QuantizeLinear", [v, s_v, z_v], name=b.unique(f"{tensor}_QuantizeLinear"))
        q.outputs[0].name = b.unique(f"{tensor}_q")
        q.outputs[0].dtype = ir.DataType.from_numpy(zp.dtype)
        graph.append(q)
        dq_out = b.dq(q.outputs[0], s_v, z_v, tensor, None)
        for use in uses:
            use.node.replace_input_with(use.idx, dq_out)

    for ws in plan.weights:
        node = b.nodes[ws.node]
        w_val = node.inputs[1]
        w = w_val.const_value.numpy().astype(np.float32)
        axis = ws.axis if per_channel else None
        if axis is not None:
            lo, hi = channel_ranges(w, axis)
        else:
            lo, hi = np.array(w.min()), np.array(w.max())
        s, z = qparams(lo, hi, w_qt)
        wq = quantize(w, s, z, w_qt, axis)
        dq_w = b.dq(b.const(f"{w_val.name}_quantized", wq), b.const(f"{w_val.name}_scale", s),
                    b.const(f"{w_val.name}_zero_point", z), w_val.name, axis)
        node.replace_input_with(1, dq_w)
        x_scale = act_scale.get(ws.act)
        if ws.bias is not None and x_scale is not None:
            bias_val = node.inputs[2]
            bias = bias_val.const_value.numpy().astype(np.float64)
            bs = (np.float64(x_scale) * s.astype(np.float64)).astype(np.float32) * np.ones(bias.shape, np.float32)
            bq = np.clip(np.rint(bias / bs), INT32.qmin, INT32.qmax).astype(np.int32)
            dq_b = b.dq(b.const(f"{bias_val.name}_quantized", bq), b.const(f"{bias_val.name}_scale", bs),
                        b.const(f"{bias_val.name}_zero_point", np.zeros(bias.shape, np.int32)), bias_val.name, 0)
            node.replace_input_with(2, dq_b)
    for name in [n for n, v in graph.initializers.items() if not v.uses() and not v.is_graph_input()]:
        graph.initializers.pop(name)
    TopologicalSortPass()(model)
    return model
