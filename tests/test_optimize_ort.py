"""``--target ort``: ONNX Runtime contrib fusions — structural and numerical tests, and the measured keep/revert."""

from __future__ import annotations

import json

import numpy as np
import onnx_ir as ir
import pytest
from test_passes_cleanup import HEAD, ops, same_outputs

import bushu

rng = np.random.default_rng(3)


def _w(shape) -> str:
    return ", ".join(f"{v:.3f}" for v in rng.normal(0, 0.5, size=shape).reshape(-1))


ATTENTION = """
    g (float[N, S, 8] x, float[N, 1, 1, S] m) => (float[N, S, 8] y)
      <float[8, 8] wq = {%s}, float[8, 8] wk = {%s}, float[8, 8] wv = {%s}, float[8] bq = {%s}, float[8] bk = {%s},
       float[8] bv = {%s}, int64[4] hs = {0, 0, 2, 4}, int64[3] os = {0, 0, 8}, float sc = {0.5}> {
      q0 = MatMul (x, wq)
      q1 = Add (q0, bq)
      q2 = Reshape (q1, hs)
      q = Transpose <perm = [0, 2, 1, 3]> (q2)
      k0 = MatMul (x, wk)
      k1 = Add (bk, k0)
      k2 = Reshape (k1, hs)
      kt = Transpose <perm = [0, 2, 3, 1]> (k2)
      v0 = MatMul (x, wv)
      v1 = Add (v0, bv)
      v2 = Reshape (v1, hs)
      v = Transpose <perm = [0, 2, 1, 3]> (v2)
      s = MatMul (q, kt)
      s2 = Mul (s, sc)
      s3 = Add (s2, m)
      p = Softmax <axis = -1> (s3)
      c = MatMul (p, v)
      ct = Transpose <perm = [0, 2, 1, 3]> (c)
      y = Reshape (ct, os)
    }""" % (_w((8, 8)), _w((8, 8)), _w((8, 8)), _w(8), _w(8), _w(8))


def _fuse(*passes: str):
    before = ir.from_onnx_text(HEAD + ATTENTION)
    after, result = bushu.optimize(before, passes=["shape-inference", *passes, "dead-code"], latency=False,
                                   show_progress=False)
    assert result and not result.rolled_back, result.render()
    return before, after, result


def test_attention_packs_the_projections():
    before, after, result = _fuse("ort-attention")
    node = next(n for n in after.graph if n.op_type == "Attention")
    assert node.domain == "com.microsoft" and after.opset_imports["com.microsoft"] == 1
    assert node.attributes["num_heads"].as_int() == 2 and node.attributes["scale"].as_float() == 0.5
    assert node.inputs[1].const_value.numpy().shape == (8, 24)  # [Wq | Wk | Wv]
    # the (N,1,1,S) mask is expanded to ORT's (N,1,S,S) attention_bias; the rest of the block is gone
    assert sorted(ops(after)) == ["Attention", "Concat", "Expand", "Gather", "Shape"]
    assert result.fired["ort-attention"] == 1
    same_outputs(before, after)


def test_multihead_attention_keeps_the_projections():
    before, after, _ = _fuse("ort-mha")
    assert ops(after).count("MultiHeadAttention") == 1 and ops(after).count("MatMul") == 3
    assert "Softmax" not in ops(after)
    same_outputs(before, after)


def test_attention_refuses_a_softmax_over_another_axis():
    before = ir.from_onnx_text(HEAD + ATTENTION.replace("Softmax <axis = -1>", "Softmax <axis = 2>"))
    after, result = bushu.optimize(before, passes=["shape-inference", "ort-attention"], latency=False,
                                   show_progress=False)
    assert "Attention" not in ops(after)
    assert any("not over the last axis" in n for n in result.notes), result.notes


def test_target_ort_measures_each_fusion_on_a_real_encoder(torch_zoo):
    path = torch_zoo("tiny-encoder", legacy=True)
    out, result = bushu.optimize(path, target="ort", latency=False, show_progress=False, samples=2)
    assert result, result.render()
    # the TorchScript export's Reshapes to computed shapes hide every later shape from onnx inference: ort-shapes
    # records the ones ORT's symbolic inference finds (measured like a fusion)
    shapes = next(s for s in result.steps if s.name == "ort-shapes")
    assert shapes.rewrites > 50 and shapes.status in ("kept", "reverted"), shapes
    step = next(s for s in result.steps if s.name == "ort-attention")
    assert step.rewrites == 2 and step.status in ("kept", "reverted"), step
    for name in ("ort-shapes", "ort-attention"):
        note = next(n for n in result.notes if n.startswith(f"--target ort: {name} "))
        assert "ORT latency fused/unfused x" in note and "IQR" in note
    has_attention = any(n.op_type == "Attention" for n in out.graph)
    assert has_attention == (step.status == "kept")
    _, again = bushu.optimize(out, latency=False, show_progress=False, verify="end")
    assert again and not again.fired, again.render()  # idempotent: the generic passes find nothing more


def test_cli_target_ort(cli, tmp_path):
    src, out = tmp_path / "attention.onnx", tmp_path / "attention.ort.onnx"
    bushu.save(ir.from_onnx_text(HEAD + ATTENTION), src)
    r = cli("optimize", src, "-o", out, "--target", "ort", "--json", "-q", "--no-latency")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert any(n.startswith("--target ort: ort-attention") for n in data["notes"]), data["notes"]
    r = cli("optimize", src, "-o", out, "--target", "trt", "--force")
    assert r.returncode == 2 and "generic" in r.stderr


def test_unknown_target_says_which_exist():
    with pytest.raises(bushu.BushuError, match="choose generic or ort"):
        bushu.optimize(ir.from_onnx_text(HEAD + ATTENTION), target="tensorrt", latency=False, show_progress=False)


def test_skip_pins_a_target_fusion_out():
    _, result = bushu.optimize(ir.from_onnx_text(HEAD + ATTENTION), target="ort", skip="ort-attention,ort-mha",
                               latency=False, show_progress=False)
    assert result and not any(s.name in ("ort-attention", "ort-mha") for s in result.steps)
