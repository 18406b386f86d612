"""Attention / MultiHeadAttention (ONNX Runtime contrib ops, ``com.microsoft``) from multi-head self-attention.

    q, k, v = heads(Q), heads(K), heads(V)        heads: Reshape (B,S,D) -> (B,S,N,H), Transpose -> (B,N,S,H)
    p = Softmax(q @ kT * scale + mask)             kT = Transpose(heads(K), [0,1,3,2]) or Reshape+Transpose [0,2,3,1]
    y = Reshape(Transpose(p @ v, [0,2,1,3]), (B,S,D))
      == Attention(x, [Wq|Wk|Wv], [bq|bk|bv], attention_bias=mask, num_heads=N, scale=scale)
         when Q, K, V = x @ W + b with one x and constant W, b (three projections, or one packed (B,S,3,N,H))
      == MultiHeadAttention(Q, K, V, attention_bias=mask, num_heads=N, scale=scale)    otherwise

ONNX Runtime does not fuse these blocks itself when it loads a torch export (its AttentionFusion matches older
BERT graphs), so ``--target ort`` writes them. ``scale`` may be a Mul or a Div by a scalar (or absent). ORT wants
the mask as (B|1, N|1, S, L): a mask that only broadcasts over S is expanded first. Refused (with the reason) when
a shape the contract needs is unknown or the Reshapes don't split the last dim into heads.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from ..passes._rewire import const, new_initializer
from ..passes.registry import PassContext, graphs, register
from ..passes.symbolic_shapes import fill_missing_shapes, restore

MS = "com.microsoft"


def _only_user(v: ir.Value) -> ir.Node | None:
    uses = v.uses()
    if len(uses) != 1 or v.is_graph_output():
        return None
    return uses[0][0]


def _perm(node: ir.Node | None, op: str = "Transpose") -> list[int] | None:
    if node is None or node.op_type != op or node.domain != "":
        return None
    attr = node.attributes.get("perm")
    return None if attr is None else list(attr.as_ints())


def _axes(node: ir.Node) -> list[int] | None:
    if len(node.inputs) > 1 and node.inputs[1] is not None:
        a = const(node.inputs[1])
        return None if a is None else [int(x) for x in a.reshape(-1)]
    attr = node.attributes.get("axes")
    return None if attr is None else list(attr.as_ints())


def _split_heads(r: ir.Node | None, parts: int) -> ir.Value | None:
    """x when ``r`` is Reshape(x (B,S,parts*N*H) -> (B,S,[parts,]N,H)), judged on the inferred shapes."""
    if r is None or r.op_type != "Reshape" or r.domain != "":
        return None
    x, y = r.inputs[0], r.outputs[0]
    if x.shape is None or y.shape is None or len(x.shape) != 3 or len(y.shape) != (4 if parts == 1 else 5):
        return None
    xs, ys = list(x.shape), list(y.shape)
    tail = ys[2:]
    if not all(isinstance(d, int) for d in tail) or not isinstance(xs[2], int) or int(np.prod(tail)) != xs[2]:
        return None
    # the element count fixes ys[0] * ys[1] == xs[0] * xs[1]: one equal pair makes the other equal too
    if (xs[0] != ys[0] and xs[1] != ys[1]) or (parts > 1 and ys[2] != parts):
        return None
    return x


def _heads(v: ir.Value) -> tuple[ir.Value, int | None] | None:
    """(x, part) for a (B,N,S,H) value: heads of x (part None), or part ``i`` of a packed (B,S,3,N,H) x."""
    p = v.producer()
    if p is None or p.domain != "":
        return None
    if _perm(p) == [0, 2, 1, 3]:
        x = _split_heads(p.inputs[0].producer(), 1)
        return None if x is None else (x, None)
    # packed: Squeeze(Slice|Split|Gather(Transpose(Reshape(x, (B,S,3,N,H)), [2,0,3,1,4]), i, axis 0), 0)
    part, src = None, None
    if p.op_type == "Squeeze" and _axes(p) == [0]:
        q = p.inputs[0].producer()
        if q is not None and q.op_type == "Slice" and q.domain == "":
            starts, ends = const(q.inputs[1]), const(q.inputs[2])
            axes = const(q.inputs[3]) if len(q.inputs) > 3 and q.inputs[3] is not None else np.array([0])
            steps = const(q.inputs[4]) if len(q.inputs) > 4 and q.inputs[4] is not None else np.array([1])
            if (starts is not None and ends is not None and axes is not None and steps is not None
                    and starts.size == 1 and axes.reshape(-1)[0] == 0 and steps.reshape(-1)[0] == 1
                    and ends.reshape(-1)[0] == starts.reshape(-1)[0] + 1):
                part, src = int(starts.reshape(-1)[0]), q.inputs[0]
        elif q is not None and q.op_type == "Split" and q.domain == "" and q.attributes.get_int("axis", 0) == 0:
            sizes = const(q.inputs[1]) if len(q.inputs) > 1 and q.inputs[1] is not None else None
            if len(q.outputs) == 3 and (sizes is None or list(sizes.reshape(-1)) == [1, 1, 1]):
                part, src = list(q.outputs).index(p.inputs[0]), q.inputs[0]
    elif p.op_type == "Gather" and p.attributes.get_int("axis", 0) == 0:
        i = const(p.inputs[1])
        if i is not None and i.ndim == 0:
            part, src = int(i), p.inputs[0]
    if src is None or part not in (0, 1, 2) or _perm(src.producer()) != [2, 0, 3, 1, 4]:
        return None
    x = _split_heads(src.producer().inputs[0].producer(), 3)
    return None if x is None else (x, part)


def _heads_t(v: ir.Value) -> tuple[ir.Value, int | None] | None:
    """Like :func:`_heads` for the transposed keys (B,N,H,L)."""
    p = v.producer()
    perm = _perm(p)
    if perm == [0, 2, 3, 1]:
        x = _split_heads(p.inputs[0].producer(), 1)
        return None if x is None else (x, None)
    if perm == [0, 1, 3, 2]:
        return _heads(p.inputs[0])
    return None


def _projection(x: ir.Value) -> tuple[ir.Value, ir.Value, ir.Value] | None:
    """(input, W, b) when x = input @ W + b with constant 2-D W and 1-D b."""
    add = x.producer()
    if add is None or add.op_type != "Add" or add.domain != "":
        return None
    for mm_out, b in ((add.inputs[0], add.inputs[1]), (add.inputs[1], add.inputs[0])):
        mm = mm_out.producer()
        bias = const(b)
        if mm is None or mm.op_type != "MatMul" or mm.domain != "" or bias is None or bias.ndim != 1:
            continue
        w = const(mm.inputs[1])
        if w is not None and w.ndim == 2 and w.shape[1] == bias.size and const(mm.inputs[0]) is None:
            return mm.inputs[0], mm.inputs[1], b
    return None


def _scaled(v: ir.Value) -> tuple[ir.Node, float] | str:
    """(the MatMul, the scale) of ``v = MatMul(..) [* c | / c]``, or why not."""
    node = v.producer()
    if node is None or node.domain != "":
        return "the scores are not a MatMul"
    if node.op_type == "MatMul":
        return node, 1.0
    if node.op_type not in ("Mul", "Div"):
        return "the scores are not a MatMul"
    a, b = node.inputs
    for s, c in ([(a, b), (b, a)] if node.op_type == "Mul" else [(a, b)]):
        cv, mm = const(c), s.producer()
        if cv is not None and cv.size == 1 and mm is not None and mm.op_type == "MatMul" and mm.domain == "":
            if _only_user(s) is not node:
                return "the raw scores have other readers"
            k = float(cv.reshape(-1)[0])
            return mm, (k if node.op_type == "Mul" else 1.0 / k)
    return "the scores are scaled by a non-constant"


def _scores(v: ir.Value) -> tuple[ir.Node, float, ir.Value | None] | str:
    """(the q @ kT MatMul, the scale, the added mask or None) under a Softmax input, or why not."""
    add = v.producer()
    if add is None or add.op_type != "Add" or add.domain != "":
        found = _scaled(v)
        return found if isinstance(found, str) else (*found, None)
    why = "no attention scores under the mask Add"
    for s, m in ((add.inputs[0], add.inputs[1]), (add.inputs[1], add.inputs[0])):
        if _only_user(s) is not add:
            continue
        found = _scaled(s)
        if isinstance(found, str):
            why = found
        elif _heads(found[0].inputs[0]) is not None:
            return (*found, m)
    return why


class _Block:
    """One matched attention block, or the reason it was refused (``why``)."""

    def __init__(self, softmax: ir.Node):
        self.why: str | None = None
        self.softmax = softmax
        try:
            self._match(softmax)
        except _Refuse as e:
            self.why = str(e)

    def _match(self, sm: ir.Node) -> None:
        scores = sm.inputs[0]
        rank = len(scores.shape) if scores.shape is not None else None
        if rank != 4 or sm.attributes.get_int("axis", -1) not in (-1, 3):
            raise _Refuse("the Softmax is not over the last axis of a rank-4 value")
        pv = _only_user(sm.outputs[0])
        if pv is None or pv.op_type != "MatMul" or pv.inputs[0] is not sm.outputs[0]:
            raise _Refuse("the probabilities don't feed one MatMul")
        t = _only_user(pv.outputs[0])
        if _perm(t) != [0, 2, 1, 3]:
            raise _Refuse("the context is not transposed back to (B,S,N,H)")
        r = _only_user(t.outputs[0])
        if r is None or r.op_type != "Reshape" or r.outputs[0].shape is None or len(r.outputs[0].shape) != 3:
            raise _Refuse("the context is not reshaped to (B,S,D)")
        self.out = r
        # scores = q @ kT [* scale | / scale] [+ mask]: the mask is the Add operand the rest doesn't match
        found = _scores(scores)
        if isinstance(found, str):
            raise _Refuse(found)
        node, self.scale, self.mask = found
        q, kt, v = _heads(node.inputs[0]), _heads_t(node.inputs[1]), _heads(pv.inputs[1])
        if q is None or kt is None or v is None:
            raise _Refuse("Q, K or V is not a Reshape+Transpose into heads of one (B,S,D) value")
        self.q, self.k, self.v = q, kt, v
        qs = node.inputs[0].shape
        if qs is None or not isinstance(qs[1], int) or not isinstance(qs[3], int):
            raise _Refuse("the head count or size is not static")
        self.heads, self.head_size = int(qs[1]), int(qs[3])
        self.seq_q, self.seq_k = qs[2], node.inputs[1].shape[3] if node.inputs[1].shape is not None else None
        if self.mask is not None and (self.mask.dtype != scores.dtype or self.mask.shape is None
                                      or len(self.mask.shape) > 4):
            raise _Refuse("the mask's type or rank doesn't fit")
        if self.heads * self.head_size != r.outputs[0].shape[2]:
            raise _Refuse("the output is not (B,S,N*H)")

    def sources(self) -> tuple[ir.Value, ir.Value, ir.Value] | None:
        """The three (B,S,D) projections when not packed."""
        if self.q[1] is None and self.k[1] is None and self.v[1] is None:
            return self.q[0], self.k[0], self.v[0]
        return None

    def packed_weights(self) -> tuple[ir.Value, ir.Value | np.ndarray, ir.Value | np.ndarray] | None:
        """(x, W (D_in, 3D), b (3D)) for ORT's Attention, when Q, K, V come from one x by constant projections
        (the packed projection's own constants, or new arrays that concatenate three)."""
        if self.q[1] is not None:
            if not (self.q[0] is self.k[0] is self.v[0] and (self.q[1], self.k[1], self.v[1]) == (0, 1, 2)):
                return None
            return _projection(self.q[0])
        proj = [_projection(s) for s in self.sources() or ()]
        if len(proj) != 3 or any(p is None for p in proj) or not (proj[0][0] is proj[1][0] is proj[2][0]):
            return None
        w, b = [const(p[1]) for p in proj], [const(p[2]) for p in proj]
        if len({a.shape for a in w}) != 1 or len({a.dtype for a in w + b}) != 1:
            return None
        return proj[0][0], np.concatenate(w, axis=1), np.concatenate(b)


class _Refuse(Exception):
    pass


def _bias(graph: ir.Graph, block: _Block, name: str, x_q: ir.Value,
          x_k: ir.Value) -> tuple[ir.Value | None, list[ir.Node]]:
    """The mask as ORT's attention_bias (B|1, N|1, S, L): as it is when its dims 2 and 3 are S and L already,
    else expanded to the sequence lengths of ``x_q`` and ``x_k`` (B,S,D)."""
    m = block.mask
    if m is None:
        return None, []
    shape = list(m.shape)
    if len(shape) == 4 and shape[2] == block.seq_q and shape[3] == block.seq_k and block.seq_q is not None:
        return m, []
    one, at1 = _shared(graph, "attention_bias_ones", [1, 1]), _shared(graph, "attention_bias_dim1", [1])
    nodes, dims = [], []
    for x in dict.fromkeys((x_q, x_k)):  # Shape(x)[1:2] without Shape's start/end (opset 15): older models too
        shape = ir.node("Shape", [x])
        nodes += [shape, ir.node("Gather", [shape.outputs[0], at1], {"axis": 0})]
        dims.append(nodes[-1].outputs[0])
    cat = ir.node("Concat", [one, dims[0], dims[-1]], {"axis": 0})
    exp = ir.node("Expand", [m, cat.outputs[0]], name=f"{name}_bias")
    return exp.outputs[0], [*nodes, cat, exp]


def _shared(graph: ir.Graph, name: str, value: list[int]) -> ir.Value:
    """One int64 initializer per graph for a small constant every block uses (no duplicates to de-duplicate)."""
    v = graph.initializers.get(name)
    c = const(v)
    if c is not None and c.dtype == np.int64 and c.tolist() == value:
        return v
    return new_initializer(graph, np.array(value, np.int64), name)


def rewrite(graph: ir.Graph, block: _Block, index: int, kind: str) -> str | None:
    """Replace ``block`` by ORT's ``kind`` (Attention or MultiHeadAttention); None, or why it can't."""
    name = block.softmax.name or f"attention_{index}"
    if kind == "Attention":
        packed = block.packed_weights()
        if packed is None:
            return "Q, K and V are not constant projections of one input (see ort-mha)"
        x, w, b = packed
        w = new_initializer(graph, w, f"{name}_qkv_weight") if isinstance(w, np.ndarray) else w
        b = new_initializer(graph, b, f"{name}_qkv_bias") if isinstance(b, np.ndarray) else b
        inputs, anchors = [x, w, b, None, None], (x, x)
    else:
        src = block.sources()
        if src is None:
            return "packed Q/K/V whose projection is not constant"
        inputs, anchors = [*src, None, None], src[:2]  # query, key, value, bias, key_padding_mask
    bias, nodes = _bias(graph, block, name, *anchors)
    node = ir.node(kind, [*inputs, bias], {"num_heads": block.heads, "scale": float(block.scale)}, domain=MS,
                   name=f"{name}_fused")
    nodes.append(node)
    y = block.out.outputs[0]
    out = node.outputs[0]
    out.type, out.shape = y.type, y.shape
    graph.insert_before(block.out, nodes)
    was_output = y.is_graph_output()
    ir.convenience.replace_all_uses_with(y, out, replace_graph_outputs=True)
    if was_output:
        old = y.name
        y.name = f"{old}_unfused"
        out.name = old
    return None


def fuse(model: ir.Model, ctx: PassContext, pass_name: str, kind: str) -> int:
    """Every self-attention block of ``model`` to ``kind``; the refusals go to the report under ``pass_name``.
    The replaced nodes are left for ``dead-code``."""
    if not any(n.op_type == "Softmax" for g in graphs(model) for n in g):
        return 0
    # the shapes the match needs, from symbolic inference; put back after (ort-shapes is measured on its own)
    changed = fill_missing_shapes(model)
    count = 0
    for g in graphs(model):
        for i, block in enumerate([_Block(n) for n in list(g) if n.op_type == "Softmax" and n.domain == ""]):
            why = block.why or rewrite(g, block, i, kind)
            if why:
                ctx.note(f"{pass_name}: refused a Softmax block: {why}")
            else:
                count += 1
    restore(changed)
    if count:
        model.opset_imports.setdefault(MS, 1)
    return count


@register("ort-attention", "[--target ort] Attention (com.microsoft): self-attention with its Q/K/V projections",
          "ort")
def run(model: ir.Model, ctx: PassContext) -> int:
    return fuse(model, ctx, "ort-attention", "Attention")
