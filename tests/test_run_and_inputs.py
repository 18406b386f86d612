"""bushu run, feed synthesis and loading, the timer, and the CLI's shared habits."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import bushu
from bushu import inputs
from bushu.engines.base import TensorSpec
from bushu.errors import BushuError
from bushu.timing import Latency, measure


def test_run_ppocr_rec_on_ort_matches_onnxruntime(ppocr_rec):
    import onnxruntime as ort

    res = bushu.run(ppocr_rec, shapes={"x": (1, 3, 48, 320)}, seed=7)
    assert res and res.outputs[0].shape == (1, 40, 6625)
    feed = inputs.synthesize([TensorSpec("x", "float32", ("b", 3, None, "w"))], shapes={"x": (1, 3, 48, 320)}, seed=7)
    want = ort.InferenceSession(str(ppocr_rec), providers=["CPUExecutionProvider"]).run(None, feed)[0]
    np.testing.assert_array_equal(next(iter(res.arrays.values())), want)
    # softmax rows sum to one: real numbers from a real model
    np.testing.assert_allclose(want.sum(-1), 1.0, rtol=1e-4)


def test_run_silero_vad_needs_its_sample_rate(silero_vad, tmp_path, cli):
    r = cli("run", silero_vad, "--value", "sr=16000", "--shape", "input:1x576", "--shape", "state:2x1x128",
            "--save-outputs", tmp_path / "out.npz", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["kind"] == "run" and {o["name"] for o in doc["outputs"]} == {"output", "stateN"}
    with np.load(tmp_path / "out.npz") as z:
        assert 0.0 <= float(z["output"].ravel()[0]) <= 1.0 and z["stateN"].shape == (2, 1, 128)


def test_run_with_saved_inputs_round_trips(ppocr_cls, tmp_path, cli):
    x = np.random.default_rng(0).random((1, 3, 48, 192), dtype=np.float32)
    np.savez(tmp_path / "feed.npz", x=x)
    r = cli("run", ppocr_cls, "--input", tmp_path / "feed.npz", "--save-outputs", tmp_path / "o.npz", "--time")
    assert r.returncode == 0, r.stderr
    assert "median" in r.stdout and "machine" in r.stdout
    np.save(tmp_path / "x.npy", x.astype(np.float64))
    r = cli("run", ppocr_cls, "--input", tmp_path / "x.npy")
    assert r.returncode == 2 and "float64 but the model wants float32" in r.stderr


def test_synthesized_integer_inputs_are_valid():
    specs = [TensorSpec("input_ids", "int64", ("batch", "seq")), TensorSpec("attention_mask", "int64", ("batch", "seq")),
             TensorSpec("token_type_ids", "int64", ("batch", "seq"))]
    feed = inputs.synthesize(specs, shapes={"batch": 2, "seq": 9}, ranges={"input_ids": (100, 200)})
    assert feed["input_ids"].shape == (2, 9) and feed["input_ids"].min() >= 100 and feed["input_ids"].max() < 200
    assert (feed["attention_mask"] == 1).all() and (feed["token_type_ids"] == 0).all()
    again = inputs.synthesize(specs, shapes={"batch": 2, "seq": 9}, ranges={"input_ids": (100, 200)})
    np.testing.assert_array_equal(feed["input_ids"], again["input_ids"])  # seeded


def test_feed_checks_name_every_mismatch():
    specs = [TensorSpec("x", "float32", (1, 3))]
    with pytest.raises(BushuError, match="missing x; unknown y"):
        inputs.check_feed({"y": np.zeros((1, 3), np.float32)}, specs)
    with pytest.raises(BushuError, match="rank 1"):
        inputs.check_feed({"x": np.zeros(3, np.float32)}, specs)
    with pytest.raises(BushuError, match=r"shape \(1, 4\)"):
        inputs.check_feed({"x": np.zeros((1, 4), np.float32)}, specs)


@pytest.mark.parametrize("bad", ["x", "x:1xA", "=3"])
def test_bad_shape_argument(bad):
    with pytest.raises(BushuError, match="--shape"):
        inputs.parse_shape_args([bad])


def test_folder_of_feeds(tmp_path):
    specs = [TensorSpec("a", "float32", (2,)), TensorSpec("b", "int64", (1,))]
    np.save(tmp_path / "a.npy", np.ones(2, np.float32))
    np.save(tmp_path / "b.npy", np.array([3]))
    (feed,) = inputs.load_feeds(tmp_path, specs)
    assert set(feed) == {"a", "b"}
    for i in range(3):
        np.savez(tmp_path / f"s{i}.npz", a=np.full(2, i, np.float32), b=np.array([i]))
    assert [int(f["b"][0]) for f in inputs.load_feeds(tmp_path, specs)] == [0, 1, 2]


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(min_value=1e-6, max_value=10, allow_nan=False), min_size=1, max_size=200))
def test_latency_quantiles_are_ordered(samples):
    lat = Latency.from_samples(samples)
    assert lat.min_ms <= lat.p10_ms <= lat.median_ms <= lat.p90_ms <= lat.p99_ms <= lat.max_ms
    assert lat.repetitions == len(samples)


def test_measure_times_each_repetition():
    import time

    lat = measure(lambda: time.sleep(0.002), warmup_s=0.01, budget_s=0.1, min_reps=5)
    assert lat.repetitions >= 5 and 1.9 <= lat.median_ms < 50


def test_measure_interleaved_alternates_blocks_and_keeps_each_side_apart():
    import time

    from bushu.timing import measure_interleaved

    calls = []
    fast = lambda: (calls.append("a"), time.sleep(0.001))  # noqa: E731
    slow = lambda: (calls.append("b"), time.sleep(0.003))  # noqa: E731
    (a, b), per_round = measure_interleaved([fast, slow], rounds=4, warmup_s=0.0, budget_s=0.08, min_reps=3)
    assert per_round.shape == (4, 2) and (per_round[:, 1] > per_round[:, 0]).all()
    assert 0.9 <= a.median_ms < b.median_ms and a.repetitions >= 12 and b.repetitions >= 12
    runs = [c for i, c in enumerate(calls) if i == 0 or calls[i - 1] != c]  # consecutive calls of one side merged
    # warm-up a, b; then rounds a b | b a | a b | b a: 7 runs (always a-then-b would make 10)
    assert runs == ["a", "b", "a", "b", "a", "b", "a"]


def test_cli_version_and_examples_in_help(cli):
    r = cli("--version")
    assert r.returncode == 0 and r.stdout.startswith("bushu ")
    r = cli("run", "--help")
    assert r.returncode == 0 and "examples:" in r.stdout
    r = cli("run", "model.onnx", "--engine", "nope")
    assert r.returncode == 2 and "unknown engine 'nope'" in r.stderr


def test_every_command_has_help_with_examples(cli):
    from bushu.cli.main import COMMANDS

    top = cli("--help")
    assert top.returncode == 0, top.stderr
    for name in COMMANDS:
        assert name in top.stdout
        sub = cli(name, "--help")
        assert sub.returncode == 0 and "examples:" in sub.stdout, (name, sub.stderr)


def test_save_outputs_never_replaces_an_input(digits_onnx, tmp_path, capsys):
    from bushu.cli.main import main

    feeds = tmp_path / "feeds"
    feeds.mkdir()
    x = np.random.default_rng(0).random((1, 1, 8, 8), dtype=np.float32)
    np.savez(feeds / "0.npz", input=x)
    # the input file itself, a new file in the input folder (read as a feed next time), the model: refused before running
    assert main(["run", str(digits_onnx), "--input", str(feeds / "0.npz"), "--save-outputs", str(feeds / "0.npz")]) == 2
    assert "refusing to overwrite the input" in capsys.readouterr().err
    assert main(["run", str(digits_onnx), "--input", str(feeds), "--save-outputs", str(feeds / "out.npz")]) == 2
    assert "input folder" in capsys.readouterr().err and not (feeds / "out.npz").exists()
    with np.load(feeds / "0.npz") as z:
        assert z.files == ["input"]
        np.testing.assert_array_equal(z["input"], x)
    assert main(["run", str(digits_onnx), "--input", str(feeds / "0.npz"), "--save-outputs", str(feeds / "0.npz"),
                 "--force", "-q"]) == 0
    with np.load(feeds / "0.npz") as z:
        assert z.files == ["logits"]


def test_a_zoo_models_file_runs_without_its_extra_flags(silero_vad):
    # silero VAD needs sr=16000 and a 2x1x128 state: the zoo records them, so `bushu run silero_vad.onnx` works
    res = bushu.run(silero_vad)
    by_name = {t.name: t for t in res.inputs}
    assert res and by_name["sr"].min == 16000 and by_name["state"].shape == (2, 1, 128)
    mine = {t.name: t for t in bushu.run(silero_vad, values={"sr": 8000}, shapes={"input": (1, 288)}).inputs}
    assert mine["sr"].min == 8000 and mine["input"].shape == (1, 288)  # the user's own values win


def test_unknown_arguments_are_named_by_their_subcommand(capsys):
    from bushu.cli.main import main

    with pytest.raises(SystemExit) as e:
        main(["compare", "a.onnx", "b.onnx", "c.onnx"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("bushu compare: error: unrecognized arguments: c.onnx")
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("argv", [["bench", "{m}", "--csv", "{m}"], ["profile", "{m}", "--trace", "{m}"]])
def test_bench_csv_and_profile_trace_never_replace_the_model(argv, digits_onnx, tmp_path, capsys):
    from bushu.cli.main import main

    model = tmp_path / "m.onnx"
    model.write_bytes(digits_onnx.read_bytes())
    assert main([a.format(m=model) for a in argv]) == 2
    assert "refusing to overwrite the input" in capsys.readouterr().err
    assert model.read_bytes() == digits_onnx.read_bytes()


def test_busy_ticks_on_a_terminal_and_is_silent_otherwise(monkeypatch):
    import io
    import time

    from bushu.progress import busy

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    tty = Terminal()
    monkeypatch.setattr("sys.stderr", tty)
    with busy("converting to ncnn", tick_s=0.05):
        time.sleep(0.3)
    frames = [f for f in tty.getvalue().replace("\r", "\n").splitlines() if f.strip()]
    assert sum("converting to ncnn … 00:00" in f for f in frames) >= 3  # it ticked while the call ran
    pipe = io.StringIO()  # not a terminal (a log file, CI): nothing at all
    monkeypatch.setattr("sys.stderr", pipe)
    with busy("converting to ncnn", tick_s=0.05):
        time.sleep(0.1)
    assert pipe.getvalue() == ""


def test_a_run_failing_on_synthesized_feeds_says_how_to_give_them(silero_vad, tmp_path, cli):
    """A copy of silero VAD outside the zoo: its signature doesn't say the 576-sample window, the run fails in the
    model, and the one line says the inputs were synthesized and how to give them; with them it runs."""
    vad = tmp_path / "vad.onnx"
    vad.write_bytes(silero_vad.read_bytes())
    r = cli("run", vad)
    assert r.returncode == 2 and "synthesized from the model's signature" in r.stderr and "--shape" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    r = cli("run", vad, "--shape", "input:1x576", "--shape", "state:2x1x128", "--value", "sr=16000")
    assert r.returncode == 0, r.stderr
