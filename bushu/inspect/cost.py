"""FLOPs of one ONNX node from its attributes and its static input/output shapes.

Conventions (the same as most FLOP counters, so numbers compare across tools):

* Conv, ConvTranspose, Gemm, MatMul, Einsum (and their integer/QLinear forms) count **2 × MACs**, plus one add per
  output element when a bias is given. Conv: ``prod(Y) · C/group · prod(kernel)`` MACs; ConvTranspose:
  ``prod(X) · M/group · prod(kernel)``; MatMul: ``prod(Y) · K``; Einsum: ``(operands − 1) · prod(all index sizes)``.
* Recurrent cells (LSTM, GRU, RNN): 2 × MACs of the gate matmuls per step, plus the element-wise work per hidden
  unit in :data:`RECURRENT`.
* Element-wise ops and activations: :data:`ELEMENTWISE` FLOPs per **output** element: the arithmetic steps of the
  usual formula, a transcendental (exp, log, tanh, erf, sqrt…) counting as one. Variadic Sum/Max/Min/Mean: one per
  extra input. Reductions, normalizations and softmax: :data:`PER_INPUT_ELEMENT` FLOPs per **input** element.
* Pooling: ``prod(Y) · prod(kernel)``. Resize: 0 for nearest, ``2·tᵏ − 1`` per output element for ``k`` resized
  axes with ``t`` taps (linear 2, cubic 4).
* Data movement, shape and type ops (:data:`ZERO`) are 0 FLOPs: their cost is the bytes they move.

Anything else raises :class:`UnknownCost`: it is listed, never counted as zero.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import onnx_ir as ir

Shape = tuple[int, ...]

ZERO = frozenset({
    "Identity", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Concat", "Split", "SplitToSequence",
    "Slice", "Gather", "GatherElements", "GatherND", "ScatterND", "ScatterElements", "Scatter", "Expand", "Tile",
    "Pad", "Shape", "Size", "Constant", "ConstantOfShape", "Cast", "CastLike", "DepthToSpace", "SpaceToDepth",
    "Dropout", "Range", "OneHot", "EyeLike", "Trilu", "Compress", "ReverseSequence", "Optional", "OptionalGetElement",
    "OptionalHasElement", "SequenceAt", "SequenceConstruct", "SequenceEmpty", "SequenceInsert", "SequenceLength",
    "ConcatFromSequence", "RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
})

ELEMENTWISE = {
    **dict.fromkeys(["Add", "Sub", "Mul", "Div", "Pow", "Mod", "Neg", "Abs", "Sign", "Floor", "Ceil", "Round",
                     "Reciprocal", "Sqrt", "Exp", "Log", "Erf", "Tanh", "Sin", "Cos", "Tan", "Asin", "Acos", "Atan",
                     "Sinh", "Cosh", "Asinh", "Acosh", "Atanh", "Relu", "ThresholdedRelu", "Equal", "Less",
                     "LessOrEqual", "Greater", "GreaterOrEqual", "And", "Or", "Xor", "Not", "Where", "IsNaN",
                     "IsInf", "BitShift", "BitwiseAnd", "BitwiseOr", "BitwiseXor", "BitwiseNot"], 1),
    "LeakyRelu": 2, "PRelu": 2, "Clip": 2,  # compare + multiply / min + max
    "Elu": 3, "Softplus": 3, "Softsign": 3, "Celu": 4, "Selu": 4,
    "Sigmoid": 4,  # neg, exp, add, div
    "HardSigmoid": 4,  # mul, add, min, max
    "HardSwish": 5,  # x · hardsigmoid(x)
    "Mish": 5,  # x · tanh(softplus(x))
    "Gelu": 5,  # x · 0.5 · (1 + erf(x/√2)); the tanh approximation is counted as 9 below
    "DequantizeLinear": 2,  # (x − zero point) · scale
    "QuantizeLinear": 4,  # x / scale, round, + zero point, saturate
}

PER_INPUT_ELEMENT = {
    **dict.fromkeys(["ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ArgMax", "ArgMin",
                     "GlobalAveragePool", "GlobalMaxPool", "CumSum", "NonZero", "TopK", "Hardmax"], 1),
    **dict.fromkeys(["ReduceL1", "ReduceL2", "ReduceSumSquare", "GlobalLpPool"], 2),
    "ReduceLogSum": 2, "ReduceLogSumExp": 3,
    "BatchNormalization": 2,  # x · s + b with the statistics folded into s and b
    "Softmax": 5, "LogSoftmax": 5,  # max, sub, exp, sum, div (log)
    "LayerNormalization": 7, "GroupNormalization": 7, "InstanceNormalization": 7,  # mean, sub, sq, var, div, γ, β
    "MeanVarianceNormalization": 5, "RMSNormalization": 4, "LpNormalization": 3,
    "DynamicQuantizeLinear": 6,  # min, max, then quantize
}

# element-wise FLOPs per hidden unit per step (gate activations and state updates), and per bias set
RECURRENT = {"LSTM": (4, 18, 8), "GRU": (3, 13, 6), "RNN": (1, 1, 2)}  # (gates, element-wise, bias adds)

MATMUL_OPS = {"MatMul": (0, 1), "MatMulInteger": (0, 1), "QLinearMatMul": (0, 3)}  # op -> (A index, B index)
CONV_OPS = {"Conv": (1, 2), "ConvInteger": (1, None), "QLinearConv": (3, 8)}  # op -> (W index, bias index)
POOL_OPS = frozenset({"MaxPool", "AveragePool", "LpPool"})


class UnknownCost(Exception):
    """The cost of a node can't be computed; the message says why."""


def numel(shape: Shape) -> int:
    return math.prod(shape)


def flops(op_type: str, attrs: ir.Attributes, ins: Sequence[Shape | None], outs: Sequence[Shape | None]) -> int:
    """FLOPs of one node. ``ins``/``outs`` are static shapes, ``None`` for an absent optional input or an unknown
    shape. Raises :class:`UnknownCost` when the op has no formula or a shape it needs is unknown."""
    if op_type in ZERO:
        return 0
    if op_type in ELEMENTWISE or op_type in ("Sum", "Max", "Min", "Mean"):
        y = _need(outs, 0, "output")
        if op_type == "Gelu" and attrs.get_string("approximate", "none") == "tanh":
            return 9 * numel(y)
        if op_type in ELEMENTWISE:
            return ELEMENTWISE[op_type] * numel(y)
        extra = sum(1 for s in ins if s is not None) - 1 + (op_type == "Mean")
        return max(extra, 0) * numel(y)
    if op_type in PER_INPUT_ELEMENT:
        return PER_INPUT_ELEMENT[op_type] * numel(_need(ins, 0, "input"))
    if op_type in CONV_OPS:
        w_i, b_i = CONV_OPS[op_type]
        w, y = _need(ins, w_i, "weight"), _need(outs, 0, "output")
        return 2 * numel(y) * numel(w[1:]) + _bias(ins, b_i, y)
    if op_type == "ConvTranspose":
        x, w, y = _need(ins, 0, "input"), _need(ins, 1, "weight"), _need(outs, 0, "output")
        return 2 * numel(x) * numel(w[1:]) + _bias(ins, 2, y)
    if op_type == "Gemm":
        a, y = _need(ins, 0, "A"), _need(outs, 0, "output")
        k = a[0] if attrs.get_int("transA", 0) else a[1]
        return 2 * numel(y) * k + _bias(ins, 2, y)
    if op_type in MATMUL_OPS:
        a, y = _need(ins, MATMUL_OPS[op_type][0], "A"), _need(outs, 0, "output")
        return 2 * numel(y) * a[-1]
    if op_type == "Einsum":
        return einsum_flops(attrs.get_string("equation", ""), [_need(ins, i, f"operand {i}") for i in range(len(ins))])
    if op_type in RECURRENT:
        return _recurrent(op_type, attrs, ins)
    if op_type in POOL_OPS:
        kernel = attrs.get_ints("kernel_shape", None)
        if not kernel:
            raise UnknownCost(f"{op_type} has no kernel_shape")
        return numel(_need(outs, 0, "output")) * numel(tuple(kernel))
    if op_type in ("Resize", "Upsample"):
        return _resize(attrs, _need(ins, 0, "input"), _need(outs, 0, "output"))
    raise UnknownCost(f"no cost formula for {op_type}")


def _need(shapes: Sequence[Shape | None], i: int, what: str) -> Shape:
    if i >= len(shapes) or shapes[i] is None:
        raise UnknownCost(f"the shape of its {what} is unknown")
    return shapes[i]  # type: ignore[return-value]


def _bias(ins: Sequence[Shape | None], i: int | None, y: Shape) -> int:
    return numel(y) if i is not None and i < len(ins) and ins[i] is not None else 0


def _recurrent(op_type: str, attrs: ir.Attributes, ins: Sequence[Shape | None]) -> int:
    x, w = _need(ins, 0, "input"), _need(ins, 1, "W")
    gates, per_unit, bias_adds = RECURRENT[op_type]
    seq, batch = (x[1], x[0]) if attrs.get_int("layout", 0) else (x[0], x[1])
    dirs, hidden, inp = w[0], w[1] // gates, w[2]
    macs = seq * batch * dirs * gates * hidden * (inp + hidden)
    elementwise = seq * batch * dirs * hidden * (per_unit + (bias_adds if len(ins) > 3 and ins[3] else 0))
    return 2 * macs + elementwise


def _resize(attrs: ir.Attributes, x: Shape, y: Shape) -> int:
    mode = attrs.get_string("mode", "nearest")
    if mode == "nearest":
        return 0
    taps = {"linear": 2, "bilinear": 2, "cubic": 4}.get(mode)
    if taps is None:
        raise UnknownCost(f"no cost formula for Resize mode '{mode}'")
    k = sum(1 for a, b in zip(x, y) if a != b)
    return (2 * taps**k - 1) * numel(y) if k else 0


def einsum_flops(equation: str, shapes: Sequence[Shape]) -> int:
    """``(operands − 1) · 2 · prod(index sizes)`` for a product of two or more operands (a two-operand einsum is
    a batched matmul: 2 × MACs); ``prod(index sizes)`` adds for a one-operand sum, 0 for a pure transpose."""
    lhs, _, rhs = equation.replace(" ", "").partition("->")
    terms = lhs.split(",")
    if len(terms) != len(shapes):
        raise UnknownCost(f"Einsum equation '{equation}' has {len(terms)} operands, the node {len(shapes)}")
    sizes: dict[str, int] = {}
    for term, shape in zip(terms, shapes):
        letters = list(term.replace("...", ""))
        n_ellipsis = len(shape) - len(letters)
        if "..." in term:  # broadcast dims get pseudo-letters numbered from the right, shared by every operand
            pos = term.index("...")
            letters[pos:pos] = [f"_{n_ellipsis - j}" for j in range(n_ellipsis)]
        if len(letters) != len(shape):
            raise UnknownCost(f"Einsum term '{term}' does not match an operand of rank {len(shape)}")
        for letter, d in zip(letters, shape):
            sizes[letter] = max(sizes.get(letter, 1), d)
    total = math.prod(sizes.values())
    if len(shapes) >= 2:
        return 2 * (len(shapes) - 1) * total
    letters = terms[0].replace("...", "")
    # without "->" the output holds the letters that occur once (NumPy's implicit mode)
    out = set(rhs.replace("...", "")) if "->" in equation else {c for c in letters if letters.count(c) == 1}
    return total if any(c not in out for c in letters) else 0
