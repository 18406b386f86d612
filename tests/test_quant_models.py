"""bushu.quantize on the real models: the digits CNN, PP-OCRv4 rec, all-MiniLM-L6-v2 (budget: ~200 s)."""

from __future__ import annotations

import numpy as np
import pytest

import bushu
from bushu import datasets
from bushu.engines import open_session
from bushu.quant import QuantConfig, quantize


@pytest.fixture(scope="module")
def digits():
    return datasets.digits()


def digits_calib(x_train, n=10, batch=32):
    return [{"input": x_train[i:i + batch]} for i in range(0, n * batch, batch)]


def top1(model, x, y, engine="ort"):
    out = open_session(model, engine).run({"input": x})["logits"]
    return float((out.argmax(1) == y).mean())


@pytest.fixture(scope="module")
def digits_int8(digits_onnx, digits):
    x_tr, _, x_te, _ = digits
    return quantize(digits_onnx, digits_calib(x_tr), QuantConfig(progress=False), heldout=[{"input": x_te}])


def test_digits_int8_keeps_top1_within_half_a_point(digits_onnx, digits, digits_int8):
    _, _, x_te, y_te = digits
    fp32, int8 = top1(bushu.load(digits_onnx), x_te, y_te), top1(digits_int8.model, x_te, y_te)
    assert fp32 > 0.95
    assert fp32 - int8 <= 0.005
    # the 1-channel stem Conv stays float on ORT (its QLinearConv's im2col is slower than the float Conv there)
    assert digits_int8 and digits_int8.quantized_layers == 3
    ops = {n.op_type for n in digits_int8.model.graph}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    for relu in (n for n in digits_int8.model.graph if n.op_type == "Relu"):  # ReLUs folded for ORT, but the float stem's
        conv = relu.inputs[0].producer()
        assert conv.op_type == "Conv" and conv.inputs[1].producer() is None, conv


def test_speed_is_reported_with_a_reason_when_slower(digits_int8):
    sp = digits_int8.speed
    assert sp is not None and sp.fp32.median_ms > 0 and sp.quantized.median_ms > 0
    assert sp.speedup == pytest.approx(sp.fp32.median_ms / sp.quantized.median_ms)
    assert sp.integer_ops >= 4  # QLinearConv/QGemm: ORT fused the groups
    if sp.speedup < 1.0:
        assert sp.reasons and "slower because" in str(sp)
    assert "latency" in digits_int8.render()


def test_quantized_file_declares_only_the_domains_it_uses(digits_int8):
    """ONNX Runtime's basic optimizations serialize every domain it knows; the quantized file keeps only its own."""
    used = {n.domain for n in digits_int8.model.graph} | {""}
    assert set(digits_int8.model.opset_imports) <= used


def test_config_may_be_a_mapping_of_its_fields(digits_onnx, digits):
    x_tr, _, x_te, _ = digits
    r = quantize(digits_onnx, digits_calib(x_tr, n=2), {"method": "minmax", "progress": False, "measure_speed": False},
                 heldout=[{"input": x_te[:64]}])
    assert r and r.method == "minmax"
    from bushu.errors import BushuError

    with pytest.raises(BushuError, match="unknown quantization setting.*methd"):
        quantize(digits_onnx, digits_calib(x_tr, n=2), {"methd": "minmax"})


def test_budget_top1_drop_is_met(digits_onnx, digits):
    x_tr, y_tr, x_te, y_te = digits
    r = quantize(digits_onnx, digits_calib(x_tr), QuantConfig(progress=False, budget="top1-drop<=0.5",
                                                            measure_speed=False), heldout=[{"input": x_te}])
    assert r and r.budget_met and r.budget_steps
    assert r.accuracy.top1 >= 0.995
    assert top1(bushu.load(digits_onnx), x_te, y_te) - top1(r.model, x_te, y_te) <= 0.005


def test_unreachable_budget_keeps_layers_in_float_and_says_so(digits_onnx, digits):
    x_tr, _, x_te, _ = digits
    r = quantize(digits_onnx, digits_calib(x_tr, n=3), QuantConfig(progress=False, budget="snr>=60",
                                                                   measure_speed=False), heldout=[{"input": x_te[:64]}])
    steps = r.budget_steps
    assert len(steps) >= 2 and not all(s.met for s in steps)
    # the search only stops at the first passing count of float layers, or when all are float
    assert r.accuracy.snr_db >= 60 or not r
    assert sorted(len(s.float_layers) for s in steps)[0] == 0


def test_diagnosis_ranks_layers_and_tracks_tensors(digits_onnx, digits):
    x_tr, _, x_te, _ = digits
    r = quantize(digits_onnx, digits_calib(x_tr, n=4), QuantConfig(progress=False, diagnose=True, measure_speed=False),
                 heldout=[{"input": x_te[:128]}])
    d = r.diagnosis
    assert [s.gain_db for s in d.layers] == sorted((s.gain_db for s in d.layers), reverse=True)
    quantized = {n.name for n in r.model.graph if n.op_type in ("Conv", "Gemm") and n.inputs[1].producer() is not None
                 and n.inputs[1].producer().op_type == "DequantizeLinear"}
    assert len(quantized) == r.quantized_layers and {s.node for s in d.layers} == quantized
    assert all(s.alone_snr_db > d.full_snr_db - 1.0 for s in d.layers)  # one layer alone errs less than all
    assert d.tensors and all(t.cosine > 0.99 for t in d.tensors)
    assert "gain dB" in d.render() and r.to_json()


def test_openvino_runs_its_preset(digits_onnx, digits):
    pytest.importorskip("openvino")
    x_tr, _, x_te, y_te = digits
    r = quantize(digits_onnx, digits_calib(x_tr, n=4), QuantConfig(engine="openvino", progress=False,
                                                                   measure_speed=False), heldout=[{"input": x_te}])
    zps = [n.inputs[2].const_value.numpy() for n in r.model.graph if n.op_type == "QuantizeLinear"]
    assert zps and all(z.dtype == np.int8 for z in zps)
    # the ORT placement was tried too (placement unpinned) and rejected: OpenVINO computes its digits file wrong
    [bad] = r.rejected
    assert r.placement == "openvino" and bad.placement == "ort" and not bad
    assert any(n.startswith("the ort placement is rejected") for n in r.notes)
    assert top1(bushu.load(digits_onnx), x_te, y_te, "openvino") - top1(r.model, x_te, y_te, "openvino") <= 0.01


def test_ppocr_rec_int8_reads_rendered_lines(ppocr_rec):
    from bushu.zoo import ppocr_keys

    calib = [{"x": line.x} for line in datasets.text_lines(24, seed=100)]
    test = datasets.text_lines(40, seed=7)
    r = quantize(ppocr_rec, calib, QuantConfig(progress=False, measure_speed=False, heldout=4))
    assert any("opset 12 to 13" in n for n in r.notes)
    keys = ppocr_keys()

    def words(model):
        s = open_session(model, "ort")
        return np.mean([datasets.ppocr_decode(next(iter(s.run({"x": t.x}).values())), keys)[0] == t.text
                        for t in test])

    fp32, int8 = words(bushu.load(ppocr_rec)), words(r.model)
    assert fp32 >= 0.85
    assert int8 >= fp32 - 0.05  # at most 2 of 40 lines lost


@pytest.fixture(scope="module")
def minilm_data():
    from bushu.zoo_torch import minilm_feeds

    sents = [s for _, s in datasets.sentences()]
    return minilm_feeds(sents[0:48:2]), minilm_feeds(sents[1:200:5])


def embeddings(model, feeds):
    s = open_session(model, "ort")
    return np.concatenate([s.run(f)["sentence_embedding"] for f in feeds])


@pytest.fixture(scope="module")
def minilm_ref(minilm_onnx, minilm_data):
    return embeddings(bushu.load(minilm_onnx), minilm_data[1])


def test_minilm_static_int8_does_not_collapse_by_default(minilm_onnx, minilm_data, minilm_ref):
    calib, test = minilm_data
    r = quantize(minilm_onnx, calib, QuantConfig(progress=False, measure_speed=False))
    cos = (embeddings(r.model, test) * minilm_ref).sum(1)
    assert cos.mean() >= 0.95, cos.mean()
    assert any(n.startswith("SmoothQuant") for n in r.notes)
    softmax_inputs = [n.inputs[0].producer().op_type for n in r.model.graph if n.op_type == "Softmax"]
    assert softmax_inputs and set(softmax_inputs) == {"Add"}  # mask Add and Softmax left in float


@pytest.mark.parametrize("mode, ops, min_cos", [
    ("dynamic", {"DynamicQuantizeLinear", "MatMulInteger"}, 0.98),
    ("weight-only", {"DequantizeLinear"}, 0.98),
    ("int4", {"DequantizeLinear"}, 0.9),
    ("fp16", {"Cast"}, 0.999),
])
def test_other_modes_run_and_verify(minilm_onnx, minilm_data, minilm_ref, mode, ops, min_cos):
    calib, test = minilm_data
    r = quantize(minilm_onnx, calib, QuantConfig(mode=mode, progress=False, measure_speed=False))
    present = {n.op_type for n in r.model.graph}
    assert ops <= present and "QuantizeLinear" not in present
    assert r.accuracy is not None and r.accuracy.samples >= 1
    cos = (embeddings(r.model, test) * minilm_ref).sum(1)
    assert cos.mean() >= min_cos, (mode, cos.mean())
    sig = open_session(r.model, "ort")
    assert [i.dtype for i in sig.outputs] == ["float32", "float32"]  # fp16 keeps the float32 interface
    if mode == "int4":
        blocked = [n for n in r.model.graph if n.op_type == "DequantizeLinear"]
        assert all(n.attributes["block_size"].value == 32 for n in blocked)


def test_bias_correction_is_on_by_default_and_reduces_the_output_error(digits_onnx, digits):
    x_tr, _, x_te, _ = digits
    common = dict(progress=False, measure_speed=False)
    plain = quantize(digits_onnx, digits_calib(x_tr, n=4), QuantConfig(bias_correction=False, **common),
                     heldout=[{"input": x_te}])
    corrected = quantize(digits_onnx, digits_calib(x_tr, n=4), QuantConfig(**common),
                         heldout=[{"input": x_te}])
    assert any(n.startswith("bias correction:") for n in corrected.notes)
    assert corrected.accuracy.snr_db > plain.accuracy.snr_db


def test_auto_ranges_score_every_method_and_a_per_tensor_mix(digits_onnx, digits):
    x_tr, _, x_te, _ = digits
    r = quantize(digits_onnx, digits_calib(x_tr, n=4), QuantConfig(method="auto", progress=False, measure_speed=False,
                                                                   bias_correction=False),
                 heldout=[{"input": x_te[:128]}])
    note = next(n for n in r.notes if n.startswith("auto ranges"))
    for m in ("minmax", "percentile", "entropy", "mse", "per-tensor"):
        assert m in note
    scores = [float(part.split()[1]) for part in note.split(": ", 1)[1].split(" (")[0].split(", ")]
    assert scores == sorted(scores, reverse=True) and r.method == note.rsplit("→ ", 1)[1]
    assert r.accuracy.snr_db == pytest.approx(scores[0], abs=0.05)


def test_openvino_why_text_names_exactly_the_fp32_layers_of_its_execution_graph(digits_onnx, digits):
    """The 'why slower' reasons on OpenVINO come from its execution graph: a Conv excluded from quantization is
    reported as exactly one FP32 Convolution, the other three weighted layers as int8."""
    pytest.importorskip("openvino")
    from bushu.quant import speed

    x_tr, _, x_te, _ = digits
    base = bushu.load(digits_onnx)
    conv = [n.name for n in base.graph if n.op_type == "Conv"][1]
    cfg = QuantConfig(engine="openvino", placement="openvino", progress=False, measure_speed=False)
    for exclude, fp32 in (((), {}), ((conv,), {"Convolution (f32)": 1})):
        r = quantize(digits_onnx, digits_calib(x_tr, n=4), cfg.replace(exclude=exclude), heldout=[{"input": x_te}])
        integer, isl, reorders, fq = speed.ov_exec_graph(r.model)
        assert (integer, isl) == (4 - len(exclude), fp32)
        why = speed.reasons_for("openvino", integer, isl, reorders, fq)
        assert any(w == "1 weighted layers run in FP32 on OpenVINO (Convolution (f32) ×1)" for w in why) == bool(fp32)
        assert not any("DQ → float op → Q" in w for w in why)


def test_openvino_file_is_verified_on_openvino_and_a_wrong_placement_falls_back(digits_onnx, digits):
    """OpenVINO 2026.4 computes the digits CNN wrong from the ORT placement's file (uint8 activations with zero
    points: top-1 ~67% on OpenVINO, ~99% on ONNX Runtime). quantize checks the file on the target engine, rejects
    that placement and falls back to one OpenVINO computes right; with a one-shot calibration stream it can't
    retry and the result is falsy, naming the engine, both SNRs and the first divergent layer."""
    pytest.importorskip("openvino")
    x_tr, _, x_te, y_te = digits
    held = [{"input": x_te[:128]}, {"input": x_te[128:256]}]
    cfg = QuantConfig(engine="openvino", placement="ort", progress=False, measure_speed=False)
    r = quantize(digits_onnx, digits_calib(x_tr, n=4), cfg, heldout=held)
    assert r and r.placement == "openvino" and r.engine == "openvino"
    assert r.engine_check and r.engine_check.placement == "openvino"
    [bad] = r.rejected
    assert not bad and bad.placement == "ort" and bad.engine == "openvino" and bad.version
    assert bad.target.snr_db < bad.reference.snr_db - 6 and bad.reference.top1 > 0.99 and bad.target.top1 < 0.9
    assert bad.divergence and "WRONG" in str(bad) and "fell back to the openvino placement" in r.notes[0]
    assert "rejected" in r.render() and r.to_json()
    # the delivered file is right on OpenVINO on digits it never saw
    assert top1(r.model, x_te[256:], y_te[256:], "openvino") >= top1(digits_onnx, x_te[256:], y_te[256:]) - 0.01

    one_shot = quantize(digits_onnx, iter(digits_calib(x_tr, n=4)), cfg, heldout=held)
    assert not one_shot and not one_shot.engine_check and one_shot.placement == "ort"
    assert one_shot.engine_check.divergence == bad.divergence and "one-shot" in one_shot.notes[-1]
    assert "computes it WRONG" in str(one_shot) and "WRONG" in one_shot.render()
    # the file it hands over is indeed wrong on OpenVINO and right on ONNX Runtime
    assert top1(one_shot.model, x_te, y_te, "openvino") < 0.9 < top1(one_shot.model, x_te, y_te, "ort")


def test_openvino_placement_is_chosen_by_measured_speed(ppocr_cls):
    """With the engine's own placement unpinned, quantize for OpenVINO builds each preset's placement, checks each
    file on OpenVINO and keeps the fastest there, timed in the same alternating rounds; the note names every
    candidate's latency. A placement the user gives is kept as given."""
    pytest.importorskip("openvino")
    import re

    lines = datasets.text_lines(8, seed=3)
    calib = [{"x": np.ascontiguousarray(np.pad(t.x, ((0, 0), (0, 0), (0, 0), (0, max(0, 192 - t.x.shape[3]))))
                                        [..., :192])} for t in lines]
    cfg = QuantConfig(engine="openvino", heldout=2, cle=False, bias_correction=False, smoothquant=None,
                      progress=False, measure_speed=False)
    r = quantize(ppocr_cls, calib, cfg)
    [note] = [n for n in r.notes if n.startswith("placement chosen by speed on openvino")]
    ms = {k: float(v) for k, v in re.findall(r"(\w+) (\d+\.\d+) ms \(", note)}
    assert set(ms) == {"openvino", "ort"}, note
    assert r and r.engine_check and r.placement == min(ms, key=ms.get) and note.endswith(f"kept {r.placement}")
    assert r.engine_check.placement == r.placement and not r.rejected and r.speed is None

    pinned = quantize(ppocr_cls, calib, cfg.replace(placement="ort"))
    assert pinned and pinned.placement == "ort" and not any("chosen by speed" in n for n in pinned.notes)
