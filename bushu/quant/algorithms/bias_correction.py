"""Empirical bias correction: rounding the weights shifts each output channel's mean; measure that shift on the
held-out feeds (quantized layer output minus float layer output, averaged over batch and positions) and subtract
it from the layer's int32 bias.

All layers are corrected from one pass, against the float model's outputs of the same layers.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from ..calibrate import exposed


def _bias_dq(node: ir.Node) -> ir.Node | None:
    b = node.inputs[2] if len(node.inputs) > 2 else None
    p = b.producer() if b is not None else None
    return p if p is not None and p.op_type == "DequantizeLinear" else None


def apply(session, q: ir.Model) -> str:
    """Correct the int32 biases of ``q`` (built by ``session``) in place; returns a note for the result."""
    nodes = [n for n in q.graph if n.op_type in ("Conv", "Gemm") and _bias_dq(n) is not None]
    names = [n.outputs[0].name for n in nodes]
    if not names:
        return "bias correction: no quantized layer with a bias"
    ref, cand = exposed(session.model, names), exposed(q, names)
    sums = {n: 0.0 for n in names}
    for feed in session.heldout:
        a, b = cand.run(feed, names), ref.run(feed, names)
        for n in names:
            d = (a[n].astype(np.float64) - b[n]).swapaxes(0, 1).reshape(a[n].shape[1], -1)
            sums[n] = sums[n] + d.mean(axis=1)
    changed = 0
    for node, n in zip(nodes, names):
        dq = _bias_dq(node)
        bq_val, scale_val = dq.inputs[0], dq.inputs[1]
        shift = sums[n] / len(session.heldout)
        step = np.rint(shift / scale_val.const_value.numpy().astype(np.float64)).astype(np.int64)
        if not step.any():
            continue
        bq = bq_val.const_value.numpy().astype(np.int64) - step
        bq_val.const_value = ir.tensor(np.clip(bq, -(2**31), 2**31 - 1).astype(np.int32), name=bq_val.name)
        changed += 1
    return f"bias correction: {changed} of {len(nodes)} biases adjusted on {len(session.heldout)} held-out feeds"
