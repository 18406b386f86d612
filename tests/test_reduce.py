"""bushu reduce on a real model and real engines: ORT vs OpenVINO at a tolerance tight enough that FP32 rounding
differences count, so the first divergent node is real and the reduced model must reproduce it alone."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

import bushu
from bushu import engines
from bushu.compare.metrics import Tolerance, diff

TIGHT = Tolerance(atol=1e-7, rtol=1e-7, min_cosine=1.0)


@pytest.mark.skipif("openvino" not in engines.available(), reason="openvino not installed")
def test_reduce_ppocr_cls_ort_vs_openvino(ppocr_cls, tmp_path):
    out = tmp_path / "reduced.onnx"
    _, result = bushu.reduce(ppocr_cls, out, engines=("ort", "openvino"), tol=TIGHT)
    assert result, result.render()
    assert result.nodes_after < 10 < result.nodes_before
    assert result.first_divergence
    m = bushu.load(out)
    with np.load(result.inputs) as z:
        feed = {k: z[k] for k in z.files}
    a = engines.open_session(m, "ort").run(feed)
    b = engines.open_session(m, "openvino").run(feed)
    assert any(not diff(b[k], a[k], tol=TIGHT) for k in a)  # the written files reproduce the mismatch
    assert all(diff(b[k], a[k]) for k in a)  # at the default tolerance the engines agree: it is rounding
    with pytest.raises(bushu.BushuError, match="exists"):
        bushu.reduce(ppocr_cls, out, tol=TIGHT)


def _scaled_conv_copy(src, path, index: int = 20):
    """PP-OCR cls with the weight of its ``index``-th Conv scaled by 1.01 (it keeps weights in Constant nodes)."""
    b = bushu.load(src)
    conv = [n for n in b.graph if n.op_type == "Conv"][index]
    const = conv.inputs[1].producer()
    w = const.attributes["value"].as_tensor()
    const.attributes["value"] = ir.AttrTensor("value", ir.tensor(w.numpy() * 1.01, name=w.name))
    bushu.save(b, path)
    return conv.name, conv.inputs[1].name


def test_reduce_two_models_on_one_engine(ppocr_cls, tmp_path):
    node, weight = _scaled_conv_copy(ppocr_cls, tmp_path / "b.onnx")
    out = tmp_path / "reduced.onnx"
    part, result = bushu.reduce(ppocr_cls, out, candidate=tmp_path / "b.onnx")
    assert result, result.render()
    assert f"'{node}' (Conv)" in result.first_divergence and weight in result.first_divergence
    assert [n.op_type for n in part.graph if n.op_type != "Constant"] == ["Conv"]
    a, b = bushu.load(out), bushu.load(result.candidate_output)
    with np.load(result.inputs) as z:
        feed = {k: z[k] for k in z.files}
    ra, rb = engines.open_session(a, "ort").run(feed), engines.open_session(b, "ort").run(feed)
    assert any(not diff(rb[k], ra[k]) for k in ra)  # the two written parts reproduce the mismatch


def test_reduce_refuses_models_whose_tensor_names_differ(ppocr_cls, tmp_path, cli):
    b = bushu.load(ppocr_cls)
    outputs = {v.name for v in b.graph.outputs}
    for i, node in enumerate(b.graph):
        for v in node.outputs:
            if v.name not in outputs:
                v.name = f"renamed_{i}"
    bushu.save(b, tmp_path / "b.onnx")
    r = cli("reduce", ppocr_cls, tmp_path / "b.onnx", "-o", tmp_path / "r.onnx")
    assert r.returncode == 2 and "share no intermediate tensor name" in r.stderr, r.stderr


@pytest.mark.skipif("openvino" not in engines.available(), reason="openvino not installed")
def test_reduce_finds_a_fault_that_exposing_the_tensors_hides(tmp_path):
    """OpenVINO 2026.4 computes a Conv after a signed int8 Q/DQ on a Concat wrong (it moves the FakeQuantize above
    the Concat), but only when the Concat output is not a graph output: with every tensor exposed the engines agree.
    reduce must not say "agree" when the models' own outputs don't: it bisects over prefixes of the graph."""
    import dataclasses

    from test_quant_annotate import CONCAT, build, observed_ranges

    from bushu.quant.annotate import plan
    from bushu.quant.convert import clone, convert
    from bushu.quant.spec import PRESETS

    rng = np.random.default_rng(4)

    def w(*s):
        return (rng.normal(size=s) / np.sqrt(np.prod(s[1:]))).astype(np.float32)

    model = build(CONCAT, {"wa": w(12, 4, 1, 1), "ba": w(12), "wb": w(12, 4, 3, 3), "bb": w(12), "wc": w(8, 24, 3, 3),
                           "bc": w(8)})
    preset = dataclasses.replace(PRESETS["openvino"], concat_activations=None)  # the signed grid OpenVINO gets wrong
    x = rng.normal(size=(1, 4, 16, 16)).astype(np.float32)
    p = plan(model, preset)
    bushu.save(convert(clone(model), p, observed_ranges(model, p, {"x": x}), preset), tmp_path / "int8.onnx")
    compared = bushu.compare(tmp_path / "int8.onnx", engines=("ort", "openvino"), layerwise=True)
    assert not compared and compared.layerwise.first_divergence is None
    assert "bushu reduce" in compared.render()  # says why layerwise names no node, and what to run
    part, result = bushu.reduce(tmp_path / "int8.onnx", tmp_path / "reduced.onnx", engines=("ort", "openvino"))
    assert result and result.by_prefix, result.render()
    assert "(Conv)" in result.first_divergence and "Concat" in {n.op_type for n in part.graph}
    assert result.nodes_after < result.nodes_before
    with np.load(result.inputs) as z:
        feed = {k: z[k] for k in z.files}
    a = engines.open_session(part, "ort").run(feed)
    b = engines.open_session(part, "openvino").run(feed)
    assert any(not diff(b[k], a[k]) for k in a)  # the written part reproduces the mismatch at the default tolerance
