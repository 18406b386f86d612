"""Fold a constant ``Pad`` into the following ``Conv``'s or pooling node's ``pads``.

    Conv(Pad(x, p, mode=constant, value=0), pads=q) == Conv(x, pads=p+q)   when p pads only spatial axes, p >= 0
    AveragePool(Pad(x, p, value=0), pads=q) == AveragePool(x, pads=p+q, count_include_pad=1)
        when the pool counts its own pads (count_include_pad=1, or it has none) and ceil_mode=0
    MaxPool(Pad(x, p, value=v), pads=q) == MaxPool(x, pads=p+q)
        when v = -inf, or v = 0 and x >= 0 (x comes from Relu), every pad < the kernel (each window keeps a real
        element), dilations 1, ceil_mode 0 and a single output

The Conv forms are onnxscript's rules (``auto_pad`` first rewritten to explicit pads so the sum is defined); the
pooling forms are ours. A pooling candidate that must not fold is named in the report with the reason.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter.rules import common as rules

from ._rewire import const
from ._rules import apply_rules
from .registry import PassContext, graphs, register

_RULES = [rules.normalize_pad_format_conv_rule, rules.fuse_pad_into_conv_rule]
_NON_NEGATIVE = {"Relu", "Sigmoid", "Softmax", "Abs", "Exp", "Sqrt", "Softplus"}


def _pad_amounts(pad: ir.Node, rank: int) -> tuple[np.ndarray, float] | str:
    """(spatial pads as [begins..., ends...], constant value) of a Pad node, or why it can't fold."""
    if pad.attributes.get_string("mode", "constant") != "constant":
        return "the Pad mode is not constant"
    if len(pad.inputs) > 3 and pad.inputs[3] is not None:
        return "the Pad has an axes input"
    p = const(pad.inputs[1]) if len(pad.inputs) > 1 and pad.inputs[1] is not None else None
    if p is None:
        attr = pad.attributes.get("pads")  # opset < 11
        p = None if attr is None else np.asarray(attr.as_ints())
    if p is None or p.size != 2 * rank:
        return "the pads are not constant"
    p = p.reshape(2, rank).astype(np.int64)
    if p[:, :2].any() or (p < 0).any():
        return "the Pad pads the batch/channel axes or crops"
    if len(pad.inputs) > 2 and pad.inputs[2] is not None:
        v = const(pad.inputs[2])
        if v is None or v.size != 1:
            return "the pad value is not a constant"
        value = float(v.reshape(-1)[0])
    else:
        value = float(pad.attributes.get_float("value", 0.0))
    return p[:, 2:].reshape(-1), value


def _non_negative(x: ir.Value) -> bool:
    p = x.producer()
    if p is None or p.domain != "":
        return False
    if p.op_type in _NON_NEGATIVE:
        return True
    if p.op_type == "Clip" and len(p.inputs) > 1 and p.inputs[1] is not None:
        lo = const(p.inputs[1])
        return lo is not None and lo.size == 1 and float(lo.reshape(-1)[0]) >= 0
    return False


def _pool_refusal(pool: ir.Node, x: ir.Value, pads: np.ndarray, value: float) -> str | None:
    attrs = pool.attributes
    if attrs.get_string("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        return "the pool uses SAME auto_pad"
    if attrs.get_int("ceil_mode", 0) != 0:
        return "the pool rounds up (ceil_mode=1)"
    own = np.asarray(attrs["pads"].as_ints()) if "pads" in attrs else np.zeros_like(pads)
    if pool.op_type == "AveragePool":
        if value != 0.0:
            return "the pad value is not zero"
        if attrs.get_int("count_include_pad", 0) != 1 and own.any():
            return "the pool's own pads are not counted (count_include_pad=0) while the Pad's zeros are"
        return None
    if len(pool.outputs) > 1 and (pool.outputs[1].uses() or pool.outputs[1].is_graph_output()):
        return "the MaxPool's indices output is used"
    if "dilations" in attrs and any(d != 1 for d in attrs["dilations"].as_ints()):
        return "the MaxPool is dilated"
    kernel = np.asarray(attrs["kernel_shape"].as_ints())
    total = (pads + own).reshape(2, -1)
    if (total >= kernel).any():
        return "a pad is not smaller than the kernel (a window could see padding only)"
    if value == -np.inf or (value == 0.0 and _non_negative(x)):
        return None
    return "the pad value is neither -inf nor zero on a non-negative input (MaxPool pads with -inf)"


def _fold_into_pools(model: ir.Model, ctx: PassContext) -> int:
    count = 0
    for g in graphs(model):
        for pool in list(g):
            if pool.op_type not in ("AveragePool", "MaxPool") or pool.domain != "" or pool.graph is not g:
                continue
            y = pool.inputs[0]
            pad = y.producer() if y is not None else None
            if pad is None or pad.op_type != "Pad" or pad.domain != "" or len(y.uses()) != 1 or y.is_graph_output():
                continue
            rank = len(y.shape) if y.shape is not None else (len(pool.attributes["kernel_shape"].as_ints()) + 2)
            amounts = _pad_amounts(pad, rank)
            why = amounts if isinstance(amounts, str) else _pool_refusal(pool, pad.inputs[0], *amounts)
            if why:
                ctx.note(f"fold-pad: left a Pad before {pool.op_type}: {why}")
                continue
            pads, _ = amounts
            own = pool.attributes["pads"].as_ints() if "pads" in pool.attributes else [0] * len(pads)
            pool.attributes["pads"] = ir.AttrInt64s("pads", [int(a + b) for a, b in zip(pads, own)])
            pool.attributes.pop("auto_pad", None)
            if pool.op_type == "AveragePool":
                pool.attributes["count_include_pad"] = ir.AttrInt64("count_include_pad", 1)
            pool.replace_input_with(0, pad.inputs[0])
            g.remove(pad, safe=True)
            count += 1
    return count


@register("fold-pad", "fold a constant Pad into the following Conv's or pool's pads", "fold")
def run(model: ir.Model, ctx: PassContext) -> int:
    return apply_rules(model, _RULES) + _fold_into_pools(model, ctx)
