"""Make an ONNX model pnnx can convert, when it can't convert the model as exported.

pnnx takes no scalar inputs and leaves shape arithmetic it can't fold (a dynamo export's ``Shape → Gather →
Range`` chains for a dynamic batch, ``as_strided`` lowered to a ``Gather`` of constant indices) as layers ncnn
has no kernel for. ncnn has no batch dim anyway (a batch runs item by item), so before pnnx:

1. scalar inputs given a value (``--value sr=16000``) become constants (the converted model is valid for that
   value only; the ncnn session refuses another);
2. every input's symbolic batch dim is fixed at 1;
3. constants are folded (onnxscript's optimizer: shape chains, ``If`` on a now-constant condition) and bushu's
   clean-up passes run;
4. a ``Gather`` of a 1-D tensor by constant indices that are ``0…n-1`` in order (``as_strided`` after a
   flatten) becomes the ``Reshape`` it is;
5. ``Reshape(Softmax(Flatten(x, axis=r-1)), Shape(x))`` becomes ``Softmax(x, axis=-1)``: ONNX's version
   converter writes that chain for every last-axis Softmax when a model goes from opset < 13 to 13+ (``bushu
   optimize --opset 14``). It is the same softmax, but it hides the attention pattern pnnx turns into ncnn's
   ``MultiHeadAttention``: PP-OCRv4 rec's attention was then left as ``Tensor.reshape`` + ``torch.unbind``.

6. a one-step, forward ``LSTM`` (sequence length 1, as in an ``LSTMCell``: silero VAD's decoder) becomes its
   arithmetic: two MatMuls, the bias, four gate Slices, Sigmoid/Tanh and the state update. pnnx's ONNX front end
   has no LSTM (it says ``ignore LSTM``); it converts those ops.

7. an input whose dim 0 is static and not 1 while another dim is the batch (silero VAD's ``(2, batch, 128)``
   state), read only by ``Gather(axis=0)`` of constant indices, becomes batch first: ``(1, 2, 128)`` (the same
   bytes at batch 1), read by ``Gather(axis=1)``; each output of that kind gets a ``Reshape`` to batch first.
   pnnx and ncnn take dim 0 of every tensor for the batch (ncnn has none), so a ``Gather`` along it stays a
   ``torch.unbind`` ncnn can't run. The changed shapes are returned (``layout``) and the ncnn session reshapes
   feeds and outputs between them (batch 1 only).

8. a ``Gather`` of a constant table by computed indices (an embedding lookup: BERT's word, position and
   token-type tables) gets ``Clip(indices, -n, n-1)`` in front. pnnx runs the model once on ONNX Runtime to learn
   its shapes, on input tensors it allocates and never fills: MiniLM's token-type table has 2 rows, ORT refused
   the garbage index and pnnx crashed. The clip changes no valid index (``-n…n-1`` is what ``Gather`` accepts);
   the converted model clamps an out-of-range index where ONNX Runtime refuses it.

The other dims stay as they were, so pnnx still sees them dynamic where they are.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx_ir as ir

from ..engines.base import TensorSpec, model_specs
from .common import ConversionError


def bind_scalars(model: ir.Model, values: Mapping[str, object]) -> dict[str, float]:
    """Turn each scalar input into a constant of its value in ``values``; returns the bound values."""
    bound = {}
    for v in list(model.graph.inputs):
        if v.shape is not None and len(v.shape) == 0:
            if v.name not in values:
                raise ConversionError("ncnn", f"pnnx takes no scalar inputs ({v.name}): give its value "
                                              f"(--value {v.name}=…) to convert the model for that value")
            dtype = v.dtype.numpy() if v.dtype is not None else np.float32
            model.graph.inputs.remove(v)
            v.const_value = ir.tensor(np.asarray(values[v.name], dtype=dtype), name=v.name)
            model.graph.register_initializer(v)
            bound[v.name] = float(np.asarray(values[v.name]))
    return bound


def gather_as_reshape(model: ir.Model) -> int:
    """Replace ``Gather(x, idx)`` by ``Reshape(x, idx.shape)`` where ``x`` is 1-D of length n and ``idx`` a
    constant holding 0…n-1 in order; returns how many were replaced."""
    done = 0
    for node in list(model.graph):
        if node.op_type != "Gather" or node.domain not in ("", "ai.onnx") or len(node.inputs) != 2:
            continue
        data, idx = node.inputs
        if data is None or idx is None or idx.const_value is None or data.shape is None or len(data.shape) != 1:
            continue
        n = data.shape[0]
        indices = idx.const_value.numpy()
        if not isinstance(n, int) or indices.size != n or not np.array_equal(indices.ravel(), np.arange(n)):
            continue
        target = ir.Value(name=f"{node.name or 'gather'}_shape", const_value=ir.tensor(np.asarray(indices.shape,
                                                                                                     np.int64)))
        model.graph.register_initializer(target)
        reshape = ir.node("Reshape", [data, target], name=f"{node.name or 'gather'}_as_reshape")
        model.graph.insert_after(node, reshape)
        out = node.outputs[0]
        new = reshape.outputs[0]
        name, out.name = out.name, None
        new.name, new.shape, new.type = name, out.shape, out.type
        out.replace_all_uses_with(new, replace_graph_outputs=True)
        model.graph.remove(node, safe=True)
        done += 1
    return done


def clip_gather_indices(model: ir.Model) -> int:
    """Put ``Clip(indices, -n, n-1)`` before each ``Gather`` of a constant table by non-constant integer indices
    (``n`` the table's size along the axis); returns how many (see item 8 of the module docstring)."""
    done = 0
    for node in list(model.graph):
        if node.op_type != "Gather" or node.domain not in ("", "ai.onnx") or len(node.inputs) != 2:
            continue
        data, idx = node.inputs
        if data is None or idx is None or data.const_value is None or idx.const_value is not None \
                or idx.dtype not in (ir.DataType.INT64, ir.DataType.INT32):
            continue
        n = data.const_value.shape[node.attributes.get_int("axis", 0)]
        base = node.name or f"gather_{done}"
        lo = _const(model, np.asarray(-n, idx.dtype.numpy()), f"{base}_min")
        hi = _const(model, np.asarray(n - 1, idx.dtype.numpy()), f"{base}_max")
        clip = ir.node("Clip", [idx, lo, hi], name=f"{base}_in_range")
        model.graph.insert_before(node, clip)
        node.replace_input_with(1, clip.outputs[0])
        done += 1
    return done


def _producer(value: ir.Value | None, op: str) -> ir.Node | None:
    node = value.producer() if value is not None else None
    return node if node is not None and node.op_type == op and node.domain in ("", "ai.onnx") else None


def unflatten_softmax(model: ir.Model) -> int:
    """Replace ``Reshape(Softmax(Flatten(x, axis=r-1), axis=1|-1), Shape(x))`` (x of rank r) by
    ``Softmax(x, axis=-1)``; returns how many were replaced (the chain's nodes go when nothing else reads them)."""
    done = 0
    for node in list(model.graph):
        if node.op_type != "Reshape" or node.domain not in ("", "ai.onnx") or len(node.inputs) != 2:
            continue
        soft = _producer(node.inputs[0], "Softmax")
        flat = _producer(soft.inputs[0], "Flatten") if soft is not None else None
        shape = _producer(node.inputs[1], "Shape")
        if flat is None or shape is None or len(soft.outputs[0].uses()) != 1:
            continue
        x = flat.inputs[0]
        rank = len(x.shape) if x.shape is not None else None
        axis = soft.attributes.get_int("axis", 1)
        if (x is not shape.inputs[0] or rank is None or rank < 2 or flat.attributes.get_int("axis", 1) != rank - 1
                or axis not in (1, -1) or shape.attributes.get_int("start", 0) != 0
                or shape.attributes.get("end") is not None):
            continue
        new = ir.node("Softmax", [x], attributes={"axis": -1}, name=f"{soft.name or 'softmax'}_unflattened")
        model.graph.insert_after(node, new)
        out = node.outputs[0]
        name, out.name = out.name, None
        new.outputs[0].name, new.outputs[0].shape, new.outputs[0].type = name, out.shape, out.type
        out.replace_all_uses_with(new.outputs[0], replace_graph_outputs=True)
        model.graph.remove(node, safe=True)
        for dead in (soft, flat, shape):  # in use order: the Softmax frees the Flatten
            if not any(o.uses() or o.is_graph_output() for o in dead.outputs):
                model.graph.remove(dead, safe=True)
        done += 1
    return done


def _unsqueeze0(model: ir.Model, x: ir.Value, name: str) -> ir.Node:
    if model.opset_imports.get("", 1) >= 13:
        return ir.node("Unsqueeze", [x, _const(model, np.asarray([0], np.int64), f"{name}_axes")], name=name)
    return ir.node("Unsqueeze", [x], attributes={"axes": [0]}, name=name)


def _const(model: ir.Model, array: np.ndarray, name: str) -> ir.Value:
    v = ir.Value(name=name, const_value=ir.tensor(array, name=name))
    v.type, v.shape = ir.TensorType(ir.DataType.from_numpy(array.dtype)), ir.Shape(array.shape)
    model.graph.register_initializer(v)
    return v


def unroll_lstm_step(model: ir.Model) -> int:
    """Replace each forward ``LSTM`` over a sequence of length 1 with constant weights and given initial states by
    its arithmetic (gates ``i, o, f, c`` as ONNX orders them); returns how many were replaced."""
    done = 0
    for node in list(model.graph):
        if node.op_type != "LSTM" or node.domain not in ("", "ai.onnx"):
            continue
        ins = list(node.inputs) + [None] * (8 - len(node.inputs))
        x, w, r, b, seq, h0, c0, peep = ins
        plain = all(k in ("hidden_size", "direction") for k in node.attributes)
        direction = node.attributes.get_string("direction", "forward")
        if (not plain or direction != "forward" or x is None or x.shape is None or len(x.shape) != 3
                or x.shape[0] != 1 or seq is not None or peep is not None or h0 is None or c0 is None
                or w is None or w.const_value is None or r is None or r.const_value is None
                or (b is not None and b.const_value is None)):
            continue
        hidden = node.attributes.get_int("hidden_size", 0)
        wt = np.ascontiguousarray(w.const_value.numpy()[0].T)  # [input, 4H]
        rt = np.ascontiguousarray(r.const_value.numpy()[0].T)  # [H, 4H]
        bias = (b.const_value.numpy()[0, :4 * hidden] + b.const_value.numpy()[0, 4 * hidden:]) if b is not None \
            else np.zeros(4 * hidden, wt.dtype)
        if not hidden or wt.shape[1] != 4 * hidden:
            continue
        p = node.name or f"lstm{done}"
        axes0 = _const(model, np.asarray([0], np.int64), f"{p}_axes0")
        squeeze = [ir.node("Squeeze", [v, axes0] if model.opset_imports.get("", 1) >= 13 else [v],
                           attributes={} if model.opset_imports.get("", 1) >= 13 else {"axes": [0]},
                           name=f"{p}_squeeze_{k}") for k, v in (("x", x), ("h", h0), ("c", c0))]
        xs, hs, cs = (n.outputs[0] for n in squeeze)
        mx = ir.node("MatMul", [xs, _const(model, wt, f"{p}_W")], name=f"{p}_matmul_x")
        mh = ir.node("MatMul", [hs, _const(model, rt, f"{p}_R")], name=f"{p}_matmul_h")
        add = ir.node("Add", [mx.outputs[0], mh.outputs[0]], name=f"{p}_add")
        gates = ir.node("Add", [add.outputs[0], _const(model, bias.astype(wt.dtype), f"{p}_B")], name=f"{p}_bias")
        new = [*squeeze, mx, mh, add, gates]
        acts = {}
        axis1 = _const(model, np.asarray([1], np.int64), f"{p}_axis1")
        for k, (gate, act) in enumerate((("i", "Sigmoid"), ("o", "Sigmoid"), ("f", "Sigmoid"), ("c", "Tanh"))):
            sl = ir.node("Slice", [gates.outputs[0], _const(model, np.asarray([k * hidden], np.int64), f"{p}_{gate}0"),
                                   _const(model, np.asarray([(k + 1) * hidden], np.int64), f"{p}_{gate}1"), axis1],
                         name=f"{p}_slice_{gate}")
            a = ir.node(act, [sl.outputs[0]], name=f"{p}_{act.lower()}_{gate}")
            new += [sl, a]
            acts[gate] = a.outputs[0]
        fc = ir.node("Mul", [acts["f"], cs], name=f"{p}_forget")
        ic = ir.node("Mul", [acts["i"], acts["c"]], name=f"{p}_input")
        cn = ir.node("Add", [fc.outputs[0], ic.outputs[0]], name=f"{p}_cell")
        tc = ir.node("Tanh", [cn.outputs[0]], name=f"{p}_tanh_cell")
        hn = ir.node("Mul", [acts["o"], tc.outputs[0]], name=f"{p}_hidden")
        yh = _unsqueeze0(model, hn.outputs[0], f"{p}_y_h")
        yc = _unsqueeze0(model, cn.outputs[0], f"{p}_y_c")
        y = _unsqueeze0(model, yh.outputs[0], f"{p}_y")
        new += [fc, ic, cn, tc, hn, yh, yc, y]
        outs = list(node.outputs) + [None] * (3 - len(node.outputs))
        for old_v, made in zip(outs, (y, yh, yc)):
            if old_v is None or (not old_v.uses() and not old_v.is_graph_output()):
                continue
            name, old_v.name = old_v.name, None
            made.outputs[0].name, made.outputs[0].shape, made.outputs[0].type = name, old_v.shape, old_v.type
            old_v.replace_all_uses_with(made.outputs[0], replace_graph_outputs=True)
        model.graph.insert_after(node, new)
        model.graph.remove(node, safe=True)
        done += 1
    return done


def _batch_second(v: ir.Value) -> bool:
    """``v``'s dim 0 is static and not 1 while another dim is not static (the batch, somewhere else)."""
    dims = list(v.shape) if v.shape is not None else []
    return (len(dims) >= 2 and isinstance(dims[0], int) and dims[0] > 1
            and sum(not isinstance(d, int) for d in dims[1:]) == 1)


def batch_first(model: ir.Model) -> dict[str, dict[str, list[int]]]:
    """Make inputs and outputs whose batch is not dim 0 batch first, at batch 1 (see the module docstring, 7);
    returns ``{"inputs": {name: [model shape, ncnn shape]}, "outputs": {…}}`` for what was changed."""
    g = model.graph
    layout: dict[str, dict[str, list[int]]] = {"inputs": {}, "outputs": {}}
    for v in list(g.inputs):
        if not _batch_second(v):
            continue
        uses = [u.node for u in v.uses()]
        if not uses or not all(n.op_type == "Gather" and n.attributes.get_int("axis", 0) == 0 and n.inputs[0] is v
                                and n.inputs[1] is not None and n.inputs[1].const_value is not None for n in uses):
            continue
        shape = [d if isinstance(d, int) else 1 for d in v.shape]
        first = [1, *[d for i, d in enumerate(shape) if i == 0 or isinstance(v.shape[i], int)]]
        v.shape = ir.Shape(first)
        for n in uses:
            n.attributes["axis"] = ir.AttrInt64("axis", 1)
        layout["inputs"][v.name] = [shape, first]
    for i, v in enumerate(list(g.outputs)):
        if not _batch_second(v):
            continue
        shape = [d if isinstance(d, int) else 1 for d in v.shape]
        first = [1, *[d for j, d in enumerate(shape) if j == 0 or isinstance(v.shape[j], int)]]
        target = ir.Value(name=f"{v.name}_batch_first", const_value=ir.tensor(np.asarray(first, np.int64)))
        g.register_initializer(target)
        node = ir.node("Reshape", [v, target], name=f"{v.name}_batch_first")
        g.append(node)
        name, v.name = v.name, f"{v.name}_inner"
        out = node.outputs[0]
        out.name, out.shape, out.type = name, ir.Shape(first), v.type
        g.outputs[i] = out
        layout["outputs"][name] = [shape, first]
    return layout


def prepare(onnx_path: Path, out_path: Path, values: Mapping[str, object] | None
            ) -> tuple[list[TensorSpec], dict, str, dict]:
    """Write the pnnx-ready model (see the module docstring) to ``out_path``; returns its input specs, the bound
    scalar values, a one-line note of what was done and the inputs/outputs made batch first."""
    import onnxscript.optimizer

    from .. import ir as bir
    from ..edit import set_dims
    from ..passes import optimize

    model = bir.load(onnx_path)
    bound = bind_scalars(model, values or {})
    batch = {}
    anonymous = False
    for v in model.graph.inputs:
        first = v.shape[0] if v.shape is not None and len(v.shape) else None
        if isinstance(first, ir.SymbolicDim) and first.value:
            batch[first.value] = 1
        elif (first is None or (isinstance(first, ir.SymbolicDim) and not first.value)) and v.shape is not None \
                and len(v.shape) > 1:  # an unnamed batch dim: fixed on this input alone
            v.shape = ir.Shape([1, *v.shape[1:]])
            anonymous = True
    if batch:
        set_dims(model, batch)
    batch = batch or anonymous
    softmaxes = unflatten_softmax(model) if model.opset_imports.get("", 0) >= 13 else 0
    onnxscript.optimizer.optimize(model)
    model, _ = optimize(model, level="basic", verify="off", latency=False, show_progress=False)
    gathers = gather_as_reshape(model)
    lstms = unroll_lstm_step(model)
    if lstms:  # the unrolled state arithmetic is left for pnnx; dead LSTM outputs go
        model, _ = optimize(model, level="basic", verify="off", latency=False, show_progress=False)
    layout = batch_first(model)
    clipped = clip_gather_indices(model)
    bir.save(model, out_path, force=True)
    specs, _ = model_specs(model)
    what = [f"bound {', '.join(f'{k}={v:g}' for k, v in bound.items())}" if bound else "",
            "batch fixed at 1" if batch else "", "constants folded",
            f"{gathers} Gather(0…n-1) as Reshape" if gathers else "",
            f"{softmaxes} Flatten-Softmax-Reshape as Softmax" if softmaxes else "",
            f"{lstms} one-step LSTM unrolled" if lstms else "",
            f"{clipped} table lookup(s) clipped to the table" if clipped else "",
            f"batch first: {', '.join([*layout['inputs'], *layout['outputs']])}"
            if layout["inputs"] or layout["outputs"] else ""]
    return specs, bound, "; ".join(w for w in what if w), layout


def scalar_inputs(specs: Sequence[TensorSpec]) -> list[str]:
    return [s.name for s in specs if s.shape == ()]
