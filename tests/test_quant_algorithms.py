"""Accuracy algorithms change weights, never the float function: before/after numbers on small graphs."""

from __future__ import annotations

import numpy as np
from test_quant_annotate import build  # tests/ is on sys.path: pytest's rootdir conftest, no package

from bushu.engines import open_session
from bushu.quant.algorithms import cle, smoothquant
from bushu.quant.convert import clone

SEPARABLE = """
<ir_version: 8, opset_import: ["" : 13]>
sep (float[1,4,8,8] x, float[8,4,1,1] w1, float[8] b1, float[8,1,3,3] wd, float[8] bd, float[6,8,1,1] w2)
    => (float[1,6,8,8] y) {
  a = Conv (x, w1, b1)
  r = Relu (a)
  d = Conv <group = 8, pads = [1, 1, 1, 1]> (r, wd, bd)
  r2 = Relu (d)
  y = Conv (r2, w2)
}
"""

ENCODER = """
<ir_version: 8, opset_import: ["" : 17]>
enc (float[1,5,8] x, float[8] g, float[8] b, float[8,8] wq, float[8,8] wk) => (float[1,5,8] y) {
  n = LayerNormalization <axis = -1> (x, g, b)
  q = MatMul (n, wq)
  k = MatMul (n, wk)
  s = Add (q, k)
  y = Add (s, n)
}
"""


def test_cle_equalizes_channel_ranges_and_keeps_the_function():
    rng = np.random.default_rng(0)
    scales = np.logspace(-2, 1.5, 8).astype(np.float32)  # output channels 300x apart
    model = build(SEPARABLE, {
        "w1": (rng.normal(size=(8, 4, 1, 1)) * scales[:, None, None, None]).astype(np.float32),
        "b1": (rng.normal(size=8) * scales).astype(np.float32),
        "wd": rng.normal(size=(8, 1, 3, 3)).astype(np.float32), "bd": rng.normal(size=8).astype(np.float32),
        "w2": rng.normal(size=(6, 8, 1, 1)).astype(np.float32)})
    x = {"x": rng.normal(size=(1, 4, 8, 8)).astype(np.float32)}
    before = open_session(model, "ort").run(x)["y"]
    eq = clone(model)
    assert [(a.name, b.name) for a, b in cle.pairs(eq)] == [("n0_Conv", "n2_Conv"), ("n2_Conv", "n4_Conv")]
    assert cle.equalize(eq) == 2
    after = open_session(eq, "ort").run(x)["y"]
    np.testing.assert_allclose(after, before, rtol=1e-4, atol=1e-4 * np.abs(before).max())

    def spread(m):
        w = next(v for v in m.graph.initializers.values() if v.name == "w1").const_value.numpy()
        r = np.abs(w).reshape(8, -1).max(axis=1)
        return r.max() / r.min()

    assert spread(eq) < spread(model) / 5


def test_smoothquant_keeps_the_function_with_and_without_a_residual_branch():
    rng = np.random.default_rng(1)
    f = np.float32
    model = build(ENCODER, {"g": (rng.uniform(0.5, 1.5, 8) * np.array([1, 1, 30, 1, 1, 1, 1, 1])).astype(f),
                            "b": rng.normal(size=8).astype(f), "wq": rng.normal(size=(8, 8)).astype(f),
                            "wk": rng.normal(size=(8, 8)).astype(f)})
    x = {"x": rng.normal(size=(1, 5, 8)).astype(f)}
    before = open_session(model, "ort").run(x)["y"]
    sm = clone(model)
    amax = smoothquant.channel_absmax(sm, [x])
    assert list(amax) == ["n"] and amax["n"].argmax() == 2  # the outlier channel
    assert smoothquant.smooth(sm, amax, 0.5) == 1
    # the LayerNorm also feeds the residual Add: a Mul(1/s) goes in front of the two MatMuls instead
    muls = [n for n in sm.graph if n.op_type == "Mul"]
    assert len(muls) == 1 and {u.op_type for u in muls[0].outputs[0].consumers()} == {"MatMul"}
    smoothed = open_session(sm, "ort").run({"x": x["x"]})
    np.testing.assert_allclose(smoothed["y"], before, rtol=1e-4, atol=1e-4)
    # the MatMuls' input now has more even channels
    scale = muls[0].inputs[1].const_value.numpy()
    evened = amax["n"] * scale
    assert evened.max() / evened.min() < amax["n"].max() / amax["n"].min()
