"""Bad input is refused before any work, calibration memory stays flat, and the CLI is a thin shell."""

from __future__ import annotations

import json
import tracemalloc

import numpy as np
import pytest

import bushu
from bushu import datasets
from bushu.errors import BushuError
from bushu.quant import ImagePreprocess, QuantConfig, quantize
from bushu.quant.calibrate import calibrate
from bushu.quant.prepare import prepare
from bushu.quant.static import observable


@pytest.fixture(scope="module")
def digits():
    return datasets.digits()


@pytest.mark.parametrize("feed, message", [
    ({"image": np.zeros((1, 1, 8, 8), np.float32)}, "missing input"),
    ({"input": np.zeros((1, 1, 8, 8), np.float64)}, "is float64 but the model wants float32"),
    ({"input": np.zeros((1, 8, 8), np.float32)}, "has rank 3"),
    ({"input": np.zeros((1, 3, 8, 8), np.float32)}, "dim 1"),
])
def test_feeds_that_do_not_match_the_signature_are_refused(digits_onnx, feed, message):
    good = {"input": np.zeros((1, 1, 8, 8), np.float32)}
    with pytest.raises(BushuError) as e:
        quantize(digits_onnx, [good, feed], QuantConfig(progress=False, measure_speed=False))
    assert "calibration sample 1" in str(e.value) and message.split()[0] in str(e.value)


def test_any_iterable_of_feeds_calibrates(digits_onnx, digits):
    """bushu.quantize(model, data): dicts from a generator or a map, bare arrays for a single-input model, and
    tuples in the signature's order (what a DataLoader yields) all calibrate; anything else is one clear error."""
    x = digits[0][:16]
    cfg = QuantConfig(progress=False, measure_speed=False)
    model, _ = bushu.optimize(digits_onnx, latency=False, show_progress=False, verify="end")
    for data in ((({"input": x[i:i + 1]}) for i in range(16)), map(lambda a: a[None], x), [(a[None],) for a in x]):
        r = quantize(model, data, cfg)
        assert r and r.calibration_samples == 16 and r.quantized_layers >= 3, r.render()
    with pytest.raises(BushuError, match="calibration sample 0 is a str: give each feed as a mapping"):
        quantize(digits_onnx, ["x.npz"], cfg)


def test_empty_calibration_data_is_an_error(digits_onnx, tmp_path):
    with pytest.raises(BushuError, match="empty"):
        quantize(digits_onnx, [], QuantConfig(progress=False))
    with pytest.raises(BushuError, match="empty"):
        quantize(digits_onnx, tmp_path, QuantConfig(progress=False))
    with pytest.raises(BushuError, match="needs calibration data"):
        quantize(digits_onnx, None, QuantConfig(progress=False))


def test_an_already_quantized_model_is_detected(digits_onnx, digits, tmp_path):
    x_tr = digits[0]
    r = quantize(digits_onnx, [{"input": x_tr[:32]}], QuantConfig(progress=False, measure_speed=False),
                 output=tmp_path / "q.onnx")
    for mode in ("static", "dynamic", "fp16"):
        with pytest.raises(BushuError, match="already quantized.*QuantizeLinear"):
            quantize(r.saved_to, [{"input": x_tr[:32]}], QuantConfig(mode=mode, progress=False))


@pytest.mark.parametrize("kw, message", [
    (dict(mode="int3"), "unknown mode"), (dict(method="best"), "unknown calibration method"),
    (dict(engine="tpu"), "no quantization preset"), (dict(percentile=20.0), "percentile"),
    (dict(smoothquant=2.0), "SmoothQuant"), (dict(block_size=24), "block size"),
])
def test_bad_configs_are_refused(kw, message):
    with pytest.raises(BushuError, match=message):
        QuantConfig(**kw)


@pytest.mark.parametrize("budget", ["cosine<=0.9", "accuracy>=1", "snr>30", ""])
def test_bad_budgets_are_refused(digits_onnx, digits, budget):
    with pytest.raises(BushuError, match="budget"):
        quantize(digits_onnx, [{"input": digits[0][:8]}], QuantConfig(progress=False, budget=budget or "x"))


def test_calibration_memory_is_flat_in_the_number_of_samples(digits_onnx, digits):
    x_tr = digits[0]
    model, _ = prepare(bushu.load(digits_onnx))
    names = observable(model, QuantConfig())

    def feeds(n):  # a generator: the data set is never held in memory
        for i in range(n):
            yield {"input": x_tr[i % len(x_tr)][None]}

    peaks, sizes = [], []
    for n in (100, 1000):
        tracemalloc.start()
        cal = calibrate(model, names, feeds(n), show_progress=False)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        sizes.append(cal.state_bytes)
        assert cal.samples == n
    assert sizes[0] == sizes[1]
    assert peaks[1] <= peaks[0] * 1.10, peaks


def test_calibration_from_folders_of_arrays_and_images(digits_onnx, digits, tmp_path):
    x_tr = digits[0]
    npz, npy = tmp_path / "npz", tmp_path / "npy"
    npz.mkdir()
    npy.mkdir()
    for i in range(4):
        np.savez(npz / f"{i}.npz", input=x_tr[i * 8:(i + 1) * 8])
        np.save(npy / f"{i}.npy", x_tr[i * 8:(i + 1) * 8])
    for folder in (npz, npy):
        r = quantize(digits_onnx, folder, QuantConfig(progress=False, measure_speed=False))
        assert r.calibration_samples == 4
    # images: 8x8 grey digits written as PNGs and read back through a preprocessing spec given as YAML
    from PIL import Image

    img = tmp_path / "img"
    img.mkdir()
    for i in range(3):
        Image.fromarray((x_tr[i, 0] * 255).astype(np.uint8)).save(img / f"{i}.png")
    spec = tmp_path / "pre.yaml"
    spec.write_text("size: [8, 8]\nscale: 0.00392156862745098\nlayout: NCHW\n")
    pre = ImagePreprocess.from_yaml(spec)
    assert pre(np.zeros((8, 8, 3), np.uint8)).shape == (1, 3, 8, 8)
    with pytest.raises(BushuError, match="dim 1"):  # 3 colour channels, the model takes 1: refused, named
        quantize(digits_onnx, img, QuantConfig(progress=False, measure_speed=False), preprocess=pre)
    with pytest.raises(BushuError, match="preprocess"):
        quantize(digits_onnx, img, QuantConfig(progress=False, measure_speed=False))
    bad = tmp_path / "bad.yaml"
    bad.write_text("resize: 8\n")
    with pytest.raises(BushuError, match="unknown keys"):
        ImagePreprocess.from_yaml(bad)
    # the flags' own forms work in the file too (docs/quantize.md: "the same keys"), and a broken file is one line
    flags = tmp_path / "flags.yaml"
    flags.write_text("size: 48x192\nmean: 0.5,0.5,0.5\nstd: [0.5, 0.5, 0.5]\n")
    assert ImagePreprocess.from_yaml(flags) == ImagePreprocess(size=(48, 192), mean=(0.5,) * 3, std=(0.5,) * 3)
    for text, message in (("size: [48\n", "not valid YAML at line"), ("size: 48by192\n", "bad .*size"),
                          ("mean: a,b,c\n", "bad .*mean"), ("- 1\n", "key: value")):
        bad.write_text(text)
        with pytest.raises(BushuError, match=message):
            ImagePreprocess.from_yaml(bad)


def test_cli_quantizes_saves_and_reports(cli, digits_onnx, digits, tmp_path):
    x_tr, _, x_te, _ = digits
    calib = tmp_path / "calib"
    calib.mkdir()
    for i in range(4):
        np.savez(calib / f"{i}.npz", input=x_tr[i * 32:(i + 1) * 32])
    np.savez(tmp_path / "held.npz", input=x_te)
    out = tmp_path / "m.int8.onnx"
    p = cli("quantize", digits_onnx, "-o", out, "--calib", calib, "--heldout", tmp_path / "held.npz",
            "--budget", "top1-drop<=0.5", "--json", "-q")
    assert p.returncode == 0, p.stderr
    res = json.loads(p.stdout)
    assert res["kind"] == "quantize" and res["budget_met"] and res["speed"]["speedup"] > 0
    assert {n.op_type for n in bushu.load(out).graph} >= {"QuantizeLinear", "DequantizeLinear"}
    p = cli("quantize", digits_onnx, "-o", out, "--calib", calib, "--mode", "dynamic", "--no-speed")
    assert p.returncode == 0 and "dynamic for ort" in p.stdout


@pytest.mark.parametrize("args, message", [
    (["--calib", "{missing}"], "no such calibration data"),
    (["--calib", "{calib}", "--budget", "top1<=1"], "bad budget"),
    (["--calib", "{calib}", "--smoothquant", "strong"], "bad --smoothquant"),
    (["--calib", "{calib}", "--eval", "missing.py:fn", "--budget", "eval-drop<=1"], "no such file"),
    (["--calib", "{calib}", "--size", "big"], "bad --size"),
])
def test_cli_bad_input_exits_2_with_one_line(cli, digits_onnx, digits, tmp_path, args, message):
    calib = tmp_path / "calib"
    calib.mkdir()
    np.savez(calib / "0.npz", input=digits[0][:8])
    args = [a.format(calib=calib, missing=tmp_path / "missing") for a in args]
    p = cli("quantize", digits_onnx, "-o", tmp_path / "o.onnx", *args)
    assert p.returncode == 2, p.stderr
    assert message in p.stderr and len(p.stderr.strip().splitlines()) == 1


def test_cli_refuses_to_overwrite_its_input(cli, digits_onnx, tmp_path):
    model = tmp_path / "m.onnx"
    model.write_bytes(digits_onnx.read_bytes())
    p = cli("quantize", model, "-o", model, "--calib", tmp_path)
    assert p.returncode == 2 and "refusing to overwrite" in p.stderr


def test_eval_metric_budget(cli, digits_onnx, digits, tmp_path):
    x_tr, _, x_te, y_te = digits
    np.savez(tmp_path / "labels.npz", x=x_te, y=y_te)
    metric = tmp_path / "metric.py"
    metric.write_text(
        "import numpy as np\n"
        f"D = np.load({str(tmp_path / 'labels.npz')!r})\n"
        "def accuracy(run):\n"
        "    return float((run({'input': D['x']})['logits'].argmax(1) == D['y']).mean())\n")
    calib = tmp_path / "calib"
    calib.mkdir()
    np.savez(calib / "0.npz", input=x_tr[:64])
    p = cli("quantize", digits_onnx, "-o", tmp_path / "o.onnx", "--calib", calib, "--eval", f"{metric}:accuracy",
            "--budget", "eval-drop<=0.005", "--json", "-q", "--no-speed")
    assert p.returncode == 0, p.stderr
    acc = json.loads(p.stdout)["accuracy"]
    assert acc["eval_float"] > 0.95 and acc["eval_float"] - acc["eval_quantized"] <= 0.005
    p = cli("quantize", digits_onnx, "-o", tmp_path / "o.onnx", "--calib", calib, "--eval", f"{metric}:accuracy")
    assert p.returncode == 2 and "eval-drop" in p.stderr


@pytest.mark.parametrize("body, message", [
    ("def fn(run):\n    raise KeyError('logits')\n", "raised KeyError: 'logits'"),
    ("def fn(run):\n    return 'high'\n", "returned 'high': it must return a number"),
    ("def fn(run):\n    return float('nan')\n", "returned nan: it must return a finite number"),
    ("def fn(run:\n", "importing .* failed: SyntaxError"),
])
def test_a_failing_eval_function_is_the_users_error_not_an_internal_one(digits_onnx, digits, tmp_path, capsys,
                                                                          body, message):
    """--eval runs the user's code: its exception, a non-number or NaN is one line naming their function, exit 2
    (it was 'internal error … report it', exit 3; NaN silently failed the budget)."""
    import re

    from bushu.cli.main import main

    (tmp_path / "metric.py").write_text(body)
    (tmp_path / "calib").mkdir()
    np.savez(tmp_path / "calib" / "0.npz", input=digits[0][:1])
    rc = main(["quantize", str(digits_onnx), "-o", str(tmp_path / "o.onnx"), "--calib", str(tmp_path / "calib"),
               "--eval", f"{tmp_path / 'metric.py'}:fn", "--budget", "eval-drop<=0.01", "--no-speed", "-q"])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1 and re.search(message, err), err
