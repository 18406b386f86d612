"""Fusions to standard ONNX ops: structural (ONNX text) and numerical before/after tests, refusals, opset notes."""

from __future__ import annotations

import onnx_ir as ir
from test_passes_cleanup import ops, same_outputs

import bushu


def fuse(text: str, opset: int, *passes: str):
    before = ir.from_onnx_text(f'<ir_version: 9, opset_import: ["" : {opset}]>\n' + text)
    after, result = bushu.optimize(before, passes=list(passes), latency=False, show_progress=False)
    assert result and not result.rolled_back, result.render()
    return before, after, result


LAYERNORM = """
    g (float[N, 5, 8] x) => (float[N, 5, 8] y) <float[8] s = {1, 2, 3, 4, 5, 6, 7, 8},
       float[8] b = {0, 1, 0, 1, 0, 1, 0, 1}, float two = {2}, float eps = {1e-5}, int64[1] ax = {-1}> {
      m = ReduceMean (x, ax)
      d = Sub (x, m)
      p = Pow (d, two)
      v = ReduceMean (p, ax)
      e = Add (v, eps)
      r = Sqrt (e)
      n = Div (d, r)
      sc = Mul (n, s)
      y = Add (sc, b)
    }"""


def test_layernorm_fuses_at_opset_18():
    before, after, result = fuse(LAYERNORM, 18, "fuse-layernorm", "dead-code")
    assert ops(after) == ["LayerNormalization"]
    node = after.graph.node(0)
    assert node.attributes["axis"].as_int() == -1
    assert abs(node.attributes["epsilon"].as_float() - 1e-5) < 1e-12
    assert result.fired["fuse-layernorm"] == 1
    same_outputs(before, after)


def test_layernorm_refused_below_opset_17_with_the_reason():
    text = LAYERNORM.replace("m = ReduceMean (x, ax)", "m = ReduceMean <axes = [-1]> (x)").replace(
        "v = ReduceMean (p, ax)", "v = ReduceMean <axes = [-1]> (p)")
    _, after, result = fuse(text, 13, "fuse-layernorm")
    assert "LayerNormalization" not in ops(after)
    assert any("LayerNormalization needs opset 17, the model has 13" in n for n in result.notes), result.notes


def test_layernorm_refuses_a_wrong_exponent():
    _, after, result = fuse(LAYERNORM.replace("float two = {2}", "float two = {3}"), 18, "fuse-layernorm")
    assert "LayerNormalization" not in ops(after)
    assert any("the exponent is 3, not 2" in n for n in result.notes), result.notes


def test_gelu_exact_and_tanh():
    before, after, result = fuse("""
    g (float[N, 16] x) => (float[N, 16] y) <float s = {1.4142135}, float one = {1}, float half = {0.5},
        float three = {3}, float k1 = {0.044715}, float k0 = {0.7978846}> {
      a = Div (x, s)
      e = Erf (a)
      f = Add (e, one)
      g1 = Mul (x, f)
      exact = Mul (g1, half)
      c = Pow (x, three)
      c1 = Mul (k1, c)
      i = Add (x, c1)
      i0 = Mul (i, k0)
      t = Tanh (i0)
      t1 = Add (one, t)
      h = Mul (half, x)
      approx = Mul (h, t1)
      y = Add (exact, approx)
    }""", 20, "fuse-gelu", "dead-code")
    assert ops(after) == ["Gelu", "Gelu", "Add"]
    assert sorted(n.attributes.get_string("approximate", "none") for n in after.graph if n.op_type == "Gelu") == [
        "none", "tanh"]
    assert result.fired["fuse-gelu"] == 2
    same_outputs(before, after)


def test_hardswish_and_hardsigmoid():
    before, after, _ = fuse("""
    g (float[N, 8] x) => (float[N, 8] y) <float three = {3}, float zero = {0}, float six = {6}, float sixth = {0.16666667}> {
      a = Add (x, three)
      c = Clip (a, zero, six)
      m = Mul (x, c)
      hs = Div (m, six)
      a2 = Add (hs, three)
      c2 = Clip (a2, zero, six)
      y = Mul (c2, sixth)
    }""", 14, "fuse-hardswish", "dead-code")
    assert ops(after) == ["HardSwish", "HardSigmoid"]
    same_outputs(before, after)


def test_hardswish_below_opset_14_keeps_the_clip_form_and_says_why():
    """x * HardSigmoid(x), the one shorter form below opset 14, is slower on OpenVINO than the Clip arithmetic: both
    HardSwish forms stay whole (the inner Clip/6 is not taken for a HardSigmoid either), a lone hard sigmoid fuses."""
    before, after, result = fuse("""
    g (float[N, 8] x) => (float[N, 8] y, float[N, 8] z, float[N, 8] s) <float three = {3}, float zero = {0},
                                                                      float six = {6}> {
      a = Add (x, three)
      c = Clip (a, zero, six)
      m = Mul (x, c)
      y = Div (m, six)
      a2 = Add (x, three)
      c2 = Clip (a2, zero, six)
      d = Div (c2, six)
      z = Mul (x, d)
      a3 = Add (y, three)
      c3 = Clip (a3, zero, six)
      s = Div (c3, six)
    }""", 12, "fuse-hardswish", "dead-code")
    assert ops(after).count("Clip") == 2 and ops(after).count("HardSigmoid") == 1, ops(after)
    assert any("HardSwish needs opset 14" in n and "--opset 14" in n for n in result.notes), result.notes
    same_outputs(before, after)


def test_softplus_then_mish():
    before, after, _ = fuse("""
    g (float[N, 8] x) => (float[N, 8] y) <float one = {1}> {
      e = Exp (x)
      a = Add (e, one)
      sp = Log (a)
      t = Tanh (sp)
      y = Mul (x, t)
    }""", 18, "fuse-softplus", "fuse-mish", "dead-code")
    assert ops(after) == ["Mish"]
    same_outputs(before, after)


def test_rmsnorm():
    before, after, _ = fuse("""
    g (float[N, 4, 8] x) => (float[N, 4, 8] y) <float[8] s = {1, 2, 3, 4, 5, 6, 7, 8}, float two = {2},
        float eps = {1e-6}, int64[1] ax = {-1}> {
      p = Pow (x, two)
      m = ReduceMean (p, ax)
      e = Add (m, eps)
      r = Sqrt (e)
      n = Div (x, r)
      y = Mul (n, s)
    }""", 23, "fuse-rmsnorm", "dead-code")
    assert ops(after) == ["RMSNormalization"]
    same_outputs(before, after)


def test_softmax_plain_and_stable():
    before, after, _ = fuse("""
    g (float[N, 3, 8] x) => (float[N, 3, 8] y, float[N, 3, 8] z) <int64[1] ax = {-1}> {
      e = Exp (x)
      s = ReduceSum (e, ax)
      y = Div (e, s)
      mx = ReduceMax <axes = [-1]> (x)
      d = Sub (x, mx)
      e2 = Exp (d)
      s2 = ReduceSum (e2, ax)
      z = Div (e2, s2)
    }""", 17, "fuse-softmax", "dead-code")
    assert ops(after) == ["Softmax", "Softmax"]
    same_outputs(before, after)


def test_fusions_reach_if_bodies():
    before, after, result = fuse("""
    g (float[N, 8] x, bool c) => (float[N, 8] y) <float one = {1}> {
      y = If (c) <then_branch = t () => (float[N, 8] o) { e = Exp (x)
                                                         a = Add (e, one)
                                                         o = Log (a) },
                 else_branch = f () => (float[N, 8] o2) { o2 = Neg (x) }>
    }""", 17, "fuse-softplus", "dead-code")
    body = after.graph.node(0).attributes["then_branch"].as_graph()
    assert [n.op_type for n in body] == ["Softplus"]
    same_outputs(before, after, values={"c": 1})


def test_real_legacy_encoder_fuses_layernorm_and_gelu_at_opset_20(torch_zoo):
    path = torch_zoo("tiny-encoder", legacy=True)  # TorchScript exporter, opset 13, nothing fused
    _, old = bushu.optimize(path, verify="end", latency=False, show_progress=False)
    assert old and "LayerNormalization" not in old.nodes_after
    assert any("LayerNormalization needs opset 17, the model has 13 (rerun with --opset 17)" in n for n in old.notes)
    assert any("Gelu needs opset 20" in n for n in old.notes)
    _, new = bushu.optimize(path, opset=20, verify="end", latency=False, show_progress=False)
    assert new, new.render()
    assert new.nodes_after["LayerNormalization"] == new.fired["fuse-layernorm"] == old.nodes_before["ReduceMean"] // 2
    assert new.nodes_after["Gelu"] == old.nodes_before["Erf"]
    assert "Erf" not in new.nodes_after and "ReduceMean" not in new.nodes_after


def test_layernorm_without_scale_and_bias_and_a_later_affine_fold():
    # a TorchScript export's unit scale and zero bias: eliminate-no-ops drops them, the bare form still fuses
    text = LAYERNORM.replace("{1, 2, 3, 4, 5, 6, 7, 8}", "{1, 1, 1, 1, 1, 1, 1, 1}").replace(
        "{0, 1, 0, 1, 0, 1, 0, 1}", "{0, 0, 0, 0, 0, 0, 0, 0}")
    before, after, _ = fuse(text, 18, "shape-inference", "eliminate-no-ops", "fuse-layernorm", "dead-code")
    assert ops(after) == ["LayerNormalization"]
    same_outputs(before, after)
    # a constant Mul/Add after a LayerNormalization goes into its scale and bias
    before, after, _ = fuse("""
    g (float[N, 5, 8] x) => (float[N, 5, 8] y) <float[8] s = {1, 2, 3, 4, 5, 6, 7, 8},
       float[8] k = {2, 2, 2, 2, -1, -1, -1, -1}, float[1, 8] b = {0, 1, 0, 1, 0, 1, 0, 1}> {
      n = LayerNormalization <axis = -1> (x, s)
      m = Mul (n, k)
      y = Add (b, m)
    }""", 18, "fuse-layernorm", "dead-code")
    assert ops(after) == ["LayerNormalization"]
    same_outputs(before, after)


def test_a_refusal_names_the_block_not_a_commuted_variant():
    """Every commuted variant of a pattern is tried; one that bound the wrong input (Add(b, x) read as Add(x, b))
    refuses with "not a scalar constant": the note keeps the reason of the variant that bound the block as written."""
    _, after, result = fuse("""
    g (float[N, 8] x) => (float[N, 8] y) <float two = {2}, float zero = {0}, float six = {6}, float five = {5}> {
      a = Add (x, two)
      c = Clip (a, zero, six)
      y = Div (c, five)
    }""", 14, "fuse-hardswish")
    assert "HardSigmoid" not in ops(after)
    assert [n for n in result.notes if n.startswith("fuse-hardsigmoid")] == [
        "fuse-hardsigmoid: refused 1 candidate: the divisor is 5, not 6"], result.notes
