"""bushu export on real models (the digits CNN trained here, all-MiniLM-L6-v2 from its wheel) and on small modules
built to defeat the exporters: a Python branch on the input's shape (exports, but is not faithful), a branch on
its values (the dynamo exporter fails, TorchScript takes over), and operators ONNX has no translation for."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import bushu  # noqa: E402
from bushu.cli.main import main  # noqa: E402
from bushu.errors import BushuError  # noqa: E402
from bushu.export import load_factory  # noqa: E402

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


# ------------------------------------------------------------------ modules that defeat exporters


class ShapeBranch(torch.nn.Module):
    """Doubles its output from batch 3 on: a trace (or torch.export with an unbounded batch) keeps one side."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 4)

    def forward(self, x):
        y = self.lin(x)
        if x.shape[0] > 2:
            return y * 2
        return y


class ValueBranch(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 4)

    def forward(self, x):
        y = self.lin(x)
        if y.sum() > 0:
            return y * 2
        return y


class Spectrum(torch.nn.Module):
    def forward(self, x):
        return torch.linalg.eigh(x @ x.transpose(-1, -2))[0]


class EighNet(torch.nn.Module):
    """linalg_eigh has no ONNX translation in either exporter."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 4)
        self.spectrum = Spectrum()

    def forward(self, x):
        return self.spectrum(self.lin(x))


class Fold(torch.nn.Module):
    """aten::col2im has a TorchScript symbolic from opset 18 only."""

    def forward(self, x):
        return torch.nn.functional.fold(x, (4, 4), (2, 2))


# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope="session")
def digits():
    from bushu.zoo_torch import digits_cnn

    return digits_cnn(seed=0)


@pytest.fixture(scope="session")
def minilm(tmp_path_factory):
    """The MiniLM example factory exported once: (module, example inputs, result)."""
    module, example, dynamic = load_factory(f"{EXAMPLES / 'export_minilm.py'}:factory")
    out = tmp_path_factory.mktemp("minilm") / "minilm.onnx"
    result = bushu.export(module, example, output=out, dynamic_shapes=dynamic,
                          output_names=["last_hidden_state", "sentence_embedding"], show_progress=False)
    return module, example, result


def _ort(path):
    return bushu.open_session(str(path), "ort")


# ------------------------------------------------------------------ real models


def test_minilm_export_is_faithful_on_dynamic_batch_and_sequence(minilm):
    module, example, result = minilm
    assert result, result.render()
    assert result.exporter == "dynamo" and result.fallback_reason is None
    assert [s.shape for s in result.inputs] == [("batch", "sequence")] * 3
    assert [o.shape for o in result.outputs] == [("batch", "sequence", 384), ("batch", 384)]
    # example + two fresh sizes, both larger than the example along batch and sequence
    batch, seq = example[0].shape
    assert len(result.verification) == 3
    for case in result.verification[1:]:
        b, s = case.shapes["input_ids"]
        assert b > batch and s > seq
        assert case.outputs[0].cosine > 0.9999


def test_minilm_onnx_embeds_new_sentences_like_pytorch(minilm):
    from bushu.zoo_torch import minilm_tokenizer

    module, _, result = minilm
    sentences = ["The cat sits on the mat.", "A cat is sitting on a mat.", "Quarterly revenue rose by 4%.",
                 "Exporting to ONNX keeps the sentence embeddings unchanged, even for this longer sentence."]
    enc = minilm_tokenizer()(sentences, padding=True, return_tensors="np")
    feeds = {k: enc[k].astype(np.int64) for k in ("input_ids", "attention_mask", "token_type_ids")}
    onnx_emb = _ort(result.path).run(feeds)["sentence_embedding"]
    with torch.no_grad():
        torch_emb = module(*(torch.from_numpy(feeds[k]) for k in feeds))[1].numpy()
    assert onnx_emb.shape == (4, 384)
    np.testing.assert_allclose(onnx_emb, torch_emb, atol=1e-5)
    sim = onnx_emb @ onnx_emb.T
    assert sim[0, 1] > 0.8 > sim[0, 2]  # the paraphrase is close, the unrelated sentence is not


def test_digits_cnn_with_dynamic_batch_classifies_like_pytorch(digits, tmp_path):
    module, (_, _, x_test, y_test) = digits
    result = bushu.export(module, torch.from_numpy(x_test[:2]), output=tmp_path / "digits.onnx", dynamic_batch=True,
                          output_names=["logits"], show_progress=False)
    assert result, result.render()
    assert result.exporter == "dynamo"
    assert result.inputs[0].shape == ("batch", 1, 8, 8)
    assert [c.shapes["x"][0] for c in result.verification] == [2, 3, 5]
    logits = _ort(result.path).run({"x": x_test})["logits"]
    with torch.no_grad():
        expected = module(torch.from_numpy(x_test)).numpy()
    assert (logits.argmax(1) == expected.argmax(1)).all()
    assert (logits.argmax(1) == y_test).mean() > 0.9


def test_digits_cnn_torchscript_exporter_at_opset_13(digits):
    module, (_, _, x_test, _) = digits
    result = bushu.export(module, torch.from_numpy(x_test[:1]), exporter="torchscript", opset=13,
                          dynamic_batch=True, show_progress=False)
    assert result, result.render()
    assert (result.exporter, result.opset, result.path) == ("torchscript", 13, None)
    assert result.model.opset_imports[""] == 13


def test_external_data_and_sizes_pytorch_itself_rejects(tmp_path):
    class Positions(torch.nn.Module):
        """Positions up to 8 only: the fresh size 2*4+1 = 9 fails in PyTorch itself, 5 works."""

        def __init__(self):
            super().__init__()
            self.pos = torch.nn.Embedding(8, 16)

        def forward(self, x):
            return x + self.pos(torch.arange(x.shape[1]))

    torch.manual_seed(0)
    out = tmp_path / "pos.onnx"
    result = bushu.export(Positions(), torch.randn(1, 4, 16), output=out, dynamic_shapes={"x": {1: "sequence"}},
                          external_data=True, show_progress=False)
    assert (tmp_path / "pos.onnx.data").is_file()
    assert result, result.render()
    example, five, nine = result.verification
    assert five.shapes["x"] == (1, 5, 16) and five.outputs and not five.skipped
    assert nine.skipped and "PyTorch itself fails" in nine.skipped and not nine.outputs
    assert "faithful on 2 input set(s)" in str(result)


# ------------------------------------------------------------------ faithfulness and fallback


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_export_frozen_at_example_shape_is_not_faithful(exporter):
    torch.manual_seed(0)
    result = bushu.export(ShapeBranch(), torch.randn(2, 4), dynamic_batch=True, exporter=exporter,
                          show_progress=False)
    assert not result
    example, *fresh = result.verification
    assert example and fresh and not any(fresh)
    assert fresh[0].outputs[0].max_abs > 0.1
    assert "NOT faithful" in str(result) and "batch=3" in str(result)


def test_value_branch_falls_back_to_torchscript_and_says_why():
    torch.manual_seed(0)
    result = bushu.export(ValueBranch(), torch.randn(2, 4), dynamic_batch=True, show_progress=False)
    assert result.exporter == "torchscript"
    assert "tensor's values" in result.fallback_reason and "ValueBranch" in result.fallback_reason
    assert "y.sum() > 0" in result.fallback_reason
    assert any("TracerWarning" in n for n in result.notes)


# ------------------------------------------------------------------ failures


def test_unsupported_operator_names_op_and_module():
    torch.manual_seed(0)
    with pytest.raises(BushuError) as e:
        bushu.export(EighNet(), torch.randn(2, 4, 4), show_progress=False)
    msg = str(e.value)
    assert "\n" not in msg
    assert "aten::linalg_eigh has no ONNX translation in the dynamo or the torchscript exporter" in msg
    assert "spectrum (Spectrum) at test_export.py" in msg and "custom_translation_table" in msg


def test_operator_from_a_later_opset_suggests_the_opset():
    x = torch.randn(1, 4, 9)
    with pytest.raises(BushuError, match=r"aten::col2im has no ONNX symbolic at opset 17.*--opset 18"):
        bushu.export(Fold(), x, exporter="torchscript", show_progress=False)
    assert bushu.export(Fold(), x, exporter="torchscript", opset=18, show_progress=False)


def test_bad_arguments_are_refused_before_export():
    lin = torch.nn.Linear(4, 4)
    with pytest.raises(BushuError, match="unknown exporter"):
        bushu.export(lin, torch.randn(1, 4), exporter="onnx")
    with pytest.raises(BushuError, match="not an input"):
        bushu.export(lin, torch.randn(1, 4), dynamic_shapes={"y": [0]})
    with pytest.raises(BushuError, match="not a tensor"):
        bushu.export(lin, ([1.0, 2.0],))
    with pytest.raises(BushuError, match="fails on the example inputs"):
        bushu.export(lin, torch.randn(1, 3))


# ------------------------------------------------------------------ CLI


def _write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


def test_cli_exports_digits_example_with_json(digits, tmp_path, capsys):
    out = tmp_path / "digits.onnx"
    rc = main(["export", f"{EXAMPLES / 'digits_cnn.py'}:factory", "-o", str(out), "--dynamic-batch",
               "--output-names", "logits", "--json", "-q"])
    report = json.loads(capsys.readouterr().out)
    assert rc == 0, report
    assert report["kind"] == "export" and report["exporter"] == "dynamo" and report["path"] == str(out)
    assert [c["label"] for c in report["verification"]] == ["example", "batch=2", "batch=3"]
    assert all(o["passed"] for c in report["verification"] for o in c["outputs"])
    assert bushu.load(out).graph.outputs[0].name == "logits"


def test_cli_not_faithful_exits_1(tmp_path, capsys):
    f = _write(tmp_path / "net.py", """
        import torch
        class Net(torch.nn.Module):
            def forward(self, x):
                return x * 2 if x.shape[0] > 2 else x
        def build():
            return Net()
    """)
    rc = main(["export", f"{f}:build", "-o", str(tmp_path / "n.onnx"), "--shape", "x:2x4", "--dynamic", "x:0", "-q"])
    assert rc == 1
    assert "NOT faithful" in capsys.readouterr().out


def test_cli_failed_export_is_one_line_exit_2(tmp_path, capsys):
    f = _write(tmp_path / "eig.py", """
        import torch
        class Eig(torch.nn.Module):
            def forward(self, x):
                return torch.linalg.eigh(x)[0]
        def factory():
            return Eig(), (torch.eye(3)[None],)
    """)
    rc = main(["export", f"{f}:factory", "-o", str(tmp_path / "e.onnx")])
    captured = capsys.readouterr()
    assert rc == 2
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "aten::linalg_eigh" in lines[0] and "eig.py:5" in lines[0]
    assert "Traceback" not in captured.err + captured.out


@pytest.mark.parametrize("spec, message", [
    ("missing.py:factory", "no such file"),
    ("{dir}/net.py", "not FILE.py:FUNCTION"),
    ("{dir}/net.py:nope", "has no function 'nope' (it defines broken, build, raises)"),
    ("{dir}/net.py:broken", "returned a int"),
    ("{dir}/net.py:raises", "ValueError: no weights here at net.py:9"),
])
def test_cli_bad_factory_exits_2(tmp_path, capsys, spec, message):
    _write(tmp_path / "net.py", """
        import torch
        def build():
            return torch.nn.Linear(4, 2)
        def broken():
            return 3
        def raises():
            if True:
                raise ValueError("no weights here")
    """)
    rc = main(["export", spec.format(dir=tmp_path), "-o", str(tmp_path / "x.onnx"), "--shape", "input:1x4"])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1


def test_cli_loads_weights_only_checkpoint(tmp_path, capsys):
    f = _write(tmp_path / "small.py", """
        import torch
        def build():
            torch.manual_seed(1)
            return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                                       torch.nn.Linear(4 * 6 * 6, 3))
    """)
    import importlib.util

    spec = importlib.util.spec_from_file_location("small_for_ckpt", f)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    trained = mod.build()
    with torch.no_grad():
        for p in trained.parameters():
            p.mul_(-1.5)  # other weights than build() gives
    torch.save(trained.state_dict(), tmp_path / "ckpt.pt")
    out = tmp_path / "small.onnx"
    rc = main(["export", f"{f}:build", "-o", str(out), "--weights", str(tmp_path / "ckpt.pt"),
               "--shape", "input:2x1x8x8", "--dynamic-batch", "-q"])
    assert rc == 0, capsys.readouterr()
    x = np.random.default_rng(0).standard_normal((3, 1, 8, 8)).astype(np.float32)
    got = next(iter(_ort(out).run({"input": x}).values()))
    with torch.no_grad():
        np.testing.assert_allclose(got, trained(torch.from_numpy(x)).numpy(), atol=1e-5)

    # a checkpoint that needs arbitrary unpickling is refused, not executed
    torch.save({"model": trained, "note": object.__new__(ShapeBranch)}, tmp_path / "pickled.pt")
    rc = main(["export", f"{f}:build", "-o", str(out), "--weights", str(tmp_path / "pickled.pt"),
               "--shape", "input:1x1x8x8"])
    err = capsys.readouterr().err
    assert rc == 2 and "refused" in err and "state_dict" in err
    # -o onto the checkpoint is refused without --force
    rc = main(["export", f"{f}:build", "-o", str(tmp_path / "ckpt.pt"), "--weights", str(tmp_path / "ckpt.pt"),
               "--shape", "input:1x1x8x8"])
    assert rc == 2 and "refusing to overwrite" in capsys.readouterr().err


def test_parse_dynamic_names_axes_once_for_several_inputs():
    from bushu.cli.export_cmd import parse_dynamic

    assert parse_dynamic(["x:0,2"]) == {"x": [0, 2]}
    assert parse_dynamic(["ids,mask:0=batch,1=sequence"]) == {"ids": {0: "batch", 1: "sequence"},
                                                              "mask": {0: "batch", 1: "sequence"}}
    with pytest.raises(BushuError, match="bad --dynamic"):
        parse_dynamic(["x:zero"])


def test_damaged_checkpoint_is_not_called_unsafe(tmp_path):
    from bushu.export.factory import load_weights

    module = torch.nn.Linear(2, 2)
    (tmp_path / "damaged.pt").write_bytes(b"xx")  # not a pickle at all: damaged, not dangerous
    with pytest.raises(BushuError) as e:
        load_weights(module, tmp_path / "damaged.pt")
    assert "is not a torch checkpoint" in str(e.value) and "arbitrary code" not in str(e.value)
    torch.save(module, tmp_path / "whole.pt")  # a pickled module: named, and refused as code
    with pytest.raises(BushuError) as e:
        load_weights(module, tmp_path / "whole.pt")
    msg = str(e.value)
    assert "it pickles torch.nn.modules.linear.Linear" in msg and "arbitrary code" in msg and "\x1b" not in msg
