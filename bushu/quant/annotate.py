"""Policy: which tensors of a float model get which quantization, for one engine preset.

The result is a :class:`Plan` — plain data that :mod:`bushu.quant.calibrate` and :mod:`bushu.quant.convert`
execute. Rules, in order:

* Case 1: nodes named by ``exclude`` or ``keep_float`` (by name or op type), or not matched by ``include`` when it
  is given, stay in float.
* Case 2: transformer mask and Softmax arithmetic stays in float: every node computed from an integer graph input
  (the attention mask) without passing a weighted op, and every node between a MatMul and the Softmax it feeds.
  Quantizing the additive mask (-10000 next to scores of ~10) destroys the scores' resolution.
* Case 3: Conv/ConvTranspose/Gemm (constant weights) and MatMul are quantized: activation inputs per tensor,
  weights per output channel, bias in int32 at ``input scale × weight scale``.
* Case 4: Add/Mul/Concat/pooling/Sigmoid are quantized only when all their inputs are activations and one of them
  is already quantized — a lone quantized Add would only add Q/DQ pairs.
* Case 5: data-movement ops (Reshape, Transpose, MaxPool, Resize, …) whose input is quantized share the input's
  scale and zero point, so engines drop the pair around them.
* Case 6: a Relu/Clip(0, …) right after a quantized node is folded into that node's output quantization when the
  preset says so (ONNX Runtime): the uint8 QuantizeLinear clamps at 0 by itself. Otherwise the activation's output
  is quantized instead of its input (OpenVINO fuses Conv+ReLU and wants the FakeQuantize after it); with
  ``affine_post_ops`` (OpenVINO) the quantization goes after the constant Mul/Add chain that follows the
  activation (PP-OCRv4: Conv → HardSwish → ×c → +d), which OpenVINO also runs inside the Conv kernel — one
  FakeQuantize per Conv instead of two (PP-OCRv4 rec on OpenVINO: 96.3 → 98.0 % words, 1.67 → 1.83× FP32).

* Case 7: the output of a MatMul/Gemm is quantized only when a consumer takes it quantized: ONNX Runtime runs
  DQ → MatMul → float as one integer kernel (MatMulIntegerToFloat, QGemm with float output), and transformers'
  projections feed a float bias Add and residual stream whose outliers a per-tensor uint8 scale would crush.
  Likewise a global/average pool's output, which engines compute from int8 into float.
  On OpenVINO (``affine_post_ops``) a MatMul/Gemm whose bias Add feeds only data-movement ops (a transformer's
  fused QKV projection → Reshape → Slice/Transpose → attention MatMuls) is quantized after the bias Add, once:
  the reshapes and splits then move int8 and the FullyConnected kernel writes int8, as in NNCF's files.
* Case 8: squeeze-excite gates — ``Mul(x, gate(Conv(act(Conv(pool(x))))))`` — keep their Convs in float when the
  preset says so (OpenVINO, as NNCF's SE-block pattern does): they run on a 1×1 map, where Q/DQ and reorders cost
  more than an int8 kernel saves. ``x``, the gate's output and the Mul stay quantized.
* Case 9: HardSwish written out as ``x * HardSigmoid(x)`` stays in float: no engine has an integer HardSigmoid, and
  ONNX Runtime's DQ → HardSigmoid → Q + QLinearMul took longer than the float pair between the Conv's Q/DQ
  (PP-OCRv4 rec after ``bushu optimize`` wrote its HardSwish that way: INT8 1.03× FP32 instead of 1.25×). Its
  output is quantized when a consumer takes it quantized (a pool or a squeeze-excite Mul would otherwise run in
  float, between layout transposes).
* Case 10: on ONNX Runtime a Conv reading the model's ≤ 4-channel input (an image stem) stays in float: its int8
  kernel runs through im2col, slower than the float one (see :class:`~bushu.quant.spec.EnginePreset`).

* Case 11: a Concat's output, and every tensor sharing its range, is stored as ``preset.concat_activations``
  when the preset names one (OpenVINO: uint8 with zero point 128, the same grid as symmetric int8). OpenVINO 2026.4
  moves the FakeQuantize after a Concat up onto its inputs and feeds the next Conv wrong values from a signed grid.
* Case 12: with ``float_attention`` (ONNX Runtime), a MatMul of two activations (attention's Q·Kᵀ and
  softmax·V) stays in float: ONNX Runtime fuses the float pair with its scale and transposes (FusedMatMul), while
  the quantized pair costs a QuantizeLinear per input, a scale Mul and a DequantizeLinear — per-kernel overhead
  that outweighs the int8 product on short sequences (dynamic quantization leaves them float too).

Graph outputs are never quantized: the model's results stay in float.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir

from .spec import FOLDABLE_ACTIVATIONS, EnginePreset, QType

_GATES = frozenset({"HardSigmoid", "Sigmoid"})
_POOLS = frozenset({"GlobalAveragePool", "ReduceMean"})
_GATE_BODY = frozenset({"Conv", "Relu", "Clip", "HardSwish", "LeakyRelu", "Add"})

_AFFINE = frozenset({"Mul", "Add", "Sub", "Div"})
_INT_TYPES = {ir.DataType.INT64, ir.DataType.INT32, ir.DataType.BOOL}
# Ops whose output stays float unless a consumer takes it quantized (Case 7).
_FLOAT_OUT = frozenset({"MatMul", "Gemm", "GlobalAveragePool", "AveragePool"})


@dataclasses.dataclass(frozen=True)
class WeightSpec:
    node: str
    weight: str  # initializer name
    axis: int  # output-channel axis (per-channel) of the weight
    bias: str | None  # initializer name of a bias to store in int32
    act: str  # the activation input whose scale multiplies the weight scale for the bias


@dataclasses.dataclass(frozen=True)
class Plan:
    """What to quantize: ``weights`` of compute nodes; ``activations`` maps each tensor to Q/DQ to the tensor whose
    calibrated range it takes (itself; a shared op's input; a folded activation's output); ``folded`` activation
    nodes are removed; ``reasons`` says why a compute node stayed in float."""

    weights: tuple[WeightSpec, ...]
    activations: dict[str, str]
    folded: tuple[str, ...]
    nodes: tuple[str, ...]
    reasons: dict[str, str]
    # range tensor -> how its Q/DQ stores it, where that differs from the preset's activations (Case 11)
    qtypes: dict[str, QType] = dataclasses.field(default_factory=dict)

    @property
    def observed(self) -> list[str]:
        """The tensors calibration must observe."""
        return sorted(set(self.activations.values()))


def _is_const(v: ir.Value | None) -> bool:
    return v is not None and (v.const_value is not None or v.is_initializer())


def _is_float(v: ir.Value | None) -> bool:
    return v is not None and v.dtype in (ir.DataType.FLOAT, None)


def _matches(node: ir.Node, names) -> bool:
    return bool(names) and (node.name in names or node.op_type in names)


def _float_region(graph: ir.Graph) -> set[str]:
    """Case 2: names of nodes holding mask or Softmax arithmetic."""
    region: set[str] = set()
    tainted = {v.name for v in graph.inputs if v.dtype in _INT_TYPES}
    for node in graph:  # topological order
        if node.op_type in ("MatMul", "Gemm", "Conv", "Gather"):
            continue  # a weighted op (or an embedding lookup) ends the mask's arithmetic
        if any(i is not None and i.name in tainted for i in node.inputs):
            region.add(node.name)
            tainted.update(o.name for o in node.outputs)
    for node in graph:
        if node.op_type != "Softmax":
            continue
        region.add(node.name)
        stack = [node.inputs[0]]
        while stack:
            v = stack.pop()
            p = v.producer() if v is not None else None
            if p is None or p.op_type in ("MatMul", "Gemm") or p.name in region:
                continue
            region.add(p.name)
            stack.extend(i for i in p.inputs if i is not None and not _is_const(i))
    return region


def squeeze_excite(graph: ir.Graph) -> set[str]:
    """Case 8: names of the nodes between the pool and the gate of every squeeze-excite block."""
    found: set[str] = set()
    for mul in graph:
        if mul.op_type != "Mul" or len(mul.inputs) != 2 or any(v is None for v in mul.inputs):
            continue
        for x, g in (mul.inputs, mul.inputs[::-1]):
            gate = g.producer()
            if gate is None or gate.op_type not in _GATES:
                continue
            body, v = [], gate.inputs[0]
            while (p := v.producer()) is not None and p.op_type in _GATE_BODY:
                body.append(p)
                acts = [i for i in p.inputs if i is not None and not _is_const(i)]
                if len(acts) != 1:
                    break
                v = acts[0]
            p = v.producer()
            if p is not None and p.op_type in _POOLS and p.inputs[0] is x and any(n.op_type == "Conv" for n in body):
                found.update(n.name for n in body)
    return found


def _is_hardswish(node: ir.Node) -> bool:
    """``Mul(x, HardSigmoid(x))``: HardSwish written out (ONNX Runtime inlines it; opsets below 14 lack it)."""
    if node.op_type != "Mul" or len(node.inputs) != 2:
        return False
    for x, h in (node.inputs, node.inputs[::-1]):
        p = h.producer() if h is not None else None
        if p is not None and p.op_type == "HardSigmoid" and p.inputs[0] is x:
            return True
    return False


def _const_affine(node: ir.Node) -> bool:
    """``x ∘ c`` for ∘ in Mul/Add/Sub/Div with ``c`` a constant scalar or per-channel vector (one dim above 1): an
    engine runs it as a post-op of the kernel before it."""
    if node.op_type not in _AFFINE or len(node.inputs) != 2 or _is_const(node.inputs[0]) == _is_const(node.inputs[1]):
        return False
    c = node.inputs[0] if _is_const(node.inputs[0]) else node.inputs[1]
    shape = c.const_value.shape if c.const_value is not None else c.shape
    return shape is not None and sum(1 for d in shape if d != 1) <= 1


def _is_stem(node: ir.Node, graph: ir.Graph) -> bool:
    """Case 10: a Conv reading a graph input with ≤ 4 channels."""
    x = node.inputs[0]
    if node.op_type != "Conv" or x is None or x not in graph.inputs or x.shape is None or len(x.shape) < 3:
        return False
    c = x.shape[1]
    return isinstance(c, int) and c <= 4


def weight_axis(node: ir.Node) -> int | None:
    w = node.inputs[1]
    rank = len(w.shape) if w.shape is not None else (len(w.const_value.shape) if w.const_value is not None else None)
    if node.op_type == "Conv":
        return 0
    if node.op_type == "ConvTranspose":
        return 1 if node.attributes.get_int("group", 1) == 1 else None
    if node.op_type == "Gemm":
        return 0 if node.attributes.get_int("transB", 0) else 1
    if node.op_type == "MatMul":
        return rank - 1 if rank is not None and rank >= 2 else None
    return None


def _clip_from_zero(node: ir.Node) -> bool:
    """Clip(x, 0, hi): the lower bound must be exactly 0 for a uint8 Q with zero point 0 to replace it."""
    if node.op_type == "Relu":
        return True
    lo = node.inputs[1] if len(node.inputs) > 1 else None
    if lo is None:
        return node.attributes.get_float("min", -np.inf) == 0.0
    return lo.const_value is not None and float(lo.const_value.numpy().reshape(-1)[0]) == 0.0


def plan(model: ir.Model, preset: EnginePreset, *, include=(), exclude=(), keep_float=()) -> Plan:
    """Decide, for ``model`` (float, opset ≥ 13, weights as initializers), what :func:`convert` will quantize."""
    return _Planner(model, preset, include, exclude, keep_float).run()


class _Planner:
    """One model's plan in the making. :meth:`run` visits the nodes in graph order and hands each to the rule of its
    kind (:meth:`compute`, :meth:`arith`, :meth:`shared`); each decision the module docstring lists is one method."""

    def __init__(self, model: ir.Model, preset: EnginePreset, include, exclude, keep_float):
        self.graph = model.graph
        self.preset = preset
        self.include, self.exclude, self.keep_float = include, exclude, keep_float
        self.outputs = {v.name for v in self.graph.outputs}
        self.region = _float_region(self.graph)
        self.se = squeeze_excite(self.graph) if preset.float_se else set()
        self.qparams_of: dict[str, str] = {}  # tensor -> tensor whose range it takes
        self.weights: list[WeightSpec] = []
        self.folded: list[str] = []
        self.quantized: list[str] = []
        self.reasons: dict[str, str] = {}

    def run(self) -> Plan:
        for node in self.graph:
            acts = [v for v in node.inputs if v is not None and not _is_const(v)]
            if node.op_type in self.preset.compute_ops:
                self.compute(node, acts)
            elif node.op_type in self.preset.arith_ops:
                self.arith(node, acts)
            elif node.op_type in self.preset.shared_ops:
                self.shared(node)
        return Plan(tuple(self.weights), self.qparams_of, tuple(self.folded), tuple(self.quantized), self.reasons,
                    self.qtypes())

    # -- which nodes may be quantized at all
    def user_float(self, node: ir.Node) -> str | None:
        """Case 1: the user's (or the budget's) choice."""
        if _matches(node, self.exclude):
            return "excluded"
        if _matches(node, self.keep_float):
            return "kept in float by the accuracy budget"
        if self.include and not _matches(node, self.include):
            return "not included"
        return None

    def float_reason(self, node: ir.Node, acts: list[ir.Value]) -> str | None:
        """Why compute node ``node`` stays in float (Cases 1, 8, 10, 2, 12), or None."""
        why = self.user_float(node)
        if why:
            return why
        if node.name in self.se:
            return "squeeze-excite gate (1×1 map: float is faster)"
        if self.preset.float_stem and _is_stem(node, self.graph):
            return "reads the ≤ 4-channel model input (the int8 kernel is slower there)"
        if not acts or not all(_is_float(v) for v in acts):
            return "no float activation input"
        if node.name in self.region:
            return "mask/Softmax arithmetic"
        if self.preset.float_attention and node.op_type == "MatMul" and len(acts) == 2:  # Case 12
            return "activation × activation (attention): the float kernel is faster here"
        if node.op_type != "MatMul" and not self.weight_axis(node):
            return "weights are not constant" if not _is_const(node.inputs[1]) else "grouped"
        return None

    @staticmethod
    def weight_axis(node: ir.Node) -> tuple[int] | tuple[()]:
        """``(axis,)`` of a constant weight's output channels, ``()`` when it has none."""
        axis = weight_axis(node) if _is_const(node.inputs[1]) else None
        return () if axis is None else (axis,)

    def takes_quantized(self, user: ir.Node) -> bool:
        """Whether ``user`` reads its input quantized (Case 7's test; data-movement and post-ops pass it on)."""
        p = self.preset
        if self.user_float(user) or user.name in self.region or user.name in self.se:
            return False
        if user.op_type in p.compute_ops:
            return not (p.float_attention and user.op_type == "MatMul"
                        and not any(_is_const(v) for v in user.inputs))  # Case 12
        if user.op_type in p.shared_ops:  # moves the int8 tensor on: worth it when someone reads it quantized
            return any(self.takes_quantized(u) for o in user.outputs if o.name not in self.outputs
                       for u in o.consumers())
        if user.op_type in p.arith_ops:
            return all(v is not None and not _is_const(v) for v in user.inputs)
        if user.op_type in p.post_ops:
            return any(self.takes_quantized(u) for u in user.outputs[0].consumers())
        return False

    # -- where each quantized tensor gets its Q/DQ
    def quantize_input(self, v: ir.Value) -> None:
        self.qparams_of.setdefault(v.name, v.name)

    def post_op_chain(self, v: ir.Value) -> ir.Value:
        """The end of the constant Mul/Add chain after activation output ``v`` (Case 6, ``affine_post_ops``)."""
        while self.preset.affine_post_ops:
            users = v.consumers()
            u = users[0] if len(users) == 1 else None
            if (u is None or not _const_affine(u) or self.user_float(u) or u.name in self.region
                    or u.outputs[0].name in self.outputs):
                break
            v = u.outputs[0]
        return v

    def quantize_after_bias(self, node: ir.Node) -> bool:
        """Case 7 on OpenVINO: a MatMul/Gemm whose bias Add feeds only data-movement ops read quantized is quantized
        once, after the Add. True when it was."""
        if node.op_type not in ("MatMul", "Gemm") or not self.preset.affine_post_ops:
            return False
        out = node.outputs[0]
        end = self.post_op_chain(out)  # the bias Add
        if (end is not out and end.consumers()
                and all(u.op_type in self.preset.shared_ops and self.takes_quantized(u) for u in end.consumers())):
            self.qparams_of[end.name] = end.name
            return True
        return False

    def quantize_after_activation(self, node: ir.Node) -> bool:
        """Case 6: the single activation after ``node`` is folded into its Q (uint8 presets), or the Q goes after the
        activation and its constant affine chain (OpenVINO). True when one of the two applied."""
        p = self.preset
        users = node.outputs[0].consumers()
        act = users[0] if len(users) == 1 else None
        if (act is None or act.op_type not in p.post_ops or act.outputs[0].name in self.outputs
                or self.user_float(act) is not None):
            return False
        if not p.fold_activations:
            end = self.post_op_chain(act.outputs[0])
            self.qparams_of[end.name] = end.name
            return True
        if p.activations.qmin == 0 and act.op_type in FOLDABLE_ACTIVATIONS and _clip_from_zero(act):
            self.folded.append(act.name)
            self.qparams_of[node.outputs[0].name] = act.outputs[0].name
            # the activation's output becomes the producer's output: already quantized, nothing to insert
            self.qparams_of[act.outputs[0].name] = act.outputs[0].name
            return True
        return False

    def quantize_output(self, node: ir.Node) -> None:
        out = node.outputs[0]
        if out.name in self.outputs or self.quantize_after_bias(node):
            return
        if node.op_type in _FLOAT_OUT and not any(self.takes_quantized(u) for u in out.consumers()):
            return  # Case 7: engines run DQ → MatMul/Gemm/pool → float as one kernel (MatMulIntegerToFloat, QGemm)
        if not self.quantize_after_activation(node):
            self.qparams_of[out.name] = out.name

    # -- the rule for each kind of node
    def compute(self, node: ir.Node, acts: list[ir.Value]) -> None:
        """Case 3: Conv/ConvTranspose/Gemm/MatMul — inputs per tensor, weights per output channel, int32 bias."""
        why = self.float_reason(node, acts)
        if why:
            self.reasons[node.name] = why
            return
        for v in acts:
            self.quantize_input(v)
        for axis in self.weight_axis(node):
            bias = node.inputs[2] if len(node.inputs) > 2 and node.op_type != "MatMul" else None
            w = node.inputs[1]
            ok_bias = (bias is not None and _is_const(bias) and bias.const_value is not None
                       and len(bias.const_value.shape) == 1 and w.const_value is not None
                       and bias.const_value.shape[0] == w.const_value.shape[axis])
            self.weights.append(WeightSpec(node.name, w.name, axis, bias.name if ok_bias else None, acts[0].name))
        self.quantize_output(node)
        self.quantized.append(node.name)

    def arith(self, node: ir.Node, acts: list[ir.Value]) -> None:
        """Case 4 (Add/Mul/Concat/pooling/Sigmoid of quantized activations) and Case 9 (a written-out HardSwish)."""
        if (self.user_float(node) or node.name in self.region or not acts
                or len(acts) != len([i for i in node.inputs if i is not None])):
            return
        if _is_hardswish(node):  # Case 9
            out = node.outputs[0]
            if out.name not in self.outputs and any(self.takes_quantized(u) for u in out.consumers()):
                self.qparams_of[out.name] = out.name
            return
        if not all(_is_float(v) for v in acts) or not any(v.name in self.qparams_of for v in acts):
            return
        for v in acts:
            self.quantize_input(v)
        self.quantize_output(node)
        self.quantized.append(node.name)

    def shared(self, node: ir.Node) -> None:
        """Case 5: a data-movement op of a quantized tensor shares its range."""
        src = node.inputs[0]
        if (self.user_float(node) or src is None or src.name not in self.qparams_of
                or node.outputs[0].name in self.outputs):
            return
        for out in node.outputs:
            if _is_float(out):
                self.qparams_of[out.name] = self.qparams_of[src.name]
        self.quantized.append(node.name)

    def qtypes(self) -> dict[str, QType]:
        """Case 11: a Concat's output (and what shares its range) stored as ``preset.concat_activations``."""
        if self.preset.concat_activations is None:
            return {}
        producers = {o.name: n.op_type for n in self.graph for o in n.outputs}
        return {src: self.preset.concat_activations for src in set(self.qparams_of.values())
                if producers.get(src) == "Concat"}
