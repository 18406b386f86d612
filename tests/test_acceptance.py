"""The new user's contract across every command, on the real digits CNN: each command's ``--json`` is one JSON
document with its ``kind``, every ``--report`` command writes the page, the outputs of one command feed the next
(run → compare --reference, quantize → compare, all → report), and a missing model is one line and exit 2.

The per-command behaviour is tested in each command's own file; this one holds the chain together.
"""

from __future__ import annotations

import json
import re

import numpy as np
import onnx_ir as ir
import pytest

import bushu
from bushu import datasets
from bushu.cli.main import COMMANDS, main


@pytest.fixture(scope="module")
def work(digits_onnx, tmp_path_factory):
    d = tmp_path_factory.mktemp("acceptance")
    x = datasets.digits()[0]
    (d / "feeds").mkdir()
    for i in range(16):
        np.savez(d / "feeds" / f"{i:02d}.npz", input=x[i:i + 1])
    model = d / "m.onnx"
    model.write_bytes(digits_onnx.read_bytes())
    return d, model


def _json(capsys, argv: list[str], code: int | tuple[int, ...] = 0) -> dict:
    rc = main(argv)
    out, err = capsys.readouterr()
    assert rc in (code if isinstance(code, tuple) else (code,)), (argv, err[-2000:])
    doc = json.loads(out)  # one document, nothing else on stdout
    assert isinstance(doc, dict) and doc.get("kind"), doc
    return doc


def test_every_command_chains_with_json_and_reports(work, digits_onnx, capsys):
    d, m = work
    feeds, q = d / "feeds", d / "m.int8.onnx"
    docs = [
        _json(capsys, ["inspect", str(m), "--shape", "input:1x1x8x8", "--json"]),
        _json(capsys, ["run", str(m), "--input", str(feeds / "00.npz"), "--save-outputs", str(d / "golden.npz"),
                       "--json"]),
        _json(capsys, ["compare", str(m), "--reference", str(d / "golden.npz"), "--input", str(feeds / "00.npz"),
                       "--engine", "openvino", "--json", "--report", str(d / "compare.html")]),
        _json(capsys, ["optimize", str(m), "-o", str(d / "m.opt.onnx"), "--verify", "end", "--no-latency", "--json",
                       "--report", str(d / "optimize.html")]),
        _json(capsys, ["edit", str(m), "-o", str(d / "m.static.onnx"), "--shape", "input:1x1x8x8", "--json"]),
        _json(capsys, ["quantize", str(m), "-o", str(q), "--calib", str(feeds), "--no-speed", "-q", "--json",
                       "--report", str(d / "quantize.html")]),
        # the quantized model against the float one on real digits: a real check, exit 0 or 1 by its verdict
        _json(capsys, ["compare", str(m), str(q), "--input", str(feeds), "--atol", "1", "--min-cosine", "0.99",
                       "--json"]),
        _json(capsys, ["reduce", str(m), str(q), "-o", str(d / "reduced.onnx"), "--input", str(feeds / "00.npz"),
                       "--json"]),
        # its verdict (kernels account for the run within 10%) depends on the load on a 0.03 ms model: 0 or 1
        _json(capsys, ["profile", str(m), "--budget", "0.1", "--json", "--report", str(d / "profile.html")], (0, 1)),
        _json(capsys, ["bench", str(m), "--engines", "ort,openvino", "--in-process", "--warmup", "0.02", "--budget",
                       "0.05", "--json", "--report", str(d / "bench.html")]),
        _json(capsys, ["convert", str(m), "--to", "openvino", "-o", str(d / "ov"), "--json"]),
    ]
    kinds = [doc["kind"] for doc in docs]
    assert kinds == ["inspect", "run", "compare", "optimize", "edit", "quantize", "compare", "reduce", "profile",
                     "bench", "convert"]
    assert docs[2]["outputs"][0]["passed"]  # golden outputs of ORT reproduced by OpenVINO
    for name in ("compare", "optimize", "quantize", "profile", "bench"):
        assert (d / f"{name}.html").read_text(encoding="utf-8").count("<section") == 1
    paths = []
    for i, doc in enumerate(docs):
        (d / f"{i}.json").write_text(json.dumps(doc))
        paths.append(str(d / f"{i}.json"))
    report = _json(capsys, ["report", *paths, "-o", str(d / "all.html"), "--json"])
    assert report["sections"] == kinds
    assert m.read_bytes() == digits_onnx.read_bytes()  # no input was touched
    with np.load(feeds / "00.npz") as z:
        assert z.files == ["input"]


@pytest.mark.parametrize("command", [c for c in COMMANDS if c not in ("report", "demo")])
def test_a_missing_model_is_one_line_and_exit_2(command, tmp_path, capsys):
    out = str(tmp_path / "x.onnx")
    extra = {"optimize": ["-o", out], "edit": ["-o", out], "reduce": ["-o", out], "export": ["-o", out],
             "quantize": ["-o", out, "--calib", str(tmp_path)], "convert": ["--to", "openvino", "-o", str(tmp_path)],
             "compare": ["--engines", "ort,openvino"]}
    model = str(tmp_path / ("nothing.py:build" if command == "export" else "nothing.onnx"))
    rc = main([command, model, *extra.get(command, []), "-q"])
    err = capsys.readouterr().err
    assert rc == 2, (command, err)
    assert len(err.strip().splitlines()) == 1 and err.startswith(f"bushu {command}: error: ") and "nothing" in err


def test_calibration_shows_a_progress_bar_over_the_samples_on_a_terminal(work, monkeypatch):
    """Issue 4 §2: a progress bar over the calibration samples (on a terminal's stderr; none with -q)."""
    import io

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    d, m = work
    for quiet, expect in ((False, True), (True, False)):
        tty = Terminal()
        monkeypatch.setattr("sys.stderr", tty)
        argv = ["quantize", str(m), "-o", str(d / "bar.int8.onnx"), "--calib", str(d / "feeds"), "--no-speed",
                "--force", *(["-q"] if quiet else [])]
        assert main(argv) == 0
        assert (re.search(r"calibrating: +\d+%.*\d+/16", tty.getvalue()) is not None) == expect, tty.getvalue()


def test_a_rolled_back_pass_leaves_the_weights_shared_not_copied(digits_onnx, wrong_pass):
    """Issue 3: rolling back never copies weights — the output holds the input model's own tensor objects, even
    after a pass that changed results was undone."""
    wrong_pass(1.05)
    model = bushu.load(digits_onnx)
    tensors = {id(v.const_value) for v in model.graph.initializers.values()}
    out, result = bushu.optimize(model, passes="perturb-weight,dead-code", latency=False, show_progress=False)
    assert [r.name for r in result.rolled_back] == ["perturb-weight"], result.render()
    assert out.graph.initializers and all(id(v.const_value) in tensors for v in out.graph.initializers.values())
    assert len(list(model.graph)) == 20 and "perturbed" not in model.graph.initializers  # the input is untouched


@pytest.mark.parametrize("flags, check", [
    (["--per-tensor", "--samples", "5"], "per-tensor"),
    (["--budget", "maxabs<=0.05"], "maxabs"),
    (["--budget", "cosine>=0.99999"], "cosine"),
    (["--exclude", "Gemm", "--method", "percentile"], "exclude"),
    (["--method", "auto", "--budget", "snr>=35"], "fastest"),
])
def test_quantize_flags_do_what_the_issue_says(work, capsys, flags, check):
    """Issue 4's CLI flags on the real digits CNN, each checked in the saved file or the JSON result: weights per
    tensor, at most N calibration samples, built-in budgets met by keeping layers in float, op types excluded."""
    d, m = work
    out = d / f"flags-{check}.onnx"
    doc = _json(capsys, ["quantize", str(m), "-o", str(out), "--calib", str(d / "feeds"), "--no-speed", "-q",
                         "--json", "--force", *flags])
    assert doc["quantized_layers"] >= 1 and out.exists()
    acc, floats = doc["accuracy"], doc["float_layers"]
    if check == "per-tensor":
        q = bushu.load(out)
        scales = [n.inputs[1].const_value.numpy() for n in q.graph if n.op_type == "DequantizeLinear"
                  and n.inputs[0].const_value is not None and n.inputs[0].const_value.numpy().ndim >= 2]
        assert scales and all(s.size == 1 for s in scales)  # one scale per weight tensor
        assert doc["calibration_samples"] == 5
    elif check == "exclude":
        assert floats["node_linear"] == "excluded" and doc["method"] == "percentile"
    elif check == "fastest":  # two range methods meet the budget: the one kept is the faster, and it says so
        met = {s["method"] for s in doc["budget_steps"] if s["met"]}
        assert doc["budget_met"] and doc["method"] in met and len(met) == 2, doc["budget_steps"]
        assert any(n.startswith("budget met by 2 configurations; kept the fastest (" + doc["method"])
                   for n in doc["notes"]), doc["notes"]
    else:  # the budget is met, by the fewest layers left in float, and the final metric is reported
        assert doc["budget_met"] and doc["budget"] == flags[1]
        assert acc["max_abs"] <= 0.05 if check == "maxabs" else acc["cosine"] >= 0.99999
        kept = [k for k, why in floats.items() if why == "kept in float by the accuracy budget"]
        steps = doc["budget_steps"]
        assert kept and any(not s["met"] for s in steps)  # fully quantized did not meet it: layers were kept
        assert len(kept) == min(len(s["float_layers"]) for s in steps if s["met"])


def test_calibration_from_real_photos_with_a_yaml_spec_written_like_the_flags(ppocr_cls, tmp_path, capsys):
    """Issue 4 §2: a folder of images with a preprocessing spec as a small YAML file, in the flags' own forms
    (size: 48x192, std: 0.5,0.5,0.5) — it means exactly what the flags mean, and the images calibrate PP-OCR cls."""
    from PIL import Image

    from bushu.quant import ImagePreprocess

    (tmp_path / "photos").mkdir()
    for i, crop in enumerate(datasets.photo_crops(4, size=96)):
        Image.fromarray(crop).save(tmp_path / "photos" / f"{i}.png")
    spec = tmp_path / "pre.yaml"
    spec.write_text("size: 48x192\nmean: [0.5, 0.5, 0.5]\nstd: 0.5,0.5,0.5\nchannels: BGR\n")
    assert ImagePreprocess.from_yaml(spec) == ImagePreprocess(size=(48, 192), mean=(0.5,) * 3, std=(0.5,) * 3,
                                                              channels="BGR")
    doc = _json(capsys, ["quantize", str(ppocr_cls), "-o", str(tmp_path / "cls.int8.onnx"), "--calib",
                         str(tmp_path / "photos"), "--preprocess", str(spec), "--method", "minmax",
                         "--no-bias-correction", "--no-cle", "--no-speed", "-q", "--json"])
    assert doc["calibration_samples"] == 4 and doc["quantized_layers"] > 40
    assert any("upgraded from opset 11 to 13" in n for n in doc["notes"])  # §1: below 13 upgraded, and said


@pytest.mark.parametrize("command", ["optimize", "edit", "quantize", "reduce", "run", "bench"])
def test_an_output_that_cannot_be_written_is_one_line_and_exit_2(work, command, capsys):
    """-o (or --save-outputs/--csv) under a regular file: bad input, exit 2, naming the path — not an internal
    error (it was FileExistsError/FileNotFoundError, exit 3)."""
    d, m = work
    bad = str(m) + ("/out.npz" if command == "run" else "/out.onnx")  # the model file is no folder
    argv = {"optimize": ["-o", bad, "--verify", "off", "--no-latency"], "edit": ["-o", bad],
            "quantize": ["-o", bad, "--calib", str(d / "feeds"), "--no-speed", "--method", "minmax"],
            "reduce": [str(m), "-o", bad], "run": ["--save-outputs", bad],
            "bench": ["--csv", bad, "--engines", "ort", "--in-process", "--warmup", "0.01", "--budget", "0.02"]}
    if command == "reduce":  # a second model whose first Conv differs: reduce has something to write
        other = bushu.load(m)
        w = next(n for n in other.graph if n.op_type == "Conv").inputs[1]
        w.const_value = ir.tensor(w.const_value.numpy() * 1.05, name=w.name)
        bushu.save(other, d / "perturbed.onnx", force=True)
        argv["reduce"][0] = str(d / "perturbed.onnx")
    rc = main([command, str(m), *argv[command], "-q"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.startswith(f"bushu {command}: error: cannot write {bad}:") and len(err.strip().splitlines()) == 1


def test_identity_permutation_and_same_shape_flatten_are_removed():
    """Issue 3's no-op list: the two items no pass test covered (an identity Transpose permutation, a Flatten to
    the shape it already has)."""
    from test_passes_cleanup import optimize, ops

    _, after, _ = optimize("""
    g (float[2, 4] x) => (float[2, 4] y) {
      a = Transpose <perm = [0, 1]> (x)
      f = Flatten <axis = 1> (a)
      y = Relu (f)
    }""", "shape-inference", "eliminate-no-ops", "eliminate-no-op-shapes", "dead-code")
    assert ops(after) == ["Relu"] and after.graph.node(0).inputs[0] is after.graph.inputs[0]


def test_levels_basic_extended_all_as_listed(torch_zoo, tmp_path, capsys):
    """--level: basic is clean-up only (the legacy digits export keeps its 3 BatchNormalization), extended also folds
    into weights and fuses, all adds a second clean-up after the fusions — the order `optimize --list` prints."""
    from bushu.passes.pipeline import LEVELS

    src = torch_zoo("digits-cnn", legacy=True)
    docs = {level: _json(capsys, ["optimize", str(src), "-o", str(tmp_path / f"{level}.onnx"), "--level", level,
                                  "--verify", "end", "--no-latency", "--json", "-q"])
            for level in ("basic", "extended", "all")}
    assert docs["basic"]["nodes_after"]["BatchNormalization"] == 3
    assert "BatchNormalization" not in docs["extended"]["nodes_after"] and docs["extended"]["fired"]["fold-batchnorm"]
    for level, doc in docs.items():
        ran = [s["name"] for s in doc["steps"]]
        assert doc["level"] == level and set(ran) == set(LEVELS[level]), ran  # each pass of the level, no other
