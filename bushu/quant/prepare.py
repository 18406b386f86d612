"""Get a float model ready for quantization, and refuse one that can't be.

* An already-quantized model (Q/DQ, QLinear*, *Integer, MatMulNBits ops) is refused: quantizing twice compounds
  the error and the ranges would be observed on already-rounded values.
* Below opset 13, the model is upgraded: per-channel ``DequantizeLinear(axis=…)`` only exists from 13 on (ONNX
  Runtime 1.32 writes it into opset-12 models anyway, and the result won't load).
* ONNX Runtime's *basic* graph optimizations run once (constant folding, BatchNormalization folded into Conv,
  redundant nodes removed — all standard ONNX ops): a BatchNormalization left after a Conv would keep the Conv's
  output in float, and weights must be constants to be quantized.
* Constant nodes become initializers and every node gets a unique name (plans refer to nodes by name).
* A spatial ``ReduceMean`` (squeeze-excite blocks, global pooling as torch exports it) becomes the equivalent
  ``GlobalAveragePool``, which engines run in int8; ReduceMean has no integer kernel.
* With ``fold_affine=True`` (OpenVINO's preset), a constant per-channel ``Mul``/``Add`` after a Conv/Gemm (PP-OCRv4's learnable affine blocks, a scale after a
  bias-free Conv) is folded into its weights (the optimizer's ``fold-conv-affine``): left in place it sits between
  the Conv and its activation, where ONNX Runtime runs it in float between a DequantizeLinear and a QuantizeLinear
  and OpenVINO got a second FakeQuantize (one after the Conv, one after the chain).
* With ``hardswish=True`` (OpenVINO's preset), ``x * HardSigmoid(x, 1/6, 0.5)`` becomes ``HardSwish(x)`` again
  (ONNX Runtime's optimizer inlines HardSwish): OpenVINO runs Conv+HardSwish as one kernel, and the decomposed form
  kept 28 HardSigmoid/Multiply pairs and their reorders in MobileNetV3 (INT8 0.5× FP32).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import (
    LiftConstantsToInitializersPass,
    NameFixPass,
    RemoveUnusedOpsetsPass,
    TopologicalSortPass,
)

from .. import ir as bir
from ..errors import BushuError

QUANTIZED_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "QLinearAdd",
                           "QLinearMul", "QGemm", "MatMulInteger", "ConvInteger", "DynamicQuantizeLinear",
                           "MatMulNBits", "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "QAttention"})
MIN_OPSET = 13
HARDSWISH_OPSET = 14


def _has_hardswish_parts(model: ir.Model) -> bool:
    return any(n.op_type in ("HardSigmoid", "Clip") for n in model.graph)


def quantized_ops(model: ir.Model) -> dict[str, int]:
    """Op types of ``model`` that only appear in quantized models, with their counts."""
    found: dict[str, int] = {}
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        if node.op_type in QUANTIZED_OPS:
            found[node.op_type] = found.get(node.op_type, 0) + 1
    return found


def check_float(model: ir.Model) -> None:
    found = quantized_ops(model)
    if found:
        ops = ", ".join(f"{k} ×{v}" for k, v in sorted(found.items()))
        raise BushuError(f"the model is already quantized ({ops}): quantize the float model it came from")


def check_selection(model: ir.Model, include=(), exclude=()) -> None:
    """``--include``/``--exclude`` entries must name a node or an op type of ``model``: a typo (``conv`` for
    ``Conv``) would otherwise quantize as if the flag were absent, or nothing at all."""
    nodes = list(ir.traversal.RecursiveGraphIterator(model.graph))
    names, types = {n.name for n in nodes}, {n.op_type for n in nodes}
    for flag, items in (("--include", include), ("--exclude", exclude)):
        unknown = [x for x in items if x not in names and x not in types]
        if unknown:
            raise BushuError(f"{flag} {','.join(unknown)}: no node or op type of the model has that name (op types: "
                             f"{', '.join(sorted(types))}; or a node name, as the model file spells it)")


def ort_basic_optimize(model: ir.Model) -> ir.Model:
    """The model after ONNX Runtime's basic (standard-op) graph optimizations."""
    from ..engines.ort import optimized_model

    out = optimized_model(model, "basic")
    out.meta.update({k: v for k, v in model.meta.items() if k != "bushu.path"})
    return out


def spatial_means_to_pooling(model: ir.Model) -> int:
    """``ReduceMean(x, axes=[2, 3], keepdims=1)`` on a 4-D tensor → ``GlobalAveragePool(x)``, the same function
    with an integer kernel (QLinearGlobalAveragePool) where ReduceMean has none. Returns the count rewritten."""
    count = 0
    for node in list(model.graph):
        if node.op_type != "ReduceMean" or node.attributes.get_int("keepdims", 1) != 1:
            continue
        x = node.inputs[0]
        if x is None or x.shape is None or len(x.shape) != 4:
            continue
        axes_in = node.inputs[1] if len(node.inputs) > 1 else None
        if axes_in is not None:
            axes = axes_in.const_value.numpy().tolist() if axes_in.const_value is not None else None
        else:
            axes = node.attributes.get_ints("axes", None)
        if axes is None or sorted(a % 4 for a in axes) != [2, 3]:
            continue
        pool = ir.node("GlobalAveragePool", [x], name=node.name)
        pool.outputs[0].name = node.outputs[0].name + "_pool"
        pool.outputs[0].dtype, pool.outputs[0].shape = node.outputs[0].dtype, node.outputs[0].shape
        model.graph.insert_before(node, pool)
        out = node.outputs[0]
        name = out.name
        out.replace_all_uses_with(pool.outputs[0], replace_graph_outputs=True)
        model.graph.remove(node, safe=True)
        pool.outputs[0].name = name
        count += 1
    return count


def _run_pass(name: str, model: ir.Model) -> int:
    """One of the optimizer's registered passes on ``model`` in place; how many rewrites it made."""
    from ..passes.registry import PassContext, get

    return get(name).run(model, PassContext())


def fuse_hardswish(model: ir.Model) -> int:
    """``x * HardSigmoid(x, 1/6, 0.5)`` → ``HardSwish(x)`` (opset ≥ 14) with the optimizer's fusion; the count."""
    return _run_pass("fuse-hardswish", model) if model.opset_imports.get("", 1) >= HARDSWISH_OPSET else 0


def fold_conv_affine(model: ir.Model) -> int:
    """Constant per-channel Mul/Add after Conv/Gemm folded into the weights; the count."""
    return _run_pass("fold-conv-affine", model)


def _biased_matmul(u: ir.Node, x: ir.Value) -> tuple[ir.Node, ir.Value] | None:
    """``Add(MatMul(x, W), b)`` with ``W`` a constant matrix and ``b`` a constant vector: (the Add, b)."""
    w = u.inputs[1] if u.op_type == "MatMul" and len(u.inputs) == 2 and u.inputs[0] is x else None
    if w is None or w.const_value is None or len(w.const_value.shape) != 2 or len(w.uses()) != 1:
        return None
    users = u.outputs[0].consumers()
    if len(users) != 1 or users[0].op_type != "Add" or u.outputs[0].is_graph_output():
        return None
    add = users[0]
    b = add.inputs[1] if add.inputs[0] is u.outputs[0] else add.inputs[0]
    if b is None or b.const_value is None or b.const_value.shape != (w.const_value.shape[1],):
        return None
    return add, b


def merge_sibling_matmuls(model: ir.Model) -> int:
    """``Add(MatMul(x, Wi), bi)`` for i = 1..n on the same ``x`` (a transformer's Q, K and V projections) →
    ``Split(Add(MatMul(x, [W1 … Wn]), [b1 … bn]))``: the same function (each output column is computed as
    before), three kernels instead of 2n. ONNX Runtime does not fuse the bias Add into its QDQ
    ``MatMulIntegerToFloat``, so each projection cost a MatMul and an Add kernel (all-MiniLM-L6-v2 INT8: 1.72 →
    1.88× FP32). Per-channel weight quantization is per output column: the merged weights quantize the same."""
    g = model.graph
    count = 0
    for x in {v.name: v for n in g for v in n.inputs if v is not None}.values():
        found = [(u, fb) for u in x.consumers() if (fb := _biased_matmul(u, x)) is not None]
        if len(found) < 2:
            continue
        ws = [u.inputs[1].const_value.numpy() for u, _ in found]
        bs = [b.const_value.numpy() for _, (_, b) in found]
        if ws[0].dtype != np.float32 or any(w.shape[0] != ws[0].shape[0] for w in ws):
            continue
        base = found[0][0].name + "_merged"

        def const(name: str, a: np.ndarray) -> ir.Value:
            v = ir.Value(name=name, const_value=ir.tensor(a, name=name), shape=ir.Shape(a.shape),
                         type=ir.TensorType(ir.DataType.from_numpy(a.dtype)))
            g.register_initializer(v)
            return v

        mm = ir.node("MatMul", [x, const(f"{base}_weight", np.concatenate(ws, 1))], name=base)
        add = ir.node("Add", [mm.outputs[0], const(f"{base}_bias", np.concatenate(bs))], name=f"{base}_bias_add")
        split = ir.node("Split", [add.outputs[0], const(f"{base}_sizes", np.array([w.shape[1] for w in ws], np.int64))],
                        {"axis": -1}, num_outputs=len(ws), name=f"{base}_split")
        for v, suffix in ((mm.outputs[0], "out"), (add.outputs[0], "biased")):
            v.name, v.dtype = f"{base}_{suffix}", ir.DataType.FLOAT
        g.insert_before(found[0][0], [mm, add, split])
        for (u, (a, _)), out in zip(found, split.outputs):
            out.dtype, out.shape = a.outputs[0].dtype or ir.DataType.FLOAT, a.outputs[0].shape
            name = a.outputs[0].name
            a.outputs[0].replace_all_uses_with(out, replace_graph_outputs=True)
            g.remove([a, u], safe=True)
            out.name = name
        count += 1
    if count:
        TopologicalSortPass()(model)
    return count


def prepare(model: ir.Model, *, optimize: bool = True, hardswish: bool = False,
            fold_affine: bool = False, merge_matmuls: bool = False) -> tuple[ir.Model, list[str]]:
    """A float copy of ``model`` ready for :func:`~bushu.quant.annotate.plan`, and notes on what was done."""
    check_float(model)
    notes = []
    opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx", 1))
    # HardSwish, which OpenVINO fuses into the Conv before it, exists from opset 14 on
    target = HARDSWISH_OPSET if hardswish and _has_hardswish_parts(model) else MIN_OPSET
    if opset < target:
        try:
            model = bir.convert_opset(model, target)
        except BushuError:
            if target == MIN_OPSET:
                raise
            target = MIN_OPSET
            model = bir.convert_opset(model, target) if opset < target else model
        if opset < target:
            why = "per-channel Q/DQ needs 13, HardSwish 14" if target == HARDSWISH_OPSET else "per-channel Q/DQ needs it"
            notes.append(f"upgraded from opset {opset} to {target} ({why})")
    if optimize:
        before = sum(1 for _ in model.graph)
        model = ort_basic_optimize(model)
        notes.append(f"float graph simplified by ONNX Runtime's basic optimizations ({before} → "
                     f"{sum(1 for _ in model.graph)} nodes)")
    LiftConstantsToInitializersPass(lift_all_constants=False, size_limit=0)(model)
    if fold_affine and (folded := fold_conv_affine(model)):
        notes.append(f"{folded} constant Mul/Add after Conv/Gemm folded into their weights")
    if merge_matmuls and (n := merge_sibling_matmuls(model)):
        notes.append(f"{n} groups of MatMul+bias on one input merged into one MatMul + Split (one integer kernel)")
    pools = spatial_means_to_pooling(model)
    if pools:
        notes.append(f"{pools} spatial ReduceMean → GlobalAveragePool (it has an integer kernel)")
    if hardswish and (n := fuse_hardswish(model)):
        notes.append(f"{n} x·HardSigmoid(x) → HardSwish (the engine fuses Conv+HardSwish)")
    NameFixPass()(model)
    # ONNX Runtime's serialization declares every domain it knows (com.microsoft.nchwc, ai.onnx.training, …): the
    # quantized files would inherit them
    RemoveUnusedOpsetsPass()(model)
    return model, notes
