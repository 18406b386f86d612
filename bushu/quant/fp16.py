"""FP16 conversion on the IR that keeps the model's float32 inputs and outputs, with a block list of ops that lose
accuracy in half precision or have no FP16 kernel on CPU engines.

Which inputs and outputs of a node turn float16 follows the op's ONNX schema: a float32 slot whose type constraint
allows ``tensor(float16)`` converts; a slot fixed to ``tensor(float)`` (Resize's ``scales``) stays. A node converts
when it is not blocked, all its float outputs can be float16, and no constant it reads leaves the float16 range
(a ``-3.4e38`` mask fill, an epsilon below 2⁻²⁴). Constants read only by converted nodes are stored in float16;
every other boundary gets one shared ``Cast`` — after the graph inputs, before the outputs (which keep their
names), and around blocked ops. ONNX Runtime's ``float16`` converter, used before, wrote files ONNX Runtime then
refused on PP-OCRv4 (a float16 ``scales`` for Resize; a float32 Softmax output typed float16).
"""

from __future__ import annotations

import functools

import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import ShapeInferencePass, TopologicalSortPass

# Ops that stay float32: reductions and normalizations that overflow or lose precision in fp16, ops whose
# index/shape arithmetic must stay exact, and ops without FP16 kernels on CPU (ONNX Runtime's own list).
BLOCK_LIST = ("Range", "Resize", "Upsample", "ReduceMean", "ReduceSum", "ReduceProd", "ReduceL2", "ReduceLogSumExp",
              "Pow", "Sqrt", "Softmax", "LogSoftmax", "LayerNormalization", "CumSum", "TopK", "NonMaxSuppression",
              "RoiAlign", "Min", "Max", "Erf", "Exp", "Log")
# Ops whose output type comes from an attribute, not from their inputs: left as they are.
_ATTRIBUTE_TYPED = frozenset({"Cast", "CastLike", "ConstantOfShape", "EyeLike", "RandomNormal", "RandomUniform",
                              "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli", "Constant"})
F16 = "tensor(float16)"
FP16_MAX = 65504.0
FP16_TINY = 2.0**-24  # the smallest float16 subnormal


@functools.cache
def _slots(op_type: str, opset: int) -> tuple[tuple[tuple[str, bool], ...], tuple[tuple[str, bool], ...]] | None:
    """Per formal input and output of the op's schema: (type constraint name, whether it allows float16)."""
    from onnx import defs

    try:
        schema = defs.get_schema(op_type, opset, "")
    except Exception:  # noqa: BLE001 (an op unknown to onnx: leave it alone)
        return None
    allowed = {c.type_param_str: F16 in c.allowed_type_strs for c in schema.type_constraints}

    def side(params):
        return tuple((p.type_str, allowed.get(p.type_str, p.type_str == F16)) for p in params)

    return side(schema.inputs), side(schema.outputs)


def _slot(params, i: int) -> tuple[str, bool]:
    return params[min(i, len(params) - 1)]  # the last formal parameter may be variadic


def _is_float(v: ir.Value | None) -> bool:
    return v is not None and v.dtype == ir.DataType.FLOAT


def _constant(v: ir.Value) -> np.ndarray | None:
    if v.const_value is not None:
        return v.const_value.numpy()
    p = v.producer()
    if p is not None and p.op_type == "Constant" and p.domain in ("", "ai.onnx") and "value" in p.attributes:
        attr = p.attributes["value"]
        if attr.type == ir.AttributeType.TENSOR:
            return attr.as_tensor().numpy()
    return None


def _out_of_range(a: np.ndarray) -> bool:
    """A constant float16 would change: values beyond its largest finite value, or a small tensor (an epsilon, a
    scale) with a non-zero value below its smallest subnormal. Large weights' tiny elements rounding to zero don't
    count."""
    a = np.abs(np.asarray(a, dtype=np.float64))
    if not a.size:
        return False
    if np.isfinite(a).all() and a.max() > FP16_MAX:
        return True
    return a.size <= 16 and bool(((a > 0) & (a < FP16_TINY)).any())


def fp16(model: ir.Model, *, block_list=BLOCK_LIST, include=(), exclude=()) -> ir.Model:
    """A float16 copy of ``model`` (the given one is left as it is) with float32 inputs and outputs. ``include`` /
    ``exclude`` (node names or op types, as for static INT8): only the included nodes convert; excluded ones stay
    float32 like the block list's."""
    m = ir.from_proto(ir.to_proto(model))
    m.meta.update({k: v for k, v in model.meta.items() if k != "bushu.path"})
    ShapeInferencePass(strict_mode=False)(m)  # every value's dtype, to know which are float32
    g = m.graph
    opset = m.opset_imports.get("", 13)
    blocked = set(block_list)

    def plan(node: ir.Node):
        """(converted input indices, converted output indices) when the node converts, else None."""
        if node.domain not in ("", "ai.onnx") or node.op_type in blocked or node.op_type in _ATTRIBUTE_TYPED:
            return None
        if (exclude and (node.name in exclude or node.op_type in exclude)) or (
                include and node.name not in include and node.op_type not in include):
            return None
        if any(a.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS) for a in node.attributes.values()):
            return None
        slots = _slots(node.op_type, opset)
        if slots is None:
            return None
        ins, outs = slots
        if any(v is not None and v.dtype is None for v in (*node.inputs, *node.outputs)):
            return None  # a type shape inference could not tell
        fout = [i for i, o in enumerate(node.outputs) if _is_float(o)]
        if not fout or not all(_slot(outs, i)[1] for i in fout):
            return None
        fin = [i for i, v in enumerate(node.inputs) if _is_float(v) and _slot(ins, i)[1]]
        for i in fin:
            c = _constant(node.inputs[i])
            if c is not None and _out_of_range(c):
                return None
        return fin, fout

    converted = {}
    for node in g:
        p = plan(node)
        if p is not None:
            converted[id(node)] = p
    for node in g:
        if id(node) in converted:
            for i in converted[id(node)][1]:
                node.outputs[i].dtype = ir.DataType.FLOAT16

    casts: dict[tuple[int, ir.DataType], ir.Value] = {}

    def cast(v: ir.Value, to: ir.DataType) -> ir.Value:
        key = (id(v), to)
        if key not in casts:
            c = ir.node("Cast", [v], {"to": to}, name=f"{v.name}_to_{'fp16' if to == ir.DataType.FLOAT16 else 'fp32'}")
            c.outputs[0].name, c.outputs[0].dtype, c.outputs[0].shape = c.name, to, v.shape
            g.append(c)
            casts[key] = c.outputs[0]
        return casts[key]

    half_consts: dict[int, ir.Value] = {}

    def as_half(v: ir.Value) -> ir.Value:
        """A float16 constant for ``v`` (a float32 initializer or Constant output): ``v`` itself converted when
        converted nodes are its only readers, else a float16 copy beside it."""
        if id(v) in half_consts:
            return half_consts[id(v)]
        a = _constant(v).astype(np.float16)
        only_half = not v.is_graph_output() and all(
            id(u) in converted and i in converted[id(u)][0] for u, i in v.uses())
        if only_half and v.const_value is not None:
            v.const_value, v.dtype = ir.tensor(a, name=v.name), ir.DataType.FLOAT16
            out = v
        elif only_half:  # a Constant node's output
            v.producer().attributes["value"] = ir.AttrTensor("value", ir.tensor(a, name=v.name))
            v.dtype = ir.DataType.FLOAT16
            out = v
        else:
            out = ir.Value(name=f"{v.name}_fp16", type=ir.TensorType(ir.DataType.FLOAT16), shape=v.shape,
                           const_value=ir.tensor(a, name=f"{v.name}_fp16"))
            g.register_initializer(out)
        half_consts[id(v)] = out
        return out

    for node in list(g.all_nodes()):  # subgraphs too: they may read a float16 value of the main graph
        if id(node) in converted:
            for i in converted[id(node)][0]:
                v = node.inputs[i]
                if v.dtype != ir.DataType.FLOAT:
                    continue  # already float16 (a converted producer or constant)
                node.replace_input_with(i, as_half(v) if _constant(v) is not None else cast(v, ir.DataType.FLOAT16))
        else:
            _keep_float_inputs(node, opset, cast)
    for i, v in enumerate(g.outputs):
        if v.dtype == ir.DataType.FLOAT16:
            name = v.name
            v.name = f"{name}_fp16"
            out = cast(v, ir.DataType.FLOAT)
            out.name = name
            g.outputs[i] = out
    for name in [x for x, v in g.initializers.items() if not v.uses() and not v.is_graph_output()]:
        g.initializers.pop(name)
    TopologicalSortPass()(m)
    return m


def _keep_float_inputs(node: ir.Node, opset: int, cast) -> None:
    """A node left in float32 that reads float16 values: Cast them back, unless the node takes float16 in that slot
    and nothing ties the slot to a float32 one (``Shape`` of a float16 tensor needs no Cast)."""
    slots = _slots(node.op_type, opset) if node.domain in ("", "ai.onnx") else None
    half = [i for i, v in enumerate(node.inputs) if v is not None and v.dtype == ir.DataType.FLOAT16]
    if not half:
        return
    keep: set[int] = set()
    if slots is not None and node.op_type not in _ATTRIBUTE_TYPED - {"Cast", "CastLike"}:
        ins, outs = slots
        tied_float = {_slot(outs, i)[0] for i, o in enumerate(node.outputs) if _is_float(o)}
        tied_float |= {_slot(ins, i)[0] for i, v in enumerate(node.inputs) if _is_float(v)}
        keep = {i for i in half if _slot(ins, i)[1] and _slot(ins, i)[0] not in tied_float}
    for i in half:
        if i not in keep:
            node.replace_input_with(i, cast(node.inputs[i], ir.DataType.FLOAT))
