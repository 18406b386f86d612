"""The non-static modes (dynamic, weight-only, int4, fp16) per target engine: the file each engine gets, the kernels
it runs, the check on the target engine, FP16's converter, and ``--placement`` through the CLI."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnx_ir as ir
import pytest

import bushu
from bushu import datasets
from bushu.engines import open_session
from bushu.quant import QuantConfig, quantize
from bushu.quant.budget import accuracy
from bushu.quant.fp16 import fp16
from bushu.quant.static import run_all


@pytest.fixture(scope="module")
def lines():
    return [{"x": line.x} for line in datasets.text_lines(3, seed=7)]


def test_int4_per_engine_runs_as_an_integer_kernel_there(ppocr_rec, lines):
    """ONNX Runtime fuses the blocked int4 DequantizeLinear → MatMul into MatMulNBits (partial last blocks are
    fine); OpenVINO 2026.4 compiles it into an int4 FullyConnected but can't read a partial block, so its file
    takes the largest whole block (PP-OCRv4 rec's 120/240 rows: 30/16)."""
    on_ort = quantize(ppocr_rec, lines, QuantConfig(mode="int4", progress=False, measure_speed=False))
    on_ov = quantize(ppocr_rec, lines, QuantConfig(mode="int4", engine="openvino", progress=False,
                                                   measure_speed=False))
    assert on_ort.kernels.get("MatMulNBits") == 9
    assert on_ort.engine_check is None and on_ort.placement == "ort"
    blocks = {n.attributes["block_size"].value for n in on_ort.model.graph if n.op_type == "DequantizeLinear"}
    assert blocks == {32}
    assert on_ov.kernels.get("FullyConnected i4") == 9 and on_ov.engine_check and on_ov.placement == "openvino"
    blocks = {n.attributes["block_size"].value for n in on_ov.model.graph if n.op_type == "DequantizeLinear"}
    assert blocks <= {30, 16} and blocks
    assert on_ov.weight_bytes[1] < on_ov.weight_bytes[0]
    assert on_ov.accuracy.snr_db > on_ort.accuracy.snr_db - 1  # smaller blocks: at least as accurate


def test_a_file_the_target_engine_cannot_run_is_said_so_and_the_other_placement_is_tried(ppocr_rec, lines):
    """The ort placement's int4 file (partial blocks) on OpenVINO: the check reports in one line that OpenVINO
    can't load it, naming the engine, its version and the op, and the OpenVINO file is kept instead."""
    r = quantize(ppocr_rec, lines, QuantConfig(mode="int4", engine="openvino", placement="ort", progress=False,
                                               measure_speed=False))
    assert r and r.placement == "openvino" and r.engine_check and r.kernels.get("FullyConnected i4") == 9
    (bad,) = r.rejected
    assert not bad and bad.placement == "ort" and bad.engine == "openvino" and bad.version.startswith("20")
    text = str(bad)
    assert "\n" not in text and "openvino cannot run this file" in text and "DequantizeLinear" in text
    assert f"openvino {bad.version}" in text and "dB on ort" in text
    assert any("fell back to the openvino placement" in n for n in r.notes) and "rejected" in r.render()


def test_placement_flag(cli, digits_onnx, tmp_path):
    """``--placement`` reaches QuantConfig(placement=...): the OpenVINO placement's file, timed and used on ONNX
    Runtime; a bad value is one line and exit code 2."""
    x = datasets.digits()[0]
    calib = tmp_path / "calib"
    calib.mkdir()
    for i in range(3):
        np.savez(calib / f"{i}.npz", input=x[i * 32:(i + 1) * 32])
    out = tmp_path / "d.int8.onnx"
    p = cli("quantize", digits_onnx, "-o", out, "--calib", calib, "--placement", "openvino", "--no-speed", "--json",
            "-q")
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout)
    assert r["engine"] == "ort" and r["placement"] == "openvino" and r["engine_check"] is None
    zps = [n.inputs[2].const_value.numpy() for n in bushu.load(out).graph if n.op_type == "QuantizeLinear"]
    assert zps and {z.dtype for z in zps} >= {np.dtype(np.int8)}  # the OpenVINO preset's symmetric int8
    p = cli("quantize", digits_onnx, "-o", out, "--placement", "tensorrt")
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1 and "--placement" in p.stderr


def test_dynamic_per_engine(ppocr_rec, lines):
    """ONNX Runtime runs DynamicQuantizeLinear + MatMulInteger as DynamicQuantizeMatMul; OpenVINO has no integer
    kernel for it (FP32 FullyConnected), so its file has int8 weights, which its FullyConnected runs in int8 with
    the activations quantized at run time."""
    on_ort = quantize(ppocr_rec, lines, QuantConfig(mode="dynamic", progress=False, measure_speed=False))
    assert on_ort.kernels.get("DynamicQuantizeMatMul", 0) + on_ort.kernels.get("MatMulIntegerToFloat", 0) == 9
    on_ov = quantize(ppocr_rec, lines, QuantConfig(mode="dynamic", engine="openvino", progress=False,
                                                   measure_speed=False))
    assert "MatMulInteger" not in {n.op_type for n in on_ov.model.graph}
    assert on_ov.kernels.get("FullyConnected i8") == 9 and on_ov.engine_check
    assert on_ov.accuracy.snr_db > 25


def test_fp16_on_ppocr_det_on_both_engines(ppocr_det):
    """FP16 keeps the float32 interface and runs on both engines (ONNX Runtime's own float16 converter wrote a
    float16 Resize ``scales`` ONNX Runtime refused); the result gives the accuracy and speed on the target."""
    def prep(img):
        return np.ascontiguousarray(((img.astype(np.float32) / 255 - 0.5) / 0.5).transpose(2, 0, 1)[None])

    feeds = [{"x": prep(im)} for im in datasets.text_scenes(2, 320, seed=3)]
    r = quantize(ppocr_det, feeds, QuantConfig(mode="fp16", engine="openvino", progress=False))
    assert r.engine_check and r.accuracy.snr_db > 35 and r.engine_check.reference.snr_db > 35
    assert r.speed is not None and r.speed.engine == "openvino" and r.speed.speedup > 0
    assert r.weight_bytes[1] < 0.6 * r.weight_bytes[0]
    assert [i.dtype for i in open_session(r.model, "ort").inputs] == ["float32"]
    resize_scales = [n.inputs[2] for n in r.model.graph if n.op_type == "Resize" and len(n.inputs) > 2 and n.inputs[2]]
    assert resize_scales and all(v.dtype == ir.DataType.FLOAT for v in resize_scales)
    assert "on openvino" in r.render() and "latency" in r.render()


def test_fp16_converter_follows_the_schemas_and_the_fp16_range():
    """A fixed ``tensor(float)`` slot stays float32, a node reading a constant beyond float16's range stays float32,
    Shape reads a float16 tensor without a Cast, and the outputs keep their names and float32 type."""
    m = ir.serde.deserialize_model(onnx.parser.parse_model("""
        <ir_version: 8, opset_import: ["" : 13]>
        g (float[1,2,4,4] x) => (float[1,2,8,8] y, float[1,2,4,4] z, int64[4] s)
        <float two = {2.0}, float[0] roi = {}, float[4] scales = {1.0, 1.0, 2.0, 2.0}, float big = {-3.4e38}> {
          h = Mul (x, two)
          y = Resize <mode = "nearest"> (h, roi, scales)
          z = Add (h, big)
          s = Shape (h)
        }"""))
    q = fp16(m)
    nodes = {n.op_type: n for n in q.graph}
    assert nodes["Mul"].outputs[0].dtype == ir.DataType.FLOAT16
    assert nodes["Resize"].inputs[2].dtype == ir.DataType.FLOAT  # scales: tensor(float) in the schema
    assert nodes["Resize"].inputs[0].producer().op_type == "Cast"  # Resize is blocked: float32 in
    assert nodes["Add"].outputs[0].dtype == ir.DataType.FLOAT  # -3.4e38 would be -inf in float16
    assert nodes["Shape"].inputs[0].dtype == ir.DataType.FLOAT16  # no Cast for a shape
    assert [(v.name, v.dtype) for v in q.graph.outputs] == [("y", ir.DataType.FLOAT), ("z", ir.DataType.FLOAT),
                                                            ("s", ir.DataType.INT64)]
    kept = fp16(m, exclude=("Mul",))  # the user's --exclude extends the block list
    assert {n.op_type: n for n in kept.graph}["Mul"].outputs[0].dtype == ir.DataType.FLOAT
    x = np.random.default_rng(0).standard_normal((1, 2, 4, 4)).astype(np.float32)
    a = accuracy(run_all(m, [{"x": x}]), run_all(q, [{"x": x}]))
    assert a.snr_db > 50
