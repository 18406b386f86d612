"""Remove operations that compute their input unchanged.

Cases (onnxscript's rules and our own, applied in every graph):
1. ``Identity`` (kept only where it must name a graph output, see :mod:`.identity`).
2. ``Dropout`` at inference (no ``training_mode`` or a false one), its mask unused.
3. ``Cast`` to the type the value already has; ``Expand`` to the shape it already has.
4. ``Transpose`` with the identity permutation; a ``Transpose`` pair whose permutations cancel.
5. ``Mul``/``Div`` by ones, ``Add``/``Sub`` of zeros, ``And`` with true, ``Or`` with false: a scalar, or a tensor whose broadcast keeps ``x``'s shape
   (its rank is at most ``x``'s and each of its dims is 1 or equals ``x``'s static dim) — e.g. a LayerNorm's
   unit scale and zero bias that a TorchScript export leaves as Mul/Add. Where ONNX shape inference lost ``x``'s
   shape (a Reshape to a computed shape), ONNX Runtime's symbolic shape inference is asked (models under 1 GB).
6. ``Unsqueeze`` of ``Unsqueeze`` merged into one (any number of axes; negative ones need the input's rank).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter.rules import common as rules

from ._rewire import const, new_initializer, to_identity
from ._rules import apply_rules
from .identity import eliminate_identities
from .registry import PassContext, graphs, register
from .symbolic_shapes import ort_shapes

_RULES = [
    rules.no_op_cast_rule, rules.no_op_expand_rule,
    rules.no_op_transpose_rule, rules.transpose_transpose_rule,
]

# op -> (the neutral value, whether it may stand on either side)
_NEUTRAL = {"Mul": (1, True), "Add": (0, True), "Sub": (0, False), "Div": (1, False), "And": (True, True),
            "Or": (False, True)}


def _inference_dropouts(model: ir.Model) -> int:
    count = 0
    for g in graphs(model):
        for node in list(g):
            if node.op_type != "Dropout" or node.domain != "" or node.inputs[0] is None:
                continue
            training = const(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] is not None else False
            mask_used = len(node.outputs) > 1 and (node.outputs[1].uses() or node.outputs[1].is_graph_output())
            if training is None or bool(np.any(training)) or mask_used:
                continue
            to_identity(node, node.inputs[0])
            count += 1
    return count


class _Shapes:
    """``x``'s shape from onnx-ir, else from ONNX Runtime's symbolic shape inference (run once, when first needed;
    only static dims are used)."""

    def __init__(self, model: ir.Model) -> None:
        self.model, self.table = model, None

    def __call__(self, x: ir.Value) -> list | None:
        if x.shape is not None:
            return list(x.shape)
        if self.table is None:
            self.table = ort_shapes(self.model)
        return self.table.get(x.name)


def _keeps_shape(c: np.ndarray, shape: list | None) -> bool:
    """True when broadcasting a value of ``shape`` with a constant of ``c``'s shape gives ``shape``."""
    if c.ndim == 0:
        return True
    if shape is None or c.ndim > len(shape):
        return False
    return all(d == 1 or xd == d for d, xd in zip(c.shape[::-1], shape[::-1]))


def _neutral_operands(model: ir.Model) -> int:
    count = 0
    shape_of = _Shapes(model)
    for g in graphs(model):
        for node in list(g):
            if node.op_type not in _NEUTRAL or node.domain != "" or len(node.inputs) != 2:
                continue
            value, commutes = _NEUTRAL[node.op_type]
            for x, c in ((node.inputs[0], node.inputs[1]), (node.inputs[1], node.inputs[0]))[: 2 if commutes else 1]:
                arr = const(c)
                if (x is None or arr is None or arr.size == 0 or x.dtype is None or c.dtype != x.dtype
                        or not np.all(arr == value) or not _keeps_shape(arr, shape_of(x))):
                    continue
                to_identity(node, x)
                count += 1
                break
    return count


def _unsqueeze_axes(node: ir.Node) -> tuple[list[int], bool] | None:
    """(axes, whether they come from an input) of an Unsqueeze, or None when not constant."""
    if len(node.inputs) > 1 and node.inputs[1] is not None:
        a = const(node.inputs[1])
        return None if a is None else ([int(v) for v in a.reshape(-1)], True)
    attr = node.attributes.get("axes")
    return None if attr is None else (list(attr.as_ints()), False)


def _merge_unsqueezes(model: ir.Model) -> int:
    """``Unsqueeze(Unsqueeze(x, a1), a2)`` → ``Unsqueeze(x, a)``: the outer axes stay where they are; the inner
    ones land in the output positions not taken by the outer ones, in order."""
    count = 0
    for g in graphs(model):
        for outer in list(g):
            if outer.op_type != "Unsqueeze" or outer.domain != "" or outer.graph is not g:
                continue
            mid = outer.inputs[0]
            inner = mid.producer() if mid is not None else None
            if (inner is None or inner.op_type != "Unsqueeze" or inner.domain != "" or inner.graph is not g
                    or len(mid.uses()) != 1 or mid.is_graph_output()):
                continue
            a1, a2 = _unsqueeze_axes(inner), _unsqueeze_axes(outer)
            if a1 is None or a2 is None or a1[1] != a2[1]:
                continue
            (a1, by_input), (a2, _) = a1, a2
            x = inner.inputs[0]
            if min(a1 + a2) < 0:
                if x.shape is None:
                    continue
                r = len(x.shape)
                a1 = [a % (r + len(a1)) for a in a1]
                a2 = [a % (r + len(a1) + len(a2)) for a in a2]
            free = [i for i in range(max(a1 + a2) + len(a1) + len(a2) + 1) if i not in a2]
            axes = sorted(a2 + [free[p] for p in a1])
            outer.replace_input_with(0, x)
            if by_input:
                outer.replace_input_with(1, new_initializer(g, np.array(axes, np.int64), f"{outer.name or 'unsqueeze'}_axes"))
            else:
                outer.attributes["axes"] = ir.AttrInt64s("axes", axes)
            g.remove(inner, safe=True)
            count += 1
    return count


@register("eliminate-no-ops", "remove Identity, inference Dropout, no-op Cast/Transpose/Expand, x*1, x+0, x&true, "
          "Unsqueeze chains", "cleanup")
def run(model: ir.Model, ctx: PassContext) -> int:
    count = _inference_dropouts(model) + _neutral_operands(model) + apply_rules(model, _RULES)
    count += _merge_unsqueezes(model)
    return count + eliminate_identities(model)
