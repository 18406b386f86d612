"""Accuracy algorithms change weights, never the float function: before/after numbers on small graphs."""

from __future__ import annotations

import dataclasses

import numpy as np

# tests/ is on sys.path (pytest's rootdir conftest, no package)
from test_quant_annotate import build

import bushu
from bushu import datasets
from bushu.engines import open_session
from bushu.quant import QuantConfig, auto, quantize
from bushu.quant.algorithms import adaround, cle, smoothquant
from bushu.quant.budget import accuracy
from bushu.quant.convert import clone, convert
from bushu.quant.spec import QType
from bushu.quant.static import RANGE_METHODS, Session, run_all

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


FFN = """
<ir_version: 8, opset_import: ["" : 17]>
ffn (float[1,5,8] x, float[8] g, float[8] b, float[8,8] w1, float[8,6] w2) => (float[1,5,6] y) <float[1,5,8] h> {
  n = LayerNormalization <axis = -1> (x, g, b)
  a = MatMul (n, w1)
  h = Relu (a)
  y = MatMul (h, w2)
}
"""


def test_smoothquant_also_smooths_the_ffn_second_projection_with_an_inserted_mul():
    rng = np.random.default_rng(2)
    f = np.float32
    w1 = rng.normal(size=(8, 8)).astype(f) * np.array([1, 1, 1, 40, 1, 1, 1, 1], f)  # channel 3 of h is an outlier
    model = build(FFN, {"g": rng.uniform(0.5, 1.5, 8).astype(f), "b": rng.normal(size=8).astype(f), "w1": w1,
                        "w2": rng.normal(size=(8, 6)).astype(f)})
    feeds = [{"x": rng.normal(size=(1, 5, 8)).astype(f)} for _ in range(4)]
    before = [open_session(model, "ort").run(x)["y"] for x in feeds]
    sm = clone(model)
    assert [x.name for x, _ in smoothquant._targets(sm)] == ["n", "h"]
    amax = smoothquant.channel_absmax(sm, feeds)
    assert amax["h"].argmax() == 3
    assert smoothquant.smooth(sm, amax, 0.7) == 2
    # the LayerNorm feeds only its MatMul: folded into its scale and bias; Relu's output gets a Mul(1/s)
    muls = [n for n in sm.graph if n.op_type == "Mul"]
    assert [m.inputs[0].name for m in muls] == ["h"]
    after = [open_session(sm, "ort").run(x)["y"] for x in feeds]
    for a, b in zip(after, before):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * np.abs(b).max())
    evened = amax["h"] * muls[0].inputs[1].const_value.numpy()
    assert evened.max() / evened.min() < amax["h"].max() / amax["h"].min() / 4


def test_smoothquant_keeps_a_bounded_sample_of_the_stream_for_transformers_only():
    rng = np.random.default_rng(3)
    f = np.float32
    model = build(FFN, {"g": np.ones(8, f), "b": np.zeros(8, f), "w1": rng.normal(size=(8, 8)).astype(f),
                        "w2": rng.normal(size=(8, 6)).astype(f)})
    stream = ({"x": np.full((1, 5, 8), i, f)} for i in range(100))
    sq = smoothquant.transform(QuantConfig())
    out = list(sq.keep_samples(model, stream))
    assert len(sq.samples) == smoothquant.SAMPLES and len(out) == 100  # nothing lost, nothing repeated
    assert [int(x["x"][0, 0, 0]) for x in out] == list(range(100))
    assert smoothquant.transform(QuantConfig(smoothquant=None)).alpha is None  # 'off' builds (the pipeline skips it)
    cnn = build(SEPARABLE, {"w1": np.ones((8, 4, 1, 1), f), "b1": np.ones(8, f), "wd": np.ones((8, 1, 3, 3), f),
                            "bd": np.ones(8, f), "w2": np.ones((6, 8, 1, 1), f)})
    sq = smoothquant.transform(QuantConfig())
    feeds = [{"x": np.zeros((1, 4, 8, 8), f)}]
    assert sq.keep_samples(cnn, feeds) is feeds and sq.samples == []


def test_method_auto_chooses_per_tensor_by_output_error_and_beats_every_single_method(digits_onnx):
    x_tr, _, x_te, _ = datasets.digits()
    feeds = [{"input": x_tr[i:i + 32]} for i in range(0, 320, 32)]
    held = [{"input": x_te[:200]}]  # never calibrated on
    s = Session.start(bushu.load(digits_onnx), feeds, QuantConfig(progress=False), heldout=held)
    notes: list[str] = []
    method, ranked = auto.pick(s, notes)
    assert set(RANGE_METHODS) < set(ranked) | {auto.PER_TENSOR}
    snr = {m: s.score(s.build(method=m)[0], user_metric=False).snr_db for m in RANGE_METHODS}
    chosen = s.score(s.build(method=method)[0], user_metric=False).snr_db
    assert chosen >= max(snr.values()) - 1e-9, (notes, snr)
    assert "trials" in notes[-1] and notes[-1].endswith(f"→ {method}") and f"{chosen:.1f} dB" in notes[-1]
    if method == auto.PER_TENSOR:  # some tensor took another method's range than the best single method's
        base = ranked[1]
        assert any(s.per_tensor[n] != s.ranges(base, s.plan())[n] for n in s.plan().observed)
        assert chosen > snr[base]


def test_adaround_learned_rounding_beats_nearest_at_4_bit_weights(digits_onnx):
    x_tr, _, x_te, _ = datasets.digits()
    feeds = [{"input": x_tr[i:i + 32]} for i in range(0, 256, 32)]
    s = Session.start(bushu.load(digits_onnx), feeds, QuantConfig(progress=False), heldout=[{"input": x_te}])
    p = s.plan()
    ranges = s.ranges("mse", p)
    four = dataclasses.replace(s.config.preset, weights=QType("int8", symmetric=True, bits=4))
    nearest = convert(clone(s.model), p, ranges, four)
    learned = convert(clone(s.model), p, ranges, four)
    note = adaround.apply(s.model, learned, p.weights, feeds, four.weights, iterations=300)  # learned on train digits
    assert note.startswith(f"AdaRound: {len(p.weights)} layers")
    for ws in p.weights:  # still 4-bit integers on the same scales; only the rounding moved, by at most one step
        def stored(m, ws=ws):
            dq = next(n for n in m.graph if n.name == ws.node).inputs[1].producer()
            return dq.inputs[0].const_value.numpy().astype(int), dq.inputs[1].const_value.numpy()
        (a, sa), (b, sb) = stored(nearest), stored(learned)
        assert b.min() >= -7 and b.max() <= 7 and np.array_equal(sa, sb) and np.abs(a - b).max() <= 1
    snr_nearest, snr_learned = s.score(nearest).snr_db, s.score(learned).snr_db  # on the held-out test digits
    assert snr_learned > snr_nearest + 6, (snr_nearest, snr_learned)


def test_adaround_is_opt_in_in_the_pipeline(digits_onnx):
    x_tr, _, x_te, _ = datasets.digits()
    feeds = [{"input": x_tr[i:i + 32]} for i in range(0, 256, 32)]
    cfg = QuantConfig(progress=False, measure_speed=False, bias_correction=False)
    plain = quantize(digits_onnx, feeds, cfg, heldout=[{"input": x_tr[256:512]}])
    ada = quantize(digits_onnx, feeds, cfg.replace(adaround=True), heldout=[{"input": x_tr[256:512]}])
    assert not any("AdaRound" in n for n in plain.notes)
    assert any(n.startswith(f"AdaRound: {ada.quantized_layers} layers") for n in ada.notes)
    test = [{"input": x_te}]  # neither calibrated nor learned on
    ref = run_all(bushu.load(digits_onnx), test)
    assert accuracy(ref, run_all(ada.model, test)).snr_db >= accuracy(ref, run_all(plain.model, test)).snr_db


def test_adaround_handles_depthwise_and_padded_convs():
    rng = np.random.default_rng(0)
    f = np.float32
    model = build(SEPARABLE, {"w1": rng.normal(size=(8, 4, 1, 1)).astype(f), "b1": rng.normal(size=8).astype(f),
                              "wd": rng.normal(size=(8, 1, 3, 3)).astype(f), "bd": rng.normal(size=8).astype(f),
                              "w2": rng.normal(size=(6, 8, 1, 1)).astype(f)})
    feeds = [{"x": rng.normal(size=(1, 4, 8, 8)).astype(f)} for _ in range(8)]
    s = Session.start(model, feeds, QuantConfig(progress=False, cle=False),
                      heldout=[{"x": rng.normal(size=(1, 4, 8, 8)).astype(f)} for _ in range(4)])
    p = s.plan()
    ranges = s.ranges("mse", p)
    four = dataclasses.replace(s.config.preset, weights=QType("int8", symmetric=True, bits=4))
    nearest, learned = convert(clone(s.model), p, ranges, four), convert(clone(s.model), p, ranges, four)
    assert "n2_Conv" in {w.node for w in p.weights}  # the depthwise 3×3 (group 8, pads 1)
    assert adaround.apply(s.model, learned, p.weights, feeds, four.weights, iterations=300).startswith(
        f"AdaRound: {len(p.weights)} layers")
    assert s.score(learned).snr_db > s.score(nearest).snr_db


PROJECTION = """
<ir_version: 8, opset_import: ["" : 13]>
fc (float[2,64] x, float[64,16] w) => (float[2,16] y) {
  h = MatMul (x, w)
  y = Relu (h)
}
"""


def test_adaround_leaves_underdetermined_layers_at_nearest_rounding():
    """Fewer input rows than weights per output channel: the learned rounding would fit those rows only."""
    rng = np.random.default_rng(0)
    model = build(PROJECTION, {"w": rng.normal(size=(64, 16)).astype(np.float32)})

    def run(n_feeds):
        feeds = [{"x": rng.normal(size=(2, 64)).astype(np.float32)} for _ in range(n_feeds)]
        s = Session.start(model, feeds, QuantConfig(progress=False, cle=False), heldout=feeds)
        p = s.plan()
        nearest = convert(clone(s.model), p, s.ranges("mse", p), s.config.preset)
        learned = convert(clone(s.model), p, s.ranges("mse", p), s.config.preset)
        note = adaround.apply(s.model, learned, p.weights, feeds, s.config.preset.weights, iterations=200)
        ws = [next(n for n in m.graph if n.name == p.weights[0].node).inputs[1].producer().inputs[0].const_value.numpy()
              for m in (nearest, learned)]
        return note, np.array_equal(*ws)

    note, same = run(4)  # 8 rows < 64
    assert note.startswith("AdaRound: 0 layers") and note.endswith("1 left at nearest rounding (fewer input rows "
                                                                   "than weights per channel)") and same
    note, same = run(64)  # 128 rows
    assert note.startswith("AdaRound: 1 layers") and "left at nearest" not in note and not same
