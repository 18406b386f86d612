"""Folds into weights: structural (ONNX text) and numerical before/after tests, and real legacy exports."""

from __future__ import annotations

import numpy as np
from test_passes_cleanup import ops, optimize, same_outputs

import bushu

CONV_BN = """
    g (float[N, 2, 5, 5] x) => (float[N, 3, 5, 5] y)
      <float[3, 2, 3, 3] w = {%s}, float[3] b = {0.1, 0.2, 0.3}, float[3] s = {1.5, 0.5, 2.0},
       float[3] o = {0.1, -0.2, 0.3}, float[3] m = {0.05, 0.1, -0.1}, float[3] v = {1.0, 2.0, 0.5}> {
      c = Conv <pads = [1, 1, 1, 1]> (x, w, b)
      y = BatchNormalization <epsilon = 0.001> (c, s, o, m, v)
    }""" % ", ".join(f"{((i * 7) % 11 - 5) / 10:g}" for i in range(54))


def test_fold_batchnorm_into_conv():
    before, after, result = optimize(CONV_BN, "fold-batchnorm", "dead-code")
    assert ops(after) == ["Conv"]
    assert result.fired["fold-batchnorm"] == 1
    same_outputs(before, after)


def _floats(n: int, k: int = 7) -> str:
    return ", ".join(f"{((i * k) % 11 - 5) / 10:g}" for i in range(n))


def test_fold_batchnorm_into_grouped_conv_transpose_and_gemm_with_beta():
    before, after, result = optimize("""
    g (float[N, 4, 3, 3] x, float[N, 3] u) => (float[N, 4, 4, 4] y, float[N, 2] z)
      <float[4, 2, 2, 2] w = {%s}, float[4] s = {1.5, 0.5, 2.0, -1.0}, float[4] o = {0.1, -0.2, 0.3, 0.0},
       float[4] m = {0.05, 0.1, -0.1, 0.2}, float[4] v = {1.0, 2.0, 0.5, 0.3},
       float[2, 3] wg = {1, -2, 3, 0.5, 1, -1}, float[1, 2] c = {0.25, -0.5}, float[2] s2 = {0.7, 1.3},
       float[2] o2 = {0.2, -0.1}, float[2] m2 = {0.3, -0.4}, float[2] v2 = {0.9, 1.1}> {
      t = ConvTranspose <group = 2> (x, w)
      y = BatchNormalization <epsilon = 0.001> (t, s, o, m, v)
      p = Gemm <transB = 1, beta = 0.5, alpha = 2.0> (u, wg, c)
      z = BatchNormalization (p, s2, o2, m2, v2)
    }""" % _floats(32), "fold-batchnorm", "dead-code")
    assert ops(after) == ["ConvTranspose", "Gemm"]
    assert result.fired["fold-batchnorm"] == 2
    assert "beta" not in after.graph.node(1).attributes  # folded into the bias
    same_outputs(before, after)


def test_fold_batchnorm_refuses_a_shared_weight_and_a_shared_product():
    _, after, result = optimize("""
    g (float[N, 2, 5, 5] x) => (float[N, 3, 5, 5] y, float[N, 3, 5, 5] y2, float[N, 3, 5, 5] c2)
      <float[3, 2, 3, 3] w = {%s}, float[3] s = {1.5, 0.5, 2.0}, float[3] o = {0.1, -0.2, 0.3},
       float[3] m = {0.05, 0.1, -0.1}, float[3] v = {1.0, 2.0, 0.5}, float[3, 2, 3, 3] w2 = {%s}> {
      c = Conv <pads = [1, 1, 1, 1]> (x, w)
      y = BatchNormalization (c, s, o, m, v)
      d = Conv <pads = [1, 1, 1, 1]> (x, w)
      c2 = Conv <pads = [1, 1, 1, 1]> (x, w2)
      y2 = BatchNormalization (c2, s, o, m, v)
    }""" % (_floats(54), _floats(54, 5)), "fold-batchnorm")
    assert ops(after).count("BatchNormalization") == 2  # w is d's too; c2 is a graph output
    assert "fold-batchnorm" not in result.fired


def test_fold_conv_affine_takes_per_channel_mul_and_bias_add():
    before, after, result = optimize("""
    g (float[N, 2, 4, 4] x) => (float[N, 3, 4, 4] y) <float[3, 2, 1, 1] w = {1, 2, 3, 4, 5, 6},
        float[1, 3, 1, 1] k = {0.5, 2, -1}, float[3, 1, 1] a = {1, 2, 3}> {
      c = Conv (x, w)
      m = Mul (c, k)
      y = Add (a, m)
    }""", "fold-conv-affine", "dead-code")
    assert ops(after) == ["Conv"]
    conv = after.graph.node(0)
    np.testing.assert_allclose(conv.inputs[2].const_value.numpy(), [1, 2, 3])
    np.testing.assert_allclose(conv.inputs[1].const_value.numpy().reshape(3, 2), [[0.5, 1], [6, 8], [-5, -6]])
    assert result.fired["fold-conv-affine"] == 2
    assert after.graph.outputs[0].name == "y"
    same_outputs(before, after)


def test_fold_conv_affine_refuses_a_spatial_broadcast():
    _, after, result = optimize("""
    g (float[N, 2, 4, 4] x) => (float[N, 3, 4, 4] y) <float[3, 2, 1, 1] w = {1, 2, 3, 4, 5, 6},
        float[1, 1, 1, 4] k = {1, 2, 3, 4}> {
      c = Conv (x, w)
      y = Mul (c, k)
    }""", "fold-conv-affine")
    assert ops(after) == ["Conv", "Mul"]
    assert "fold-conv-affine" not in result.fired


def test_fold_pad_into_conv():
    before, after, _ = optimize("""
    g (float[N, 2, 4, 4] x) => (float[N, 1, 4, 4] y) <float[1, 2, 3, 3] w = {%s}, int64[8] p = {0, 0, 1, 1, 0, 0, 1, 1}> {
      q = Pad (x, p)
      y = Conv (q, w)
    }""" % ", ".join(str(i % 5) for i in range(18)), "fold-pad", "dead-code")
    assert ops(after) == ["Conv"]
    assert list(after.graph.node(0).attributes["pads"].as_ints()) == [1, 1, 1, 1]
    same_outputs(before, after)


def test_matmul_add_to_gemm_only_where_legal():
    before, after, _ = optimize("""
    g (float[4, 3] a, float[2, 4, 3] a3) => (float[4, 2] y, float[2, 4, 2] y3)
      <float[2, 3] b = {1, 2, 3, 4, 5, 6}, float[3, 2] b3 = {1, 2, 3, 4, 5, 6}, float[2] c = {0.5, -0.5}> {
      bt = Transpose <perm = [1, 0]> (b)
      m = MatMul (a, bt)
      y = Add (m, c)
      m3 = MatMul (a3, b3)
      y3 = Add (m3, c)
    }""", "shape-inference", "matmul-to-gemm", "dead-code")
    assert sorted(ops(after)) == ["Add", "Gemm", "MatMul"]  # the rank-3 MatMul+Add is no Gemm
    gemm = [n for n in after.graph if n.op_type == "Gemm"][0]
    assert gemm.attributes["transB"].as_int() == 1
    same_outputs(before, after)


def test_reshape_chain():
    before, after, _ = optimize("""
    g (float[2, 3, 4] x) => (float[6, 4] y) <int64[2] s1 = {3, 8}, int64[2] s2 = {6, 4}> {
      r = Reshape (x, s1)
      y = Reshape (r, s2)
    }""", "reshape-chain", "dead-code")
    assert ops(after) == ["Reshape"]
    same_outputs(before, after)


def test_batchnorm_folds_on_real_legacy_exports(torch_zoo):
    for name in ("digits-cnn", "resnet18-like"):
        path = torch_zoo(name, legacy=True)
        src = bushu.load(path)
        assert any(n.op_type == "BatchNormalization" for n in src.graph)
        out, result = bushu.optimize(src, latency=False, show_progress=False)
        assert result, result.render()
        assert result.fired.get("fold-batchnorm", 0) == result.nodes_before["BatchNormalization"]
        assert "BatchNormalization" not in result.nodes_after
        assert sum(result.nodes_after.values()) < sum(result.nodes_before.values())


def test_constant_chains():
    before, after, result = optimize("""
    g (float[N, 4] x, int64[N] i) => (float[N, 4] y, int64[N] j) <float[4] a = {1, 2, 3, 4}, float b = {0.5},
        int64 k = {3}, int64 m = {4}> {
      p = Add (x, a)
      y = Add (b, p)
      q = Mul (i, k)
      j = Mul (q, m)
    }""", "constant-chains", "dead-code")
    assert ops(after) == ["Add", "Mul"]
    np.testing.assert_allclose(after.graph.node(0).inputs[1].const_value.numpy(), [1.5, 2.5, 3.5, 4.5])
    assert after.graph.node(1).inputs[1].const_value.numpy() == 12
    assert result.fired["constant-chains"] == 2
    same_outputs(before, after)


def test_fold_batchnorm_after_matmul_rank2_and_left_weight_rank3():
    before, after, result = optimize("""
    g (float[N, 4] x, float[N, 3, 5] z) => (float[N, 3] y, float[N, 2, 5] y3)
      <float[4, 3] w = {1, -2, 3, 0.5, 1, -1, 2, 0, 1, -3, 1, 2}, float[2, 3] wl = {1, 2, -1, 0.5, 3, -2},
       float[3] s = {1.5, 0.5, 2.0}, float[3] o = {0.1, -0.2, 0.3}, float[3] m = {0.05, 0.1, -0.1},
       float[3] v = {1.0, 2.0, 0.5}, float[2] s2 = {0.7, 1.3}, float[2] o2 = {0.2, -0.1}, float[2] m2 = {0.3, -0.4},
       float[2] v2 = {0.9, 1.1}> {
      c = MatMul (x, w)
      y = BatchNormalization <epsilon = 0.001> (c, s, o, m, v)
      c3 = MatMul (wl, z)
      y3 = BatchNormalization (c3, s2, o2, m2, v2)
    }""", "shape-inference", "fold-batchnorm", "dead-code")
    assert ops(after) == ["MatMul", "Add", "MatMul", "Add"]
    assert result.fired["fold-batchnorm"] == 2
    same_outputs(before, after)


def test_fold_batchnorm_leaves_a_channel_the_weight_does_not_own():
    _, after, _ = optimize("""
    g (float[N, 3, 4] x) => (float[N, 3, 2] y) <float[4, 2] w = {1, 2, 3, 4, 5, 6, 7, 8}, float[3] s = {1.5, 0.5, 2.0},
       float[3] o = {0.1, -0.2, 0.3}, float[3] m = {0.05, 0.1, -0.1}, float[3] v = {1.0, 2.0, 0.5}> {
      c = MatMul (x, w)
      y = BatchNormalization (c, s, o, m, v)
    }""", "shape-inference", "fold-batchnorm")
    assert "BatchNormalization" in ops(after)  # axis 1 is x's rows, not a column of w


POOL = """
    g (float[N, 2, 6, 6] x) => (float[N, 2, P, Q] y) <int64[8] p = {0, 0, 1, 1, 0, 0, 1, 1}%s> {
      %s
      q = Pad (a, p%s)
      y = %s <kernel_shape = [3, 3], strides = [2, 2]%s> (q)
    }"""


def test_fold_pad_into_pools():
    cases = [  # (extra initializers, producer of a, pad value input, pool, pool attributes)
        ("", "a = Relu (x)", "", "MaxPool", ""),
        (", float ninf = {-inf}", "a = Identity (x)", ", ninf", "MaxPool", ""),
        ("", "a = Identity (x)", "", "AveragePool", ", count_include_pad = 1"),
        ("", "a = Identity (x)", "", "AveragePool", ""),  # no pads of its own: counting them changes nothing
    ]
    for case in cases:
        before, after, _ = optimize(POOL % case, "fold-pad", "eliminate-no-ops", "dead-code")
        assert ops(after) in (["Relu", case[3]], [case[3]]), case
        assert list(after.graph.node(len(after.graph) - 1).attributes["pads"].as_ints()) == [1, 1, 1, 1]
        same_outputs(before, after)


def test_fold_pad_refuses_a_zero_pad_before_maxpool_on_signed_input():
    _, after, result = optimize(POOL % ("", "a = Identity (x)", "", "MaxPool", ""), "fold-pad")
    assert "Pad" in ops(after)
    assert any("neither -inf nor zero on a non-negative input" in n for n in result.notes), result.notes
    _, after, result = optimize(POOL % ("", "a = Identity (x)", "", "AveragePool", ", ceil_mode = 1"), "fold-pad")
    assert "Pad" in ops(after) and any("ceil_mode=1" in n for n in result.notes), result.notes
