"""Empirical bias correction: rounding the weights (and the inputs) shifts each output channel's mean; measure that
shift on the held-out feeds (quantized layer output minus float layer output, averaged over batch and positions)
and subtract it from the layer's bias.

Layers: Conv/Gemm with their bias in int32 behind a DequantizeLinear. Transformer projections (MatMul → Add of a
float bias) are left alone: corrected the same way on all-MiniLM-L6-v2, the embedding cosine fell from 0.9963 to
0.9902 (per-channel shifts measured on a few sentences' tokens don't generalize). Layers are corrected one after
the other in graph order, each measured after the ones before it were corrected, so corrections don't compound.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir

from ..calibrate import exposed


@dataclasses.dataclass
class _Layer:
    output: str  # the tensor whose channel means are compared (channels on axis 1)
    bias: ir.Value  # the int32 initializer to correct
    step: np.ndarray  # its dequantization scale


def _dq_input(v: ir.Value | None) -> ir.Node | None:
    p = v.producer() if v is not None else None
    return p if p is not None and p.op_type == "DequantizeLinear" else None


def layers(q: ir.Model) -> list[_Layer]:
    out = []
    for node in q.graph:
        if node.op_type in ("Conv", "Gemm") and len(node.inputs) > 2 and _dq_input(node.inputs[2]) is not None:
            dq = _dq_input(node.inputs[2])
            out.append(_Layer(node.outputs[0].name, dq.inputs[0], dq.inputs[1].const_value.numpy()))
    return out


def _channel_mean(x: np.ndarray) -> np.ndarray:
    x = np.moveaxis(x.astype(np.float64), 1, 0)
    return x.reshape(x.shape[0], -1).mean(axis=1)


def apply(session, q: ir.Model) -> str:
    """Correct the biases of ``q`` (built by ``session``) in place; returns a note for the result."""
    found = layers(q)
    if not found:
        return "bias correction: no quantized layer with a bias"
    names = [layer.output for layer in found]
    ref_sess = exposed(session.model, names)  # the float layers' channel means, once for all layers
    reference: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for feed in session.heldout:
        outs = ref_sess.run(feed, names)
        for layer in found:
            reference[layer.output].append(_channel_mean(outs[layer.output]))
    changed = 0
    for layer in found:
        cand = exposed(q, [layer.output])
        shift = sum(_channel_mean(cand.run(f, [layer.output])[layer.output]) - ref
                    for f, ref in zip(session.heldout, reference[layer.output])) / len(session.heldout)
        # NOTE: a channel whose bias scale is 0 (all-zero weights) dequantizes its bias to 0 whatever it holds
        scale = np.broadcast_to(layer.step.astype(np.float64), np.shape(shift))
        ratio = np.divide(shift, scale, out=np.zeros(np.shape(shift)), where=scale > 0)
        step = np.rint(np.clip(np.nan_to_num(ratio, nan=0.0, posinf=0.0, neginf=0.0), -(2.0**31), 2.0**31)).astype(np.int64)
        if not step.any():
            continue
        new = np.clip(layer.bias.const_value.numpy().astype(np.int64) - step, -(2**31), 2**31 - 1).astype(np.int32)
        layer.bias.const_value = ir.tensor(new, name=layer.bias.name)
        changed += 1
    return f"bias correction: {changed} of {len(found)} biases adjusted on {len(session.heldout)} held-out feeds"
