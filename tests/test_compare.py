"""bushu compare: metrics (unit + property tests), the three modes, signatures, and the first divergent node on real
models perturbed on purpose at a known node."""

from __future__ import annotations

import json
import math

import numpy as np
import onnx_ir as ir
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import bushu.ir as bir
import bushu.zoo as zoo
from bushu.compare import Tolerance, compare, diff
from bushu.compare.layerwise import divergences, expose, first_divergence
from bushu.compare.metrics import is_scores, merge
from bushu.errors import BushuError

# ----------------------------------------------------------------------------------------------- metrics

finite = st.floats(-1e6, 1e6, allow_nan=False, width=32)
arrays = hnp.arrays(np.float32, hnp.array_shapes(min_dims=1, max_dims=3, max_side=6), elements=finite)


@settings(max_examples=60, deadline=None)
@given(arrays)
def test_identical_arrays_pass_with_cosine_one_and_infinite_snr(x):
    d = diff(x, x.copy(), name="x")
    assert d and d.max_abs == 0 and d.mean_abs == 0 and d.max_rel == 0
    assert d.cosine == 1.0
    assert d.snr_db == math.inf
    back = json.loads(d.to_json())  # strict JSON (allow_nan=False) even with an infinite SNR
    assert back["snr_db"] == "inf" and back["passed"] is True


@settings(max_examples=60, deadline=None)
@given(arrays, st.floats(0.01, 100))
def test_cosine_ignores_positive_scale(x, c):
    if not np.any(x):
        return
    assert diff(x * np.float32(c), x).cosine == pytest.approx(1.0, abs=1e-6)
    assert diff(-x, x).cosine == pytest.approx(-1.0, abs=1e-6)


@settings(max_examples=80, deadline=None)
@given(arrays, st.data())
def test_pass_rule_is_allclose_plus_cosine(b, data):
    a = b + data.draw(hnp.arrays(np.float32, b.shape, elements=st.floats(-2.0**-7, 2.0**-7, width=32)))
    tol = Tolerance(atol=1e-3, rtol=1e-3, min_cosine=0.999)
    d = diff(a, b, tol=tol)
    close = np.allclose(a.astype(np.float64), b.astype(np.float64), rtol=tol.rtol, atol=tol.atol)
    assert d.passed == (close and d.cosine >= tol.min_cosine)
    assert d.max_abs == pytest.approx(float(np.max(np.abs(a.astype(np.float64) - b))), rel=1e-12, abs=0)
    assert d.max_abs >= d.mean_abs >= 0


def test_max_rel_ignores_reference_values_below_atol():
    b = np.array([0.0, 1e-6, 2.0], np.float32)
    a = np.array([1e-5, 2e-6, 2.002], np.float32)
    d = diff(a, b)
    assert d.max_rel == pytest.approx(1e-3, rel=1e-3)
    assert d.passed


def test_nonfinite_values():
    x = np.array([1.0, np.nan, np.inf, -2.0], np.float32)
    assert diff(x, x.copy())  # the same NaN/inf in the same places agree
    y = x.copy()
    y[1] = 0.0
    d = diff(y, x)
    assert not d and d.max_abs == math.inf and d.snr_db == -math.inf and "non-finite" in d.note
    assert json.loads(d.to_json())["max_abs"] == "inf"


def test_shape_mismatch_fails_with_a_note():
    d = diff(np.zeros((1, 3)), np.zeros((1, 4)))
    assert not d and "shape (1, 3) vs reference (1, 4)" in d.note


def test_score_outputs_and_topk():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((4, 20)).astype(np.float32)
    cand = ref.copy()
    cand[0, np.argmax(ref[0])] = -10  # row 0: the winner drops to last place, out of the top five too
    d = diff(cand, ref)
    assert d.top1 == 0.75 and d.top5 == 0.75
    second = np.argsort(ref[1])[-2]
    cand2 = ref.copy()
    cand2[1, second] = ref[1].max() + 1  # row 1: the runner-up overtakes; the old winner is still second
    d2 = diff(cand2, ref)
    assert d2.top1 == 0.75 and d2.top5 == 1.0
    assert is_scores(np.zeros((1, 40, 6625), np.float32)) and is_scores(np.zeros((1, 2), np.float32))
    assert not is_scores(np.zeros((1, 1, 320, 320), np.float32))  # a probability map is not class scores
    assert not is_scores(np.zeros((1, 10), np.int64)) and not is_scores(np.zeros((10,), np.float32))
    assert diff(np.zeros((1, 3), np.float32), np.zeros((1, 3), np.float32)).top5 is None  # ≤ 5 classes


def test_merge_takes_the_worst_sample():
    x = np.linspace(-1, 1, 50, dtype=np.float32)
    good, bad = diff(x, x, name="y"), diff(x * 1.1, x, name="y")
    m = merge([good, bad])
    assert not m and m.max_abs == bad.max_abs and m.snr_db == bad.snr_db
    assert m.mean_abs == pytest.approx(bad.mean_abs / 2)


def test_tolerance_is_validated():
    with pytest.raises(BushuError, match="atol and rtol must be"):
        Tolerance(atol=-1)


# ------------------------------------------------------------------------------------- first divergence

CHAIN = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[4] x) => (float[4] y, float[4] z) {
        a = Relu(x)
        b = Neg(a)
        c = Abs(b)
        y = Add(c, a)
        z = Sigmoid(a)
    }
"""


def test_divergences_follow_the_definition():
    graph = ir.from_onnx_text(CHAIN).graph
    ops = {v.name: n.op_type for n in graph for v in n.outputs}
    d = first_divergence(graph, {"a": True, "b": False, "c": False, "y": False, "z": True})
    assert ops[d.outputs[0]] == "Neg" and d.outputs == ("b",) and d.inputs == ("a",)
    # b not compared (e.g. fused away on one side): look through it to the nearest compared tensor, a.
    d = first_divergence(graph, {"a": True, "c": False, "y": False, "z": True})
    assert d.op_type == "Abs" and d.inputs == ("a",)
    # Two independent starts: both are listed, the earliest first.
    found = divergences(graph, {"a": True, "b": False, "c": False, "y": False, "z": False})
    assert [f.op_type for f in found] == ["Neg", "Sigmoid"]
    assert first_divergence(graph, {"a": True, "b": True, "c": True, "y": True, "z": True}) is None


def test_expose_skips_weights_and_keeps_the_original(ppocr_cls):
    model = bir.load(ppocr_cls)
    n_out = len(model.graph.outputs)
    exposed = expose(model)
    assert len(model.graph.outputs) == n_out  # a copy was changed, not the model
    const = {v.name for n in model.graph if n.op_type == "Constant" for v in n.outputs}
    assert exposed.tensors and not const & set(exposed.tensors)
    assert exposed.tensors[-1] == model.graph.outputs[0].name


def test_expose_reports_subgraph_tensors(silero_vad):
    exposed = expose(bir.load(silero_vad))
    assert any("If" in s and "subgraphs not compared" in s for s in exposed.skipped)


def _perturbed(path, conv_index: int) -> tuple[ir.Model, str, str]:
    """A copy of the model with one Conv's weights scaled by 1.01 (weights either initializers or Constants)."""
    model = bir.load(path)
    node = [n for n in model.graph if n.op_type == "Conv"][conv_index]
    w = node.inputs[1]
    if w.const_value is not None:
        w.const_value = ir.tensor(w.const_value.numpy() * np.float32(1.01), name=w.name)
    else:
        const = w.producer()
        assert const.op_type == "Constant"
        t = const.attributes["value"].as_tensor()
        const.attributes["value"] = ir.AttrTensor("value", ir.tensor(t.numpy() * np.float32(1.01), name=t.name))
    return model, node.name, w.name


@pytest.mark.parametrize("name,conv", [("ppocr-rec", 9), ("ppocr-cls", 4)])
def test_layerwise_names_the_perturbed_conv(name, conv):
    path = zoo.path(name)
    model, target, weight = _perturbed(path, conv)
    result = compare(path, model, layerwise=True, shapes=zoo.MODELS[name].shapes, show_progress=False)
    assert not result
    lw = result.layerwise
    assert lw.first_divergence.node == target and lw.first_divergence.op_type == "Conv"
    assert lw.first_divergence.changed_weights == (weight,)
    assert len(lw.divergences) == 1  # everything after it is downstream of it
    ordered = [t.node for t in lw.tensors]
    assert all(t for t in lw.tensors[: ordered.index(target)])  # every tensor before it agrees exactly
    assert not lw


def test_layerwise_names_the_perturbed_conv_on_digits(digits_onnx):
    model, target, weight = _perturbed(digits_onnx, 1)
    result = compare(digits_onnx, model, layerwise=True, samples=2, show_progress=False)
    assert not result and result.layerwise.first_divergence.node == target
    assert result.layerwise.first_divergence.changed_weights == (weight,)


def test_layerwise_two_engines_agree_on_every_tensor(ppocr_cls):
    result = compare(ppocr_cls, engines=("ort", "openvino"), layerwise=True,
                     shapes=zoo.MODELS["ppocr-cls"].shapes, show_progress=False)
    assert result and result.layerwise, result.render()
    assert result.layerwise.first_divergence is None and len(result.layerwise.tensors) > 100
    assert result.layerwise.divergences == ()


# ------------------------------------------------------------------------------------- modes via the CLI


@pytest.fixture(scope="module")
def cls_files(tmp_path_factory, ppocr_cls):
    d = tmp_path_factory.mktemp("cls")
    model, _, _ = _perturbed(ppocr_cls, 2)
    bir.save(model, d / "perturbed.onnx")
    bir.save(bir.load(ppocr_cls), d / "copy.onnx")
    return d


def test_two_models_copy_passes_perturbed_fails(cli, ppocr_cls, cls_files):
    ok = cli("compare", ppocr_cls, cls_files / "copy.onnx", "--samples", "2", "-q")
    assert ok.returncode == 0, ok.stderr
    assert "PASS" in ok.stdout
    feeds = cls_files / "feeds"
    feeds.mkdir()
    rng = np.random.default_rng(1)
    for i in range(2):  # a folder of .npz files: one feed each
        np.savez(feeds / f"{i}.npz", x=rng.random((1, 3, 48, 192), dtype=np.float32))
    bad = cli("compare", ppocr_cls, cls_files / "perturbed.onnx", "--input", feeds, "--json", "--layerwise", "-q")
    assert bad.returncode == 1, bad.stderr
    res = json.loads(bad.stdout)
    assert res["kind"] == "compare" and res["samples"] == 2 and res["outputs"][0]["passed"] is False
    assert res["layerwise"]["first_divergence"]["op_type"] == "Conv"
    text = cli("compare", ppocr_cls, cls_files / "perturbed.onnx", "--layerwise", "-q")
    assert text.returncode == 1 and "first divergent node" in text.stdout and "its weights differ" in text.stdout


def test_golden_outputs_mode(cli, ppocr_cls, tmp_path):
    golden = tmp_path / "golden.npz"
    r = cli("run", ppocr_cls, "--save-outputs", golden, "-q")
    assert r.returncode == 0, r.stderr
    ok = cli("compare", ppocr_cls, "--reference", golden, "--engine", "openvino", "--json", "-q")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["outputs"][0]["cosine"] > 0.99999
    with np.load(golden) as z:
        arrays = {k: z[k] for k in z.files}
    name = next(iter(arrays))
    np.savez(tmp_path / "off.npz", **{name: arrays[name][:, ::-1].copy()})
    assert cli("compare", ppocr_cls, "--reference", tmp_path / "off.npz", "-q").returncode == 1
    np.savez(tmp_path / "wrong.npz", logits=arrays[name])
    bad = cli("compare", ppocr_cls, "--reference", tmp_path / "wrong.npz", "-q")
    assert bad.returncode == 2 and "'logits' only in the reference" in bad.stderr


def test_signature_mismatches_are_all_reported_before_running(tmp_path):
    a = ir.from_onnx_text("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[1,3] x, float[1,3] m) => (float[1,3] y, float[1,3] z) { y = Add(x, m)  z = Relu(x) }
    """)
    b = ir.from_onnx_text("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (double[1,3] x) => (float[3] y, float[1,3] w) { t = Cast<to=1>(x)  y = Squeeze(t)  w = Relu(t) }
    """)
    with pytest.raises(BushuError) as e:
        compare(a, b, show_progress=False)
    msg = str(e.value)
    assert "\n" not in msg and "5 problem(s)" in msg
    for part in ("input 'm' only in the reference", "output 'z' only in the reference",
                 "output 'w' only in the candidate", "input 'x' is float32 in the reference but float64",
                 "output 'y' has rank 2 in the reference but 1"):
        assert part in msg


def test_bad_invocations_exit_2(cli, ppocr_cls, tmp_path):
    nothing = cli("compare", ppocr_cls, "-q")
    assert nothing.returncode == 2 and "nothing to compare with" in nothing.stderr
    assert cli("compare", ppocr_cls, "--engines", "ort,openvino", "--samples", "0", "-q").returncode == 2
    missing = cli("compare", ppocr_cls, "--reference", tmp_path / "none.npz", "-q")
    assert missing.returncode == 2 and "--reference" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1


def test_a_zoo_models_file_gets_its_recorded_inputs(silero_vad):
    # synthesized feeds for silero VAD use the zoo's sr=16000 and state shape, not a random sr that ORT rejects
    res = compare(silero_vad, silero_vad, samples=2, show_progress=False)
    assert res and {o.name for o in res.outputs} == {"output", "stateN"}
