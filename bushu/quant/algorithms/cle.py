"""Cross-layer equalization (Nagel et al., 2019) for Conv → [ReLU] → Conv chains, depthwise-separable ones above
all: a depthwise conv's output channels often differ in range by 100×, which one per-tensor activation scale can't
serve.

ReLU is positively homogeneous (``relu(x / s) = relu(x) / s`` for ``s > 0``), so dividing output channel c of the
first conv (weights and bias) by ``s_c`` and multiplying input channel c of the second by it leaves the function
unchanged. With ``s_c = sqrt(r1_c / r2_c)`` (``r`` the channel's max |weight|) both layers end with equal per-channel
ranges. Chains through other activations (HardSwish, ReLU6) are left alone: they are not homogeneous.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx_ir as ir

from ...inputs import Feed

ITERATIONS = 3  # a conv in the middle of a chain is equalized with both neighbours; a few rounds settle it


def _const(v: ir.Value | None) -> np.ndarray | None:
    return None if v is None or v.const_value is None else v.const_value.numpy()


def pairs(model: ir.Model) -> list[tuple[ir.Node, ir.Node]]:
    """(first, second) convs where the first's output reaches only the second, through at most one ReLU."""
    out = []
    for first in model.graph:
        if first.op_type != "Conv" or _const(first.inputs[1]) is None or len(first.outputs[0].consumers()) != 1:
            continue
        nxt = first.outputs[0].consumers()[0]
        if nxt.op_type == "Relu":
            if len(nxt.outputs[0].consumers()) != 1 or nxt.outputs[0].is_graph_output():
                continue
            nxt = nxt.outputs[0].consumers()[0]
        w2 = _const(nxt.inputs[1]) if nxt.op_type == "Conv" else None
        if w2 is None or first.outputs[0].is_graph_output():
            continue
        c = _const(first.inputs[1]).shape[0]
        group = nxt.attributes.get_int("group", 1)
        shapes_fit = (group == 1 and w2.shape[1] == c) or (group == c and w2.shape[0] == c and w2.shape[1] == 1)
        if shapes_fit and len(first.inputs[1].uses()) == 1 and len(nxt.inputs[1].uses()) == 1:
            out.append((first, nxt))
    return out


def _set(v: ir.Value, a: np.ndarray) -> None:
    v.const_value = ir.tensor(a.astype(np.float32), name=v.name)


def equalize(model: ir.Model) -> int:
    """Equalize every pair in place; returns how many pairs there were."""
    found = pairs(model)
    for _ in range(ITERATIONS):
        for first, second in found:
            w1, w2 = _const(first.inputs[1]), _const(second.inputs[1])
            depthwise = second.attributes.get_int("group", 1) > 1
            r1 = np.abs(w1).reshape(w1.shape[0], -1).max(axis=1)
            r2 = np.abs(w2).reshape(w2.shape[0], -1).max(axis=1) if depthwise else \
                np.abs(w2).transpose(1, 0, 2, 3).reshape(w2.shape[1], -1).max(axis=1)
            s = np.where((r1 > 0) & (r2 > 0), np.sqrt(r1 / np.maximum(r2, 1e-12)), 1.0)
            _set(first.inputs[1], w1 / s.reshape(-1, 1, 1, 1))
            b1 = _const(first.inputs[2]) if len(first.inputs) > 2 else None
            if b1 is not None:
                _set(first.inputs[2], b1 / s)
            _set(second.inputs[1], w2 * (s.reshape(-1, 1, 1, 1) if depthwise else s.reshape(1, -1, 1, 1)))
    return len(found)


class CrossLayerEqualization:
    """The float-model transform run before calibration (see :class:`~bushu.quant.static.Session`)."""

    def __call__(self, model: ir.Model, feeds: Sequence[Feed]) -> list[str]:
        n = equalize(model)
        return [f"cross-layer equalization on {n} Conv → Conv pairs" if n else
                "cross-layer equalization: no Conv → [ReLU] → Conv pair"]
