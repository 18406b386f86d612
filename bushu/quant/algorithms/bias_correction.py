"""Empirical bias correction: rounding the weights shifts each output channel's mean; measure that shift on the
held-out feeds (quantized layer output minus float layer output, averaged over batch and positions) and subtract
it from the layer's int32 bias.

Layers are corrected one after the other in graph order, each against the float model's output of the same layer
(one engine session per layer: an opt-in for small and medium models).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from ..calibrate import exposed


def _bias_dq(node: ir.Node) -> ir.Node | None:
    b = node.inputs[2] if len(node.inputs) > 2 else None
    p = b.producer() if b is not None else None
    return p if p is not None and p.op_type == "DequantizeLinear" else None


def _channel_mean(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float64).swapaxes(0, 1).reshape(x.shape[1], -1).mean(axis=1)


def _shift(session, q: ir.Model, name: str, reference: list[np.ndarray]) -> np.ndarray:
    """Mean of (quantized − float) per output channel of tensor ``name`` over the held-out feeds."""
    cand = exposed(q, [name])
    total = sum(_channel_mean(cand.run(f, [name])[name]) - ref for f, ref in zip(session.heldout, reference))
    return total / len(session.heldout)


def apply(session, q: ir.Model) -> str:
    """Correct the int32 biases of ``q`` (built by ``session``) in place, layer by layer in graph order — each
    shift is measured after the layers before it were corrected, so corrections don't compound. Returns a note."""
    nodes = [n for n in q.graph if n.op_type in ("Conv", "Gemm") and _bias_dq(n) is not None]
    if not nodes:
        return "bias correction: no quantized layer with a bias"
    names = [n.outputs[0].name for n in nodes]
    ref_sess = exposed(session.model, names)  # the float layers' channel means, once for all layers
    reference: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for feed in session.heldout:
        outs = ref_sess.run(feed, names)
        for n in names:
            reference[n].append(_channel_mean(outs[n]))
    changed = 0
    for node in nodes:
        dq = _bias_dq(node)
        bq_val, scale_val = dq.inputs[0], dq.inputs[1]
        shift = _shift(session, q, node.outputs[0].name, reference[node.outputs[0].name])
        step = np.rint(shift / scale_val.const_value.numpy().astype(np.float64)).astype(np.int64)
        if not step.any():
            continue
        bq = bq_val.const_value.numpy().astype(np.int64) - step
        bq_val.const_value = ir.tensor(np.clip(bq, -(2**31), 2**31 - 1).astype(np.int32), name=bq_val.name)
        changed += 1
    return f"bias correction: {changed} of {len(nodes)} biases adjusted on {len(session.heldout)} held-out feeds"
