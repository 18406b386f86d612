"""Clean-up passes: a before/expected structural test (ONNX text) and a before/after numerical test for each."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

import bushu
from bushu.engines import model_specs
from bushu.inputs import synthesize
from bushu.passes.verify import run_ort

HEAD = '<ir_version: 8, opset_import: ["" : 17]>\n'


def optimize(text: str, *passes: str, **kw):
    """(before, after, result) for ``passes`` on the model in ``text``, verified after each pass."""
    before = ir.from_onnx_text(HEAD + text)
    after, result = bushu.optimize(before, passes=list(passes), latency=False, show_progress=False, **kw)
    assert result, result.render()
    assert not result.rolled_back, result.render()
    return before, after, result


def ops(model: ir.Model) -> list[str]:
    return [n.op_type for n in model.graph]


def same_outputs(before: ir.Model, after: ir.Model, **synth) -> None:
    """Numerical before/after: the same feed gives the same outputs on ONNX Runtime."""
    feed = synthesize(model_specs(before)[0], seed=7, shapes={"N": 3}, **synth)
    (a,), (b,) = run_ort(before, [feed]), run_ort(after, [feed])
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(b[k], a[k], rtol=1e-5, atol=1e-6)


def test_fold_constants_folds_arithmetic_and_shape_chains():
    before, after, result = optimize("""
    g (float[N, 4] x, float[48] w) => (float[N, 4] y, float[3, 4, 4] r) {
      a = Constant <value = float[4] {1, 2, 3, 4}> ()
      b = Constant <value = float[4] {1, 1, 1, 1}> ()
      c = Add (a, b)
      y = Mul (x, c)
      qs = Constant <value = int64[4] {1, 3, 4, 4}> ()
      q = ConstantOfShape <value = float[1] {1}> (qs)
      z = Relu (q)
      s = Shape <start = 1> (z)
      r = Reshape (w, s)
    }""", "fold-constants", "dead-code", "lift-constants")
    assert sorted(ops(after)) == ["Mul", "Reshape"]
    c = after.graph.node(0).inputs[1] if ops(after)[0] == "Mul" else after.graph.node(1).inputs[1]
    np.testing.assert_array_equal(c.const_value.numpy(), [2, 3, 4, 5])
    shape = [n for n in after.graph if n.op_type == "Reshape"][0].inputs[1]
    np.testing.assert_array_equal(shape.const_value.numpy(), [3, 4, 4])
    same_outputs(before, after)
    assert result.fired["fold-constants"] >= 1


def test_fold_constants_respects_the_size_cap():
    before, after, result = optimize("""
    g (float[1000, 1000] x) => (float[1000, 1000] y) {
      s = Constant <value = int64[2] {1000, 1000}> ()
      big = ConstantOfShape <value = float[1] {2}> (s)
      y = Mul (x, big)
    }""", "fold-constants")
    assert "ConstantOfShape" in ops(after)
    assert any("size cap" in n and "big" in n for n in result.notes), result.notes
    assert after.graph.initializers == {} or all(v.const_value.size < 10 for v in after.graph.initializers.values())


def test_eliminate_no_ops():
    before, after, _ = optimize("""
    g (float[N, 4] x) => (float[N, 4] y) {
      one = Constant <value = float {1}> ()
      zero = Constant <value = float {0}> ()
      a = Identity (x)
      b = Dropout (a)
      c = Cast <to = 1> (b)
      d = Mul (c, one)
      e = Add (zero, d)
      t = Transpose <perm = [1, 0]> (e)
      u = Transpose <perm = [1, 0]> (t)
      y = Relu (u)
    }""", "shape-inference", "eliminate-no-ops", "dead-code")
    assert ops(after) == ["Relu"]
    assert after.graph.node(0).inputs[0] is after.graph.inputs[0]
    same_outputs(before, after)


def test_eliminate_no_op_shapes():
    before, after, _ = optimize("""
    g (float[2, 3, 4] x) => (float[2, 3, 4] y) {
      pads = Constant <value = int64[6] {0, 0, 0, 0, 0, 0}> ()
      p = Pad (x, pads)
      st = Constant <value = int64[1] {0}> ()
      en = Constant <value = int64[1] {9223372036854775807}> ()
      ax = Constant <value = int64[1] {2}> ()
      s = Slice (p, st, en, ax)
      c = Concat <axis = 0> (s)
      sp = Split <axis = 1> (c)
      shp = Constant <value = int64[3] {2, 3, 4}> ()
      r = Reshape (sp, shp)
      ua = Constant <value = int64[1] {0}> ()
      un = Unsqueeze (r, ua)
      sq = Squeeze (un, ua)
      y = Relu (sq)
    }""", "shape-inference", "eliminate-no-op-shapes", "dead-code")
    assert ops(after) == ["Relu"]
    same_outputs(before, after)


def test_dead_code_removes_unused_nodes_and_initializers_but_keeps_the_signature():
    before, after, result = optimize("""
    g (float[N, 4] x, float[N] unused) => (float[N, 4] y) <float[4] w = {1, 2, 3, 4}, float[4] v = {5, 6, 7, 8}> {
      dead = Mul (x, v)
      y = Add (x, w)
    }""", "dead-code")
    assert ops(after) == ["Add"]
    assert list(after.graph.initializers) == ["w"]
    assert [v.name for v in after.graph.inputs] == ["x", "unused"]
    assert result.fired["dead-code"] == 2
    same_outputs(before, after)


def test_cse_merges_in_the_main_graph_and_in_if_bodies():
    before, after, result = optimize("""
    g (float[N, 4] x, bool c) => (float[N, 4] y, float[N, 4] z) {
      a = Relu (x)
      b = Relu (x)
      y = Add (a, b)
      z = If (c) <then_branch = t () => (float[N, 4] o) { p = Sigmoid (x)
                                                        q = Sigmoid (x)
                                                        o = Mul (p, q) },
                 else_branch = e () => (float[N, 4] o2) { o2 = Neg (x) }>
    }""", "cse", "dead-code")
    assert ops(after).count("Relu") == 1
    then = next(n for n in after.graph if n.op_type == "If")
    assert [n.op_type for n in then.attributes["then_branch"].as_graph()] == ["Sigmoid", "Mul"]
    assert result.fired["cse"] == 2
    same_outputs(before, after, values={"c": 1})


def test_dedup_and_lift_constants():
    before, after, result = optimize("""
    g (float[N, 4] x) => (float[N, 4] y) <float[4] w1 = {1, 2, 3, 4}, float[4] w2 = {1, 2, 3, 4}> {
      k = Constant <value = float[4] {9, 8, 7, 6}> ()
      a = Add (x, w1)
      b = Mul (a, w2)
      y = Sub (b, k)
    }""", "lift-constants", "dedup-initializers")
    assert ops(after) == ["Add", "Mul", "Sub"]
    assert len(after.graph.initializers) == 2
    assert result.fired == {"lift-constants": 1, "dedup-initializers": 1}
    same_outputs(before, after)


def test_shape_inference_keeps_symbolic_dims():
    _, after, _ = optimize("""
    g (float[batch, seq, 8] x) => (float[batch, seq, 8] y) {
      a = Relu (x)
      y = Sigmoid (a)
    }""", "shape-inference")
    a = after.graph.node(0).outputs[0]
    assert [str(d) for d in a.shape] == ["batch", "seq", "8"]
    assert a.dtype == ir.DataType.FLOAT


def test_unknown_pass_lists_the_known_ones():
    with pytest.raises(bushu.BushuError, match="unknown pass 'fold-everything'.*fold-constants"):
        bushu.optimize(ir.from_onnx_text(HEAD + "g (float[2] x) => (float[2] y) { y = Relu (x) }"),
                       passes="fold-everything", latency=False)


def test_neutral_tensors_and_unsqueeze_chains():
    before, after, _ = optimize("""
    g (float[N, 3, 4] x, int64[N] i) => (float[N, 3, 4] y, float[1, N, 3, 4] z, int64[1, N, 1, 1] u)
      <float[4] one = {1, 1, 1, 1}, float[3, 1] zero = {0, 0, 0}, float[1, 1, 1, 1] wide = {1},
       float eps = {1e-12}, int64[2] a1 = {0, 2}, int64[1] a2 = {-1}> {
      r = Relu (x)
      m = Mul (r, one)
      y = Add (zero, m)
      w = Mul (x, wide)
      z = Add (w, eps)
      t = Unsqueeze (i, a1)
      u = Unsqueeze (t, a2)
    }""", "shape-inference", "eliminate-no-ops", "dead-code")
    # x*ones and zeros+x go; the ones that widen the shape stay, and so does +1e-12 (not zero)
    assert ops(after) == ["Relu", "Mul", "Add", "Unsqueeze"]
    assert list(after.graph.node(3).inputs[1].const_value.numpy()) == [0, 2, 3]
    same_outputs(before, after)


def test_fold_shape_facts_equal_and_where_on_dims():
    # torch's expand: Where(Equal(shape, -1), 1, shape) on a shape vector of dims (never negative) and -1s
    before, after, result = optimize("""
    g (float[N, M] x, bool[N, M] f) => (int64[4] y, bool[N, M] g) <int64[4] neg = {-1, -1, -1, -1},
        int64[4] one = {1, 1, 1, 1}, int64[1] m1 = {-1}, int64 i0 = {0}, int64 i1 = {1}, int64[1] ax = {0},
        bool t = {1}> {
      s = Shape (x)
      d0 = Gather (s, i0)
      u0 = Unsqueeze (d0, ax)
      d1 = Gather (s, i1)
      u1 = Unsqueeze (d1, ax)
      v = Concat <axis = 0> (u0, m1, u1, m1)
      e = Equal (v, neg)
      y = Where (e, one, v)
      a = And (f, t)
      g = Not (a)
    }""", "shape-inference", "fold-shape-facts", "eliminate-no-ops", "dead-code")
    assert sorted(ops(after)) == ["Concat", "Gather", "Gather", "Not", "Shape", "Unsqueeze", "Unsqueeze"]
    assert result.fired["fold-shape-facts"] == 2  # the Equal to a constant, the Where to a Concat
    same_outputs(before, after)


def test_inline_constant_if_renames_branch_values_and_inlines_nested_ifs():
    before, after, result = optimize("""
    g (float[N, 4] x, bool d) => (float[N, 4] y, float[N, 4] z, float[N, 4] w) {
      c = Constant <value = bool {1}> ()
      y, z = If (c) <then_branch = t () => (float[N, 4] a, float[N, 4] b) {
                         tmp = Relu (x)
                         a = Mul (tmp, tmp)
                         k = Constant <value = bool {0}> ()
                         b = If (k) <then_branch = t3 () => (float[N, 4] p) { p = Neg (tmp) },
                                     else_branch = e3 () => (float[N, 4] q) { q = Abs (tmp) }> },
                     else_branch = e () => (float[N, 4] a2, float[N, 4] b2) { a2 = Neg (x)
                                                                              b2 = Abs (x) }>
      w = If (d) <then_branch = t2 () => (float[N, 4] o2) { tmp = Sigmoid (y)
                                                           o2 = Add (tmp, z) },
                  else_branch = e2 () => (float[N, 4] o3) { o3 = Neg (z) }>
    }""", "inline-constant-if", "dead-code", values={"d": 1})
    assert result.fired["inline-constant-if"] == 2  # the outer If, then the nested one it brought in
    assert ops(after) == ["Relu", "Mul", "Abs", "If"]
    relu, mul, ab, if_ = after.graph
    assert relu.outputs[0].name != "tmp"  # the sibling body's 'tmp' keeps its name; the inlined one is renamed
    assert [mul.outputs[0].name, ab.outputs[0].name] == ["y", "z"] and ab.inputs[0] is relu.outputs[0]
    assert [n.outputs[0].name for n in if_.attributes["then_branch"].as_graph()] == ["tmp", "o2"]
    for d in (0, 1):
        same_outputs(before, after, values={"d": d})
