"""bushu convert and the ncnn/MNN engines, on PP-OCR cls/rec against ONNX Runtime."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest

import bushu
from bushu.convert import ConversionError
from bushu.convert.targets import converter
from bushu.engines import open_session
from bushu.errors import BushuError
from bushu.inputs import synthesize


@pytest.fixture(scope="module", autouse=True)
def cache_dir(tmp_path_factory):
    """A fresh conversion cache, so the conversions really run here."""
    path = tmp_path_factory.mktemp("bushu-cache")
    old = os.environ.get("BUSHU_CACHE_DIR")
    os.environ["BUSHU_CACHE_DIR"] = str(path)
    yield path
    if old is None:
        os.environ.pop("BUSHU_CACHE_DIR", None)
    else:
        os.environ["BUSHU_CACHE_DIR"] = old


@pytest.fixture(scope="module")
def isnan_model(tmp_path_factory) -> Path:
    """A graph with IsNaN, which neither pnnx/ncnn nor MNN support."""
    m = ir.from_onnx_text("""<ir_version: 8, opset_import: ["": 17]>
        g (float[1,3,8,8] x) => (float[1,3,8,8] y) { n = IsNaN(x)  c = Cast<to=1>(n)  y = Add(x, c) }""")
    path = tmp_path_factory.mktemp("isnan") / "isnan.onnx"
    bushu.save(m, path)
    return path


@pytest.mark.parametrize("target", ["ncnn", "mnn", "openvino"])
def test_ppocr_cls_converts_and_matches_ort(target, ppocr_cls, tmp_path):
    r = bushu.convert(ppocr_cls, target, tmp_path / target)
    assert r, r.render()
    assert r.error is None and r.outputs and all(o.passed for o in r.outputs)
    assert r.outputs[0].max_abs < 1e-4 and r.outputs[0].top1 == 1.0
    assert all(Path(f).is_file() and Path(f).stat().st_size > 0 for f in r.files)
    assert sorted(Path(f).name for f in r.files) == sorted(converter(target).FILES)
    assert json.loads(r.to_json())["kind"] == "convert"


@pytest.mark.parametrize("engine", ["ncnn", "mnn"])
def test_engine_runs_onnx_directly_at_several_batch_sizes(engine, ppocr_cls):
    ref = open_session(ppocr_cls, "ort")
    sess = open_session(ppocr_cls, engine)
    for batch in (1, 3):
        feed = synthesize(ref.inputs, shapes={"x": (batch, 3, 48, 192)}, seed=batch)
        got, want = sess.run(feed), ref.run(feed)
        for name, w in want.items():
            assert got[name].shape == w.shape
            np.testing.assert_allclose(got[name], w, atol=1e-4, rtol=1e-3)
            assert (got[name].argmax(-1) == w.argmax(-1)).all()


def test_conversion_is_cached_by_content(ppocr_cls, cache_dir, tmp_path):
    open_session(ppocr_cls, "mnn")
    entries = sorted((cache_dir / "convert" / "mnn").iterdir())
    open_session(ppocr_cls, "mnn")
    assert sorted((cache_dir / "convert" / "mnn").iterdir()) == entries  # a hit: nothing new
    model = bushu.load(ppocr_cls)
    const = next(n for n in model.graph if n.op_type == "Constant" and n.attributes["value"].value.size > 10)
    arr = const.attributes["value"].value.numpy().copy()
    arr.flat[0] += 1.0  # PP-OCR keeps its weights in Constant nodes
    const.attributes["value"] = ir.AttrTensor("value", ir.tensor(arr))
    open_session(model, "mnn")
    assert len(list((cache_dir / "convert" / "mnn").iterdir())) == len(entries) + 1  # changed weights: converted again


def test_ncnn_refuses_a_shape_pnnx_fixed(ppocr_rec):
    sess = open_session(ppocr_rec, "ncnn", shapes={"x": (1, 3, 48, 320)})
    assert sess.inputs[0].shape[1:] == (3, 48, 320)
    ref = open_session(ppocr_rec, "ort")
    feed = synthesize(ref.inputs, shapes={"x": (2, 3, 48, 320)})
    np.testing.assert_allclose(sess.run(feed)["softmax_11.tmp_0"], ref.run(feed)["softmax_11.tmp_0"], atol=1e-4)
    with pytest.raises(BushuError, match="converted for"):
        sess.run(synthesize(ref.inputs, shapes={"x": (1, 3, 48, 160)}))


@pytest.mark.parametrize("target", ["ncnn", "mnn"])
def test_refused_conversion_names_the_op_and_writes_nothing(target, isnan_model, tmp_path):
    out = tmp_path / "out"
    r = bushu.convert(isnan_model, target, out)
    assert not r and r.error and "IsNaN" in r.unsupported
    assert not out.exists() or not any(out.iterdir())
    with pytest.raises(ConversionError, match="IsNaN"):
        open_session(isnan_model, target)


def test_cli_convert_exit_codes(cli, ppocr_cls, isnan_model, tmp_path):
    ok = cli("convert", ppocr_cls, "--to", "mnn", "-o", tmp_path / "m", "--json")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["outputs"][0]["passed"] is True  # MNN's banner did not reach stdout
    again = cli("convert", ppocr_cls, "--to", "mnn", "-o", tmp_path / "m")
    assert again.returncode == 2 and "--force" in again.stderr and "\n" not in again.stderr.strip()
    refused = cli("convert", isnan_model, "--to", "mnn", "-o", tmp_path / "bad")
    assert refused.returncode == 1 and "IsNaN" in refused.stdout


def test_compare_runs_on_converted_engines(cli, ppocr_cls):
    res = cli("compare", ppocr_cls, "--engines", "ort,ncnn", "--json")
    assert res.returncode == 0, res.stderr + res.stdout
    assert json.loads(res.stdout)["outputs"][0]["passed"] is True


_AUDIT = textwrap.dedent("""
    import json, os, sys
    _log = os.environ["BUSHU_AUDIT_LOG"]
    def _hook(event, args):
        if event in ("socket.connect", "socket.getaddrinfo", "subprocess.Popen", "os.system", "os.exec",
                     "os.posix_spawn", "os.spawn", "urllib.Request"):
            with open(_log, "a") as f:
                f.write(json.dumps([event, repr(args)[:300]]) + "\\n")
    sys.addaudithook(_hook)
""")


def test_mnn_conversion_installs_nothing_and_opens_no_connection(ppocr_cls, tmp_path):
    """Every Python process of the conversion (the CLI and the converter child) records its subprocesses and
    sockets through an audit hook in sitecustomize; strace, when installed, also sees C-level connects."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(_AUDIT)
    log = tmp_path / "audit.log"
    env = {**os.environ, "PYTHONPATH": str(site), "BUSHU_AUDIT_LOG": str(log), "BUSHU_CACHE_DIR": str(tmp_path / "c")}
    cmd = [sys.executable, "-m", "bushu", "convert", str(ppocr_cls), "--to", "mnn", "-o", str(tmp_path / "out")]
    strace = shutil.which("strace")
    trace = tmp_path / "strace.txt"
    if strace:
        cmd = [strace, "-f", "-qq", "-e", "trace=connect,execve", "-o", str(trace), *cmd]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    assert not [e for e in events if e[0].startswith("socket") or e[0] == "urllib.Request"], events
    spawned = [e[1] for e in events if e[0] in ("subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn")]
    assert spawned, "the converter child process should have been seen"
    assert not [s for s in spawned if "pip" in s or "aliyun" in s], spawned
    if strace:
        text = trace.read_text()
        assert "AF_INET" not in text, [ln for ln in text.splitlines() if "AF_INET" in ln]
        assert "/pip" not in text and "pip install" not in text


def _fill(nbytes: int):
    def create(tmp: Path) -> None:
        (tmp / "model.bin").write_bytes(b"\0" * nbytes)
    return create


def test_cache_is_bounded_least_recently_used_first(tmp_path, monkeypatch):
    from bushu.convert import cache

    monkeypatch.setenv("BUSHU_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("BUSHU_CACHE_MAX_GB", str(2.5e-6))  # 2,500 bytes: two 1,000-byte entries fit, not three
    a = cache.get_or_create("ncnn", "a", _fill(1000))
    b = cache.get_or_create("mnn", "b", _fill(1000))
    os.utime(a, (1_000, 1_000))
    os.utime(b, (2_000, 2_000))
    assert cache.get_or_create("ncnn", "a", _fill(1)) == a  # a hit: nothing converted, its last use refreshed
    assert (a / "model.bin").stat().st_size == 1000 and a.stat().st_mtime > 2_000
    c = cache.get_or_create("ncnn", "c", _fill(1000))  # over the cap: b is the least recently used
    assert a.is_dir() and c.is_dir() and not b.exists()
    big = cache.get_or_create("mnn", "big", _fill(5000))  # alone over the cap: kept, every other entry goes
    assert [e.path for e in cache.entries()] == [big]
    assert not [p for p in tmp_path.rglob(".t*")]  # no temporary or trash folder left behind
    monkeypatch.setenv("BUSHU_CACHE_MAX_GB", "lots")
    with pytest.raises(BushuError, match="BUSHU_CACHE_MAX_GB"):
        cache.max_bytes()


def test_cache_failed_conversion_leaves_nothing(tmp_path, monkeypatch):
    from bushu.convert import cache

    monkeypatch.setenv("BUSHU_CACHE_DIR", str(tmp_path))

    def broken(tmp: Path) -> None:
        (tmp / "half.bin").write_bytes(b"\0" * 10)
        raise ConversionError("ncnn", "refused")

    with pytest.raises(ConversionError):
        cache.get_or_create("ncnn", "k", broken)
    assert not any((tmp_path / "convert" / "ncnn").iterdir())


def test_cli_clear_cache(cli, ppocr_cls, tmp_path, monkeypatch):
    monkeypatch.setenv("BUSHU_CACHE_DIR", str(tmp_path))
    open_session(ppocr_cls, "mnn")  # a real conversion into the cache
    assert list((tmp_path / "convert" / "mnn").iterdir())
    res = cli("convert", "--clear-cache", "--json")
    assert res.returncode == 0, res.stderr
    d = json.loads(res.stdout)
    assert d["kind"] == "cache-cleared" and d["entries"] == 1 and d["bytes"] > 100_000
    assert not list((tmp_path / "convert" / "mnn").iterdir())
    both = cli("convert", ppocr_cls, "--clear-cache")
    assert both.returncode == 2 and "alone" in both.stderr
    nothing = cli("convert", ppocr_cls)
    assert nothing.returncode == 2 and "--to" in nothing.stderr


@pytest.fixture(scope="module")
def cls_calib(tmp_path_factory) -> Path:
    """Rendered text lines as PP-OCR cls feeds (1x3x48x192), one .npz each."""
    from bushu import datasets

    folder = tmp_path_factory.mktemp("cls-calib")
    for i, line in enumerate(datasets.text_lines(8, seed=3)):
        x = np.zeros((1, 3, 48, 192), np.float32)
        x[..., :min(192, line.x.shape[-1])] = line.x[..., :192]
        np.savez(folder / f"{i}.npz", x=x)
    return folder


def test_ncnn_int8_conversion(ppocr_cls, cls_calib, tmp_path):
    from bushu.convert import ncnn_int8

    assert bushu.convert(ppocr_cls, "ncnn", tmp_path / "fp32", verify_outputs=False).error is None
    r = bushu.convert(ppocr_cls, "ncnn", tmp_path / "int8", int8=True, calib=cls_calib)
    assert r, r.render()
    assert r.precision == "int8" and r.int8_layers >= 40 and "INT8" in str(r)
    assert all(o.cosine >= 0.99 and o.top1 == 1.0 for o in r.outputs)  # on the calibration feeds, against ORT FP32
    layers = {layer.name: layer for layer in ncnn_int8.read_param(tmp_path / "int8" / "model.ncnn.param")}
    quantized = [layer for layer in layers.values() if layer.params.get("8") == "1"]
    assert len(quantized) == r.int8_layers and {q.type for q in quantized} == {"Convolution", "InnerProduct"}
    # depthwise convolutions stay FP32 (slower in INT8 on ncnn's x86 kernels), and the result says so
    depthwise = [layer for layer in layers.values() if layer.type == "ConvolutionDepthWise"]
    assert r.int8_fp32_depthwise == len(depthwise) == 11 and "11 depthwise convolutions kept FP32" in str(r)
    every = bushu.convert(ppocr_cls, "ncnn", tmp_path / "int8-dw", int8=True, calib=cls_calib, calib_samples=2,
                          int8_depthwise=True,
                          verify_outputs=False)
    assert every.int8_layers == r.int8_layers + 11 and every.int8_fp32_depthwise == 0
    # INT8 weights: the bin shrinks by ~3/4 of the quantized weights' bytes
    assert (tmp_path / "int8" / "model.ncnn.bin").stat().st_size < 0.5 * (tmp_path / "fp32" / "model.ncnn.bin").stat().st_size
    # a bin that does not match its param file is refused, nothing written
    bad = tmp_path / "bad"
    bad.mkdir()
    data = (tmp_path / "fp32" / "model.ncnn.bin").read_bytes()
    (bad / "model.ncnn.bin").write_bytes(data[:-8])
    with pytest.raises(BushuError, match="nothing written|ends inside"):
        ncnn_int8.rewrite(tmp_path / "fp32" / "model.ncnn.param", bad / "model.ncnn.bin", bad / "p", bad / "b", {})
    assert not (bad / "p").exists()
    with pytest.raises(BushuError, match="bushu quantize"):
        bushu.convert(ppocr_cls, "mnn", tmp_path / "m", int8=True, calib=cls_calib)


def test_gather_of_arange_becomes_reshape():
    from bushu.convert.pnnx_prep import gather_as_reshape

    idx = ",".join(map(str, range(12)))
    m = ir.from_onnx_text(f"""<ir_version: 8, opset_import: ["": 17]>
        g (float[12] x) => (float[1,12,1,1] y) <int64[1,12,1,1] i = {{{idx}}}> {{ y = Gather(x, i) }}""")
    x = np.random.default_rng(0).standard_normal(12).astype(np.float32)
    want = open_session(m, "ort").run({"x": x})["y"]
    assert gather_as_reshape(m) == 1
    assert [n.op_type for n in m.graph] == ["Reshape"] and m.graph.outputs[0].name == "y"
    np.testing.assert_array_equal(open_session(m, "ort").run({"x": x})["y"], want)


def test_ncnn_converts_after_preparation(digits_onnx, silero_vad, speech_16k, tmp_path):
    # digits-cnn (dynamo export): pnnx alone leaves a Gather of the batch arithmetic; batch 1 + folding fixes it
    r = bushu.convert(digits_onnx, "ncnn", tmp_path / "digits")
    assert r and r.outputs[0].max_abs < 1e-4, r.render()
    # silero VAD: the scalar sr is bound from the given value, its one-step LSTM unrolled, and its (2, batch, 128)
    # state made batch first (pnnx takes dim 0 for the batch); the ncnn session reshapes feed and output back
    s = bushu.convert(silero_vad, "ncnn", tmp_path / "vad", values={"sr": 16000})
    assert s and all(o.max_abs < 1e-4 for o in s.outputs), s.render()
    layout = json.loads((tmp_path / "vad" / "model.ncnn.layout.json").read_text())
    assert layout == {"inputs": {"state": [[2, 1, 128], [1, 2, 128]]}, "outputs": {"stateN": [[2, 1, 128], [1, 2, 128]]}}
    with pytest.raises(ConversionError, match="--value sr="):
        open_session(silero_vad, "ncnn")  # no value to bind
    vad = open_session(silero_vad, "ncnn", values={"sr": 16000}, shapes=bushu.zoo.MODELS["silero-vad"].shapes)
    windows = bushu.zoo.silero_windows(speech_16k)[2:6]  # silence, then the first words (64 of context + 512 new)
    feed = {"input": windows[0], "state": np.zeros((2, 1, 128), np.float32), "sr": np.asarray(16000, np.int64)}
    want = open_session(silero_vad, "ort").run(feed)
    for x in windows[1:]:  # the state carried from window to window, as a VAD runs
        got = vad.run(feed)
        assert got["stateN"].shape == (2, 1, 128)
        np.testing.assert_allclose(got["output"], want["output"], atol=1e-5)
        np.testing.assert_allclose(got["stateN"], want["stateN"], atol=1e-5)
        feed = {**feed, "input": x, "state": got["stateN"]}
        want = open_session(silero_vad, "ort").run(feed)
    assert want["output"].item() > 0.5  # speech heard: the model was fed what it expects
    with pytest.raises(BushuError, match="batch 1"):
        vad.run({**feed, "input": np.zeros((2, 576), np.float32)})


def test_flattened_softmax_becomes_softmax():
    from bushu.convert.pnnx_prep import unflatten_softmax

    # what ONNX's version converter writes for a last-axis Softmax going from opset 12 to 13+
    m = ir.from_onnx_text("""<ir_version: 8, opset_import: ["": 14]>
        g (float[2,3,4,5] x) => (float[2,3,4,5] y) {
            s = Shape(x)  f = Flatten<axis=3>(x)  p = Softmax<axis=1>(f)  y = Reshape(p, s) }""")
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 5)).astype(np.float32)
    want = open_session(m, "ort").run({"x": x})["y"]
    assert unflatten_softmax(m) == 1
    assert [(n.op_type, n.attributes["axis"].value) for n in m.graph] == [("Softmax", -1)]
    assert m.graph.outputs[0].name == "y"
    np.testing.assert_allclose(open_session(m, "ort").run({"x": x})["y"], want, rtol=1e-6, atol=1e-7)
    # softmax over more than the last axis is not a last-axis softmax: left alone
    other = ir.from_onnx_text("""<ir_version: 8, opset_import: ["": 14]>
        g (float[2,3,4,5] x) => (float[2,3,4,5] y) {
            s = Shape(x)  f = Flatten<axis=2>(x)  p = Softmax<axis=1>(f)  y = Reshape(p, s) }""")
    assert unflatten_softmax(other) == 0


def test_ncnn_converts_rec_at_opset_14(ppocr_rec, tmp_path):
    # `bushu optimize --opset 14` converts the opset; its Softmax chains hid the attention pnnx fuses
    path = tmp_path / "rec14.onnx"
    bushu.save(bushu.ir.convert_opset(bushu.load(ppocr_rec), 14), path)
    r = bushu.convert(path, "ncnn", tmp_path / "ncnn", shapes={"x": (1, 3, 48, 320)})
    assert r and r.outputs[0].max_abs < 1e-4, r.render()
    param = (tmp_path / "ncnn" / "model.ncnn.param").read_text()
    assert param.count("MultiHeadAttention") == 2 and "torch.unbind" not in param


def test_one_step_lstm_is_unrolled():
    import onnx
    from onnx import helper

    from bushu.convert.pnnx_prep import unroll_lstm_step

    rng = np.random.default_rng(0)
    hid, inp, batch = 4, 3, 2
    inits = [onnx.numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n)
             for n, s in (("W", (1, 4 * hid, inp)), ("R", (1, 4 * hid, hid)), ("B", (1, 8 * hid)))]
    io = [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, s)
          for n, s in (("x", (1, batch, inp)), ("h0", (1, batch, hid)), ("c0", (1, batch, hid)))]
    outs = [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, s)
            for n, s in (("y", (1, 1, batch, hid)), ("yh", (1, batch, hid)), ("yc", (1, batch, hid)))]
    lstm = helper.make_node("LSTM", ["x", "W", "R", "B", "", "h0", "c0"], ["y", "yh", "yc"], hidden_size=hid)
    proto = helper.make_model(helper.make_graph([lstm], "g", io, outs, inits), opset_imports=[helper.make_opsetid("", 17)])
    m = ir.from_proto(proto)
    feed = {n: rng.standard_normal(s).astype(np.float32) for n, s in (("x", (1, batch, inp)), ("h0", (1, batch, hid)),
                                                                       ("c0", (1, batch, hid)))}
    want = open_session(m, "ort").run(feed)
    assert unroll_lstm_step(m) == 1
    ops = [n.op_type for n in m.graph]
    assert "LSTM" not in ops and ops.count("MatMul") == 2 and ops.count("Sigmoid") == 3 and ops.count("Tanh") == 2
    got = open_session(m, "ort").run(feed)
    for name in ("y", "yh", "yc"):
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-6)
    # a sequence longer than one step is left alone
    proto.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 2
    assert unroll_lstm_step(ir.from_proto(proto)) == 0


def test_table_lookups_are_clipped_for_pnnx(minilm_onnx):
    """pnnx runs ORT on input tensors it never fills: an embedding lookup then reads a garbage index (MiniLM's
    token-type table has 2 rows). A Clip to the table changes no valid index."""
    from bushu.convert.pnnx_prep import clip_gather_indices

    m = bushu.load(minilm_onnx)
    feed = {k: v for k, v in zip(("input_ids", "attention_mask", "token_type_ids"),
                                 (np.array([[101, 7592, 2088, 102, 2045]]), np.ones((1, 5), np.int64),
                                  np.array([[0, 0, 0, 1, 1]])))}
    want = open_session(m, "ort").run(feed)
    assert clip_gather_indices(m) == 3  # word, token-type and position tables
    clips = [n for n in m.graph if n.op_type == "Clip" and n.name.endswith("_in_range")]
    bounds = sorted((int(n.inputs[1].const_value.numpy()), int(n.inputs[2].const_value.numpy())) for n in clips)
    assert bounds == [(-30522, 30521), (-512, 511), (-2, 1)]
    got = open_session(m, "ort").run(feed)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k])


def test_ncnn_converts_a_model_of_ir_version_14(tmp_path):
    """onnx 1.23 writes IR version 14; the ONNX Runtime inside pnnx reads 13 at most (pnnx crashed with a page of
    ORT's C++ signature). The copy given to pnnx says 13; an op ncnn lacks is then named, in one line."""
    import onnx
    from onnx import TensorProto, helper

    w = helper.make_tensor("w", TensorProto.FLOAT, [4, 3, 3, 3], np.random.default_rng(0).standard_normal(108).tolist())
    g = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
                           helper.make_node("Relu", ["c"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])], [w])
    proto = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=14)
    onnx.save(proto, tmp_path / "ir14.onnx")
    r = bushu.convert(tmp_path / "ir14.onnx", "ncnn", tmp_path / "out")
    assert r and r.outputs[0].max_abs < 1e-4, r.render()
    g.node.append(helper.make_node("Hardmax", ["y"], ["z"]))
    g.output[0].CopyFrom(helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 4, 8, 8]))
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=14), tmp_path / "hm.onnx")
    bad = bushu.convert(tmp_path / "hm.onnx", "ncnn", tmp_path / "hm")
    assert not bad and "Hardmax" in bad.error and "\n" not in bad.error and "IR version" not in bad.error
