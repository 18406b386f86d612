"""The OpenVINO and reference engines on the real models, against ONNX Runtime."""

from __future__ import annotations

import sys

import numpy as np
import onnx_ir as ir
import pytest

import bushu.zoo as zoo
from bushu.compare import Tolerance, compare, diff
from bushu.engines import open_session
from bushu.engines.reference import ReferenceEngine
from bushu.errors import BushuError, MissingExtraError
from bushu.inputs import synthesize


@pytest.mark.parametrize("name", ["ppocr-rec", "ppocr-cls"])
def test_openvino_matches_ort_at_default_tolerance(name):
    result = compare(zoo.path(name), engines=("ort", "openvino"), samples=2, shapes=zoo.MODELS[name].shapes,
                     show_progress=False)
    assert result, result.render()
    assert result.samples == 2
    (out,) = result.outputs
    assert out.cosine > 0.99999 and out.top1 == 1.0
    assert 0 < out.max_abs < Tolerance().atol  # two engines: close, yet not bit-identical


def test_openvino_session_keys_outputs_by_onnx_name_and_applies_options(ppocr_cls):
    sess = open_session(ppocr_cls, "openvino", threads=1, opt_level="basic", shapes={"x": (2, 3, 48, 192)})
    assert [s.shape for s in sess.inputs] == [(2, 3, 48, 192)]
    assert sess.outputs[0].shape == (2, 2)
    feed = synthesize(sess.inputs)
    out = sess.run(feed)
    assert list(out) == ["save_infer_model/scale_0.tmp_1"]
    assert out["save_infer_model/scale_0.tmp_1"].shape == (2, 2)
    # The session returns copies: a second run does not change the first run's arrays.
    first = out["save_infer_model/scale_0.tmp_1"].copy()
    sess.run(synthesize(sess.inputs, seed=1))
    np.testing.assert_array_equal(out["save_infer_model/scale_0.tmp_1"], first)
    assert sess.compiled.get_property("INFERENCE_NUM_THREADS") == 1


def test_openvino_takes_scalar_feeds_as_ort_returns_them(tmp_path):
    """A 0-d int64 feed keeps its shape and a ``longlong`` one (what ONNX Runtime returns for a scalar output, e.g.
    a symbolic size that reduce feeds to a subgraph) is taken as int64; both failed on OpenVINO before."""
    a, b = ir.val("a", ir.DataType.INT64, ir.Shape([])), ir.val("b", ir.DataType.INT64, ir.Shape([2]))
    y = ir.node("Add", [a, b])
    y.outputs[0].name, y.outputs[0].dtype, y.outputs[0].shape = "y", ir.DataType.INT64, ir.Shape([2])
    g = ir.Graph([a, b], y.outputs, nodes=[y], opset_imports={"": 17})
    path = tmp_path / "scalar.onnx"
    ir.save(ir.Model(g, ir_version=9), path)
    sess = open_session(path, "openvino")
    for scalar in (np.array(3), np.array(3, dtype=np.longlong)):
        np.testing.assert_array_equal(sess.run({"a": scalar, "b": np.array([1, 2])})["y"], [4, 5])


def test_openvino_bad_shape_name_is_one_line(ppocr_cls):
    with pytest.raises(BushuError, match="unknown input") as e:
        open_session(ppocr_cls, "openvino", shapes={"image": (1, 3, 48, 192)})
    assert "\n" not in str(e.value)


def test_openvino_silero_vad_conversion_error_is_one_line(silero_vad):
    with pytest.raises(BushuError) as e:
        open_session(silero_vad, "openvino")
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith("OpenVINO could not convert the model")
    assert "Conv" in msg and "then_branch" in msg and "rank" in msg


def test_openvino_missing_package_names_the_extra(monkeypatch, ppocr_cls):
    monkeypatch.setitem(sys.modules, "openvino", None)  # makes `import openvino` raise ImportError
    with pytest.raises(MissingExtraError, match=r"pip install 'bushu\[openvino\]'"):
        open_session(ppocr_cls, "openvino")


def test_reference_engine_matches_ort_on_digits_cnn(digits_onnx):
    result = compare(digits_onnx, engines=("ort", "reference"), samples=3, show_progress=False)
    assert result, result.render()
    assert result.outputs[0].top1 == 1.0


def test_reference_engine_uses_running_stats_in_batchnorm(ppocr_cls):
    # ONNX's own evaluator normalizes opset-11 BatchNormalization with batch statistics when `momentum` is set;
    # the reference engine must follow the specification (running mean/var) and agree with ONNX Runtime.
    result = compare(ppocr_cls, engines=("ort", "reference"), shapes=zoo.MODELS["ppocr-cls"].shapes,
                     show_progress=False)
    assert result, result.render()


def test_reference_engine_small_graph_follows_numpy():
    model = ir.from_onnx_text("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[2,3] x, float[3,4] w) => (float[2,4] y) {
            h = MatMul(x, w)
            y = Relu(h)
        }
    """)
    sess = ReferenceEngine().load(model, options=None)
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((2, 3), dtype=np.float32), rng.standard_normal((3, 4), dtype=np.float32)
    out = sess.run({"x": x, "w": w})["y"]
    assert diff(out, np.maximum(x @ w, 0), tol=Tolerance(atol=1e-6, rtol=1e-6))
    assert [s.name for s in sess.inputs] == ["x", "w"] and sess.outputs[0].shape == (2, 4)


def test_reference_engine_refuses_large_models(ppocr_rec):
    with pytest.raises(BushuError, match="reference engine is for small models.*use --engine ort"):
        ReferenceEngine(max_weight_bytes=1_000_000).load(str(ppocr_rec), options=None)


def _vad(session, windows) -> list[float]:
    """Speech probability per window, the state carried from window to window (silero-vad's streaming)."""
    state, probs = np.zeros((2, 1, 128), np.float32), []
    for x in windows:
        out = session.run({"input": x, "state": state, "sr": np.asarray(16000, np.int64)})
        state = out["stateN"]
        probs.append(float(out["output"].ravel()[0]))
    return probs


def test_silero_vad_hears_speech_only_with_its_context(silero_vad, speech_16k):
    """The zoo's input shape is what silero-vad's own wrapper feeds: 64 samples of context + 512 new. On real speech
    (2048 samples of silence, then a sentence) the windows of silence read < 0.5 and every window of speech > 0.5;
    fed the 512 new samples alone the model hears nothing (~0 throughout), which this check must catch."""
    assert zoo.MODELS["silero-vad"].shapes["input"] == (1, zoo.SILERO_CONTEXT + zoo.SILERO_CHUNK) == (1, 576)
    sess = open_session(silero_vad, "ort")
    windows = zoo.silero_windows(speech_16k)
    assert windows.shape == (31, 1, 576)
    np.testing.assert_array_equal(windows[5, 0], speech_16k[5 * 512 - 64:6 * 512])
    np.testing.assert_array_equal(windows[0, 0, :64], 0)

    def heard(probs):  # windows 0-3 are silence (speech starts at sample 2048 = window 4)
        return max(probs[:4]) < 0.5 and min(probs[4:]) > 0.5

    probs = _vad(sess, windows)
    assert heard(probs), probs
    no_context = _vad(sess, windows[:, :, 64:])
    assert not heard(no_context) and max(no_context) < 0.1, no_context


def test_openvino_runs_silero_vad_with_sr_bound(silero_vad, speech_16k):
    """With ``sr`` given (EngineOptions.values), OpenVINO gets the model with sr a constant and its If folded into
    the taken branch, so it converts; it matches ONNX Runtime over a second of real speech, state carried from
    window to window (silero's own windows: 512 new samples + 64 of context)."""
    ov = open_session(silero_vad, "openvino", values={"sr": 16000}, shapes=zoo.MODELS["silero-vad"].shapes)
    ort = open_session(silero_vad, "ort")
    sr = np.asarray(16000, np.int64)
    state = {"ov": np.zeros((2, 1, 128), np.float32), "ort": np.zeros((2, 1, 128), np.float32)}
    probs = []
    for x in zoo.silero_windows(speech_16k):
        a = ov.run({"input": x, "state": state["ov"], "sr": sr})
        b = ort.run({"input": x, "state": state["ort"], "sr": sr})
        for name in ("output", "stateN"):
            assert diff(a[name], b[name], name=name), diff(a[name], b[name], name=name)
        state = {"ov": a["stateN"], "ort": b["stateN"]}
        probs.append(float(b["output"].ravel()[0]))
    assert max(probs[:4]) < 0.1 and np.median(probs[8:]) > 0.9  # silence, then speech: the VAD really ran
    with pytest.raises(BushuError, match="sr=16000 fixed"):
        ov.run({"input": x, "state": state["ov"], "sr": np.asarray(8000, np.int64)})


def test_compare_silero_vad_on_openvino_takes_the_zoo_sr_and_shapes(silero_vad):
    # `bushu compare silero-vad --engines ort,openvino`: the engines get the sr and shapes the feeds are made with
    result = compare(silero_vad, engines=("ort", "openvino"), samples=2, show_progress=False)
    assert result, result.render()


def test_openvino_if_of_dynamic_rank_says_to_fix_the_shapes(silero_vad):
    # sr bound, but no shapes: the decoder's inner If keeps a dynamic rank, which OpenVINO's CPU plugin can't compile
    with pytest.raises(BushuError, match=r"--shape NAME:DIMS") as e:
        open_session(silero_vad, "openvino", values={"sr": 16000})
    assert "\n" not in str(e.value)
