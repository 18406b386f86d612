"""bushu.load / bushu.save: real models round-trip; every bad input is refused before any work, in one line."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

import bushu
from bushu import ir as bir
from bushu.errors import BushuError


def _run(path_or_model, feed):
    import onnxruntime as ort

    from bushu.engines.base import ModelFile

    with ModelFile(path_or_model if not isinstance(path_or_model, Path) else str(path_or_model)) as src:
        sess = ort.InferenceSession(src, providers=["CPUExecutionProvider"])
    return sess.run(None, feed)


def _small_model(w: np.ndarray | None = None) -> onnx.ModelProto:
    w = np.arange(12, dtype=np.float32).reshape(3, 4) if w is None else w
    g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        [numpy_helper.from_array(w, "w")],
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("name", ["ppocr-rec", "ppocr-cls", "silero-vad"])
def test_real_models_round_trip_bit_identical(name, tmp_path):
    import bushu.zoo as zoo

    src = zoo.path(name)
    model = bushu.load(src)
    out = bushu.save(model, tmp_path / "copy.onnx")
    spec = zoo.MODELS[name]
    import bushu.inputs as inputs
    from bushu.engines.base import model_specs

    feed = inputs.synthesize(model_specs(model)[0], shapes=spec.shapes, values=spec.values, seed=3)
    for a, b in zip(_run(src, feed), _run(out, feed)):
        np.testing.assert_array_equal(a, b)


def test_missing_path():
    with pytest.raises(BushuError, match="no such file"):
        bushu.load("/nonexistent/model.onnx")


def test_folder_is_refused_with_a_hint(tmp_path):
    onnx.save(_small_model(), tmp_path / "m.onnx")
    with pytest.raises(BushuError, match="did you mean"):
        bushu.load(tmp_path)


def test_not_onnx(tmp_path):
    p = tmp_path / "model.onnx"
    p.write_text("this is a text file, not a protobuf\n" * 20)
    with pytest.raises(BushuError, match="not a valid ONNX file"):
        bushu.load(p)


def test_empty_file(tmp_path):
    p = tmp_path / "model.onnx"
    p.write_bytes(b"")
    with pytest.raises(BushuError, match="empty"):
        bushu.load(p)


def test_truncated_real_model(tmp_path, ppocr_cls):
    data = Path(ppocr_cls).read_bytes()
    p = tmp_path / "truncated.onnx"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(BushuError, match="truncated|not a valid ONNX"):
        bushu.load(p)


def test_opset_newer_than_installed_onnx(tmp_path):
    m = _small_model()
    m.opset_import[0].version = onnx.defs.onnx_opset_version() + 5
    p = tmp_path / "future.onnx"
    onnx.save(m, p)
    with pytest.raises(BushuError, match=r"opset \d+ .* knows up to"):
        bushu.load(p)


def test_cycle_is_refused(tmp_path):
    g = helper.make_graph(
        [helper.make_node("Add", ["x", "b"], ["a"], name="first"), helper.make_node("Relu", ["a"], ["b"], name="second")],
        "cyclic", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("b", TensorProto.FLOAT, [2])],
    )
    p = tmp_path / "cycle.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), p)
    with pytest.raises(BushuError, match="cycle through node 'first'"):
        bushu.load(p)


def _external_model(tmp_path: Path, location: str) -> Path:
    m = _small_model()
    t = m.graph.initializer[0]
    raw = t.raw_data or numpy_helper.to_array(t).tobytes()
    t.ClearField("raw_data")
    t.ClearField("float_data")
    t.data_location = TensorProto.EXTERNAL
    for k, v in {"location": location, "offset": "0", "length": str(len(raw))}.items():
        e = t.external_data.add()
        e.key, e.value = k, v
    (tmp_path / "models").mkdir(exist_ok=True)
    p = tmp_path / "models" / "m.onnx"
    onnx.save(m, p)
    target = (p.parent / location) if not os.path.isabs(location) else Path(location)
    if target.parent.exists():
        target.write_bytes(raw)
    return p


@pytest.mark.parametrize("location", ["../secret.bin", "sub/../../secret.bin", "/etc/passwd"])
def test_external_data_outside_the_folder_is_refused(tmp_path, location):
    p = _external_model(tmp_path, location if location != "/etc/passwd" else "/etc/passwd")
    with pytest.raises(BushuError, match="outside the model's folder|absolute path"):
        bushu.load(p)


def test_external_data_inside_the_folder_loads_memory_mapped(tmp_path):
    p = _external_model(tmp_path, "m.weights")
    model = bushu.load(p)
    w = model.graph.initializers["w"].const_value
    assert isinstance(w, ir.ExternalTensor)
    np.testing.assert_array_equal(w.numpy(), np.arange(12, dtype=np.float32).reshape(3, 4))
    x = np.ones((2, 3), np.float32)
    np.testing.assert_allclose(_run(model, {"x": x})[0], x @ w.numpy())


def test_external_data_symlink_escaping_is_refused(tmp_path):
    (tmp_path / "outside.bin").write_bytes(np.arange(12, dtype=np.float32).tobytes())
    p = _external_model(tmp_path, "link.bin")
    (p.parent / "link.bin").unlink(missing_ok=True)
    (p.parent / "link.bin").symlink_to(tmp_path / "outside.bin")
    with pytest.raises(BushuError, match="outside the model's folder"):
        bushu.load(p)


def test_save_refuses_to_overwrite_the_input_unless_forced(tmp_path):
    p = tmp_path / "m.onnx"
    onnx.save(_small_model(), p)
    before = p.read_bytes()
    model = bushu.load(p)
    with pytest.raises(BushuError, match="--force"):
        bushu.save(model, p)
    assert p.read_bytes() == before
    bushu.save(model, p, force=True)
    assert onnx.load(p).graph.node[0].op_type == "MatMul"


def test_save_is_atomic_when_serialization_fails(tmp_path, monkeypatch):
    p = tmp_path / "out.onnx"
    p.write_bytes(b"previous content")

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(ir, "save", boom)
    with pytest.raises(RuntimeError):
        bushu.save(ir.serde.deserialize_model(_small_model()), p)
    assert p.read_bytes() == b"previous content"
    assert [x.name for x in tmp_path.iterdir()] == ["out.onnx"]  # no temporary left behind


def test_save_switches_to_external_data_above_the_threshold(tmp_path, monkeypatch):
    monkeypatch.setattr(bir, "EXTERNAL_DATA_THRESHOLD", 16)  # the 2 GB switch, exercised on a small model
    w = np.random.default_rng(0).standard_normal((3, 400)).astype(np.float32)
    model = ir.serde.deserialize_model(_small_model(w))
    out = bushu.save(model, tmp_path / "big.onnx")
    assert (tmp_path / "big.onnx.data").stat().st_size >= w.nbytes
    back = bushu.load(out)
    assert isinstance(back.graph.initializers["w"].const_value, ir.ExternalTensor)
    x = np.ones((1, 3), np.float32)
    np.testing.assert_allclose(_run(out, {"x": x})[0], x @ w, rtol=1e-6)


def test_cli_bad_inputs_exit_2_with_one_line(tmp_path, cli):
    bad = tmp_path / "bad.onnx"
    bad.write_text("nope")
    for path in [tmp_path / "missing.onnx", bad]:
        r = cli("run", path)
        assert r.returncode == 2, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    r = cli("run", bad, "--debug")
    assert r.returncode == 2 and "Traceback" in r.stderr


def test_to_chunks_is_the_protobuf_serialization_byte_for_byte(ppocr_cls, tmp_path):
    """to_chunks writes large weights from their arrays' memory between the graph's other fields: the concatenated
    buffers equal onnx-ir's proto serialized by protobuf, for weights that are new arrays (with doc strings and
    metadata, of several dtypes, some not contiguous), tensors read from a file, a subgraph and model metadata."""
    model = bushu.load(ppocr_cls)
    model.metadata_props["k"] = "v"
    model.doc_string = "doc"
    rng = np.random.default_rng(0)
    arrays = {"a": rng.standard_normal((64, 33), np.float32), "b": rng.integers(0, 9, (600,), np.int64),
              "c": rng.standard_normal((40, 30)).T, "d": np.ones((2000,), np.float16), "e": np.zeros(3, np.float32)}
    for name, arr in arrays.items():
        t = ir.tensor(arr, name=name)
        if name == "a":
            t.doc_string, t.metadata_props["why"] = "a weight", "test"
        model.graph.register_initializer(ir.Value(name=name, const_value=t))
    chunks, proto, stripped = bir.to_chunks(model, 1024)
    expected = bir.to_proto(model).SerializeToString()
    assert b"".join(bytes(c) for c in chunks) == expected
    assert {"a", "b", "c", "d"} <= set(stripped) and "e" not in stripped
    assert stripped["a"] == (TensorProto.FLOAT, [64, 33])
    assert not {t.name for t in proto.graph.initializer} & set(stripped)
    assert any(isinstance(c, memoryview) for c in chunks)  # zero-copy for plain arrays
    # the model is left as it was: its weights are its own tensors again
    assert model.graph.initializers["a"].const_value.numpy() is not None
    assert bir.to_proto(model).SerializeToString() == expected
    # written, it loads back with the same weights
    out = bir.save_bytes(chunks, tmp_path / "m.onnx")
    back = bushu.load(out)
    np.testing.assert_array_equal(back.graph.initializers["c"].const_value.numpy(), arrays["c"])


def test_to_chunks_refuses_a_weight_whose_data_does_not_fit_its_shape(tmp_path):
    """A tensor read from a corrupt file (raw_data shorter than its shape needs) is named, not written: the input's
    check (bushu.optimize) relies on it, since the checker then doesn't read the weights."""
    from bushu.passes import check_model

    proto = _small_model(np.ones((64, 64), np.float32))
    proto.graph.initializer[0].raw_data = proto.graph.initializer[0].raw_data[:-8]
    model = ir.serde.deserialize_model(proto)
    with pytest.raises(BushuError, match="tensor 'w' holds 16376 bytes but its type and shape need 16384"):
        bir.to_chunks(model, 1024)
    assert "16376" in (check_model(model) or "")
    onnx.save(proto, tmp_path / "bad.onnx")
    assert "16376" in (check_model(tmp_path / "bad.onnx") or "")  # the checker's own words from the file
