"""bushu edit on the real models: static/renamed dims, opset conversion, extraction, renaming — each verified."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import bushu
from bushu.passes.verify import run_ort


def test_static_shape_and_dim_rename(ppocr_rec, tmp_path):
    out = tmp_path / "static.onnx"
    m, r = bushu.edit(ppocr_rec, out, shapes={"x": (1, 3, 48, 320)})
    assert r and r.checks, r.render()
    assert [d for d in bushu.load(out).graph.inputs[0].shape] == [1, 3, 48, 320]
    onnx.checker.check_model(str(out), full_check=True)
    m, r = bushu.edit(out, tmp_path / "renamed.onnx", rename_io={"x": "image"})
    assert r and bushu.load(tmp_path / "renamed.onnx").graph.inputs[0].name == "image"


def test_dim_by_name(torch_zoo, tmp_path):
    m, r = bushu.edit(torch_zoo("digits-cnn", legacy=True), tmp_path / "b.onnx", shapes={"batch": 4})
    assert r, r.render()
    assert list(m.graph.inputs[0].shape)[0] == 4 and list(m.graph.outputs[0].shape)[0] == 4
    m, r = bushu.edit(torch_zoo("digits-cnn", legacy=True), tmp_path / "n.onnx", shapes={"batch": "N"})
    assert str(list(m.graph.inputs[0].shape)[0]) == "N"


def test_opset_conversion_is_verified(ppocr_cls, tmp_path):
    m, r = bushu.edit(ppocr_cls, tmp_path / "13.onnx", opset=13)
    assert r and m.opset_imports[""] == 13 and "opset 13" in r.checks[0]


def test_extract_gives_the_full_models_values(ppocr_cls, tmp_path):
    g = bushu.load(ppocr_cls).graph
    convs = [n.outputs[0].name for n in g if n.op_type == "Conv"]
    part, r = bushu.edit(ppocr_cls, tmp_path / "part.onnx", inputs=[convs[3]], outputs=[convs[8]])
    assert r, r.render()
    assert [v.name for v in part.graph.outputs] == [convs[8]]
    assert convs[3] in [v.name for v in part.graph.inputs]
    assert sum(n.op_type == "Conv" for n in part.graph) < len(convs)


def test_bad_edits(ppocr_cls, tmp_path):
    with pytest.raises(bushu.BushuError, match="no tensor named 'nope'"):
        bushu.edit(ppocr_cls, tmp_path / "x.onnx", outputs=["nope"])
    with pytest.raises(bushu.BushuError, match="not an input or output"):
        bushu.edit(ppocr_cls, tmp_path / "x.onnx", rename_io={"nope": "y"})
    with pytest.raises(bushu.BushuError, match="--force"):
        bushu.edit(ppocr_cls, ppocr_cls, opset=13)


def test_cli(cli, ppocr_cls, tmp_path):
    out = tmp_path / "e.onnx"
    r = cli("edit", ppocr_cls, "-o", out, "--shape", "x:1x3x48x192", "--rename", "x=image", "--json")
    assert r.returncode == 0, r.stderr
    m = bushu.load(out)
    assert m.graph.inputs[0].name == "image"
    feed = {"image": np.random.default_rng(0).random((1, 3, 48, 192), dtype=np.float32)}
    assert next(iter(run_ort(m, [feed])[0].values())).shape[0] == 1


def test_cli_shape_fixes_or_renames_a_symbolic_dim_and_pairs_take_commas(torch_zoo, tmp_path, capsys):
    """`--shape DIM=8` (the README's form) fixes a symbolic dim in edit as --dim does, `--shape DIM=name` renames
    it; `--rename a=b,c=d` renames both (it used to be ignored / name the input 'b,c=d')."""
    from bushu.cli.main import main

    src = torch_zoo("digits-cnn", legacy=True)
    assert main(["edit", str(src), "-o", str(tmp_path / "a.onnx"), "--shape", "batch=4", "-q"]) == 0
    assert list(bushu.load(tmp_path / "a.onnx").graph.inputs[0].shape)[0] == 4
    assert main(["edit", str(src), "-o", str(tmp_path / "b.onnx"), "--shape", "batch=N",
                 "--rename", "input=image,logits=scores", "-q"]) == 0
    m = bushu.load(tmp_path / "b.onnx")
    assert str(list(m.graph.inputs[0].shape)[0]) == "N"
    assert [m.graph.inputs[0].name, m.graph.outputs[0].name] == ["image", "scores"]
    capsys.readouterr()
    assert main(["edit", str(src), "-o", str(tmp_path / "c.onnx"), "--rename", "input=a=b"]) == 2
    assert "write OLD=NEW" in capsys.readouterr().err


def test_bind_then_optimize_inlines_silero_vads_if(silero_vad, tmp_path, cli):
    """--bind sr=16000 makes sr a constant; optimize folds sr == 16000 and inline-constant-if replaces the Ifs by
    the 16 kHz branch: the same outputs as the original fed sr=16000, with no If left."""
    bound = tmp_path / "vad16k.onnx"
    r = cli("edit", silero_vad, "-o", bound, "--bind", "sr=16000")
    assert r.returncode == 0, r.stderr
    assert "bound inputs" in r.stdout
    m = bushu.load(bound)
    assert [v.name for v in m.graph.inputs] == ["input", "state"] and "sr" in m.graph.initializers
    opt, res = bushu.optimize(m, static_shapes={"input": (1, 576), "state": (2, 1, 128)}, verify="end",
                              latency=False, show_progress=False)
    assert res and res.fired["inline-constant-if"] >= 1, res.render()
    assert not any(n.op_type == "If" for n in opt.graph) and len(opt.graph) < 60
    rng = np.random.default_rng(3)
    feed = {"input": rng.standard_normal((1, 576), dtype=np.float32) * 0.1,
            "state": rng.standard_normal((2, 1, 128), dtype=np.float32) * 0.1}
    (want,), (got,) = run_ort(bushu.load(silero_vad), [{**feed, "sr": np.array(16000)}]), run_ort(opt, [feed])
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-4, atol=1e-6)


def test_bad_bind(silero_vad, tmp_path, cli):
    with pytest.raises(bushu.BushuError, match="no such input"):
        bushu.edit(silero_vad, tmp_path / "x.onnx", bind_inputs={"rate": 16000})
    with pytest.raises(bushu.BushuError, match="not a value of the input's type INT64"):
        bushu.edit(silero_vad, tmp_path / "x.onnx", bind_inputs={"sr": 1.5})
    r = cli("edit", silero_vad, "-o", tmp_path / "x.onnx", "--bind", "sr=fast")
    assert r.returncode == 2 and "NAME=NUMBER" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_edit_verifies_on_the_users_feeds_and_the_bound_values(silero_vad, tmp_path, capsys):
    """A silero file outside the zoo (no recorded inputs): `edit --bind sr=16000 --input feed.npz` verifies on the
    user's feed (--input was ignored, so the synthesized 1x64 window failed in ORT), and with --shape the static
    check runs at the bound sr (it ran a random sr, the 8 kHz branch, and failed)."""
    from bushu.cli.main import main

    copy = tmp_path / "silero_vad.onnx"
    copy.write_bytes(silero_vad.read_bytes())
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "feed.npz", input=(0.1 * rng.standard_normal((1, 576))).astype(np.float32),
             state=np.zeros((2, 1, 128), np.float32), sr=np.array(16000, np.int64))
    assert main(["edit", str(copy), "-o", str(tmp_path / "a.onnx"), "--bind", "sr=16000",
                 "--input", str(tmp_path / "feed.npz"), "-q"]) == 0, capsys.readouterr().err
    assert main(["edit", str(copy), "-o", str(tmp_path / "b.onnx"), "--bind", "sr=16000", "--shape", "input:1x576",
                 "--shape", "state:2x1x128", "-q"]) == 0, capsys.readouterr().err
    assert "verified: bound inputs" in capsys.readouterr().out
    assert "sr" not in [v.name for v in bushu.load(tmp_path / "b.onnx").graph.inputs]
