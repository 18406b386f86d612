"""End to end on the real models: fewer nodes, same outputs, checker-clean, idempotent, deterministic; rollback of
a bad pass; bad input; external data; the CLI."""

from __future__ import annotations

import inspect
import json

import numpy as np
import onnx
import pytest

import bushu
import bushu.zoo
from bushu import ir as bir
from bushu.passes import registry
from bushu.passes.verify import make_feeds, run_ort

ZOO = ["ppocr-det", "ppocr-rec", "ppocr-cls", "silero-vad"]


@pytest.fixture(scope="module")
def optimized(tmp_path_factory, ppocr_det, ppocr_rec, ppocr_cls, silero_vad, torch_zoo):
    """name -> (source path, output path, result), optimized once with the defaults (verify each)."""
    out = tmp_path_factory.mktemp("optimized")
    sources = {"ppocr-det": ppocr_det, "ppocr-rec": ppocr_rec, "ppocr-cls": ppocr_cls, "silero-vad": silero_vad,
               "minilm-legacy": torch_zoo("minilm", legacy=True)}
    done = {}
    for name, src in sources.items():
        _, result = bushu.optimize(src, out / f"{name}.onnx", samples=2, latency=False, show_progress=False)
        done[name] = (src, out / f"{name}.onnx", result)
    return done


@pytest.mark.parametrize("name", [*ZOO, "minilm-legacy"])
def test_fewer_nodes_same_outputs_checker_clean(optimized, name):
    src, out, result = optimized[name]
    assert result, result.render()
    assert not result.rolled_back, result.render()
    assert sum(result.nodes_after.values()) < 0.8 * sum(result.nodes_before.values())
    onnx.checker.check_model(str(out), full_check=True)
    a, b = bushu.load(src), bushu.load(out)
    feeds = make_feeds(a, samples=1, seed=123)  # a sample the verification did not use
    (ref,), (got,) = run_ort(a, feeds), run_ort(b, feeds)
    for k in ref:
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ZOO)
def test_idempotent(optimized, name, tmp_path):
    _, out, _ = optimized[name]
    again = tmp_path / "again.onnx"
    extra = bushu.zoo.MODELS[name]  # the output is no zoo file: give the inputs the zoo records (silero's sr)
    _, result = bushu.optimize(out, again, verify="end", latency=False, show_progress=False, shapes=extra.shapes,
                               values=extra.values)
    assert result.nodes_after == result.nodes_before
    assert not result.fired, result.render()  # every pass ran and changed nothing: the output is the input file
    assert "no pass changed the model: the output is the input file" in " ".join(result.notes)
    assert again.read_bytes() == out.read_bytes()


@pytest.mark.parametrize("name", ["ppocr-cls", "silero-vad"])
def test_deterministic(optimized, name, tmp_path):
    src, out, _ = optimized[name]
    _, _ = bushu.optimize(src, tmp_path / "b.onnx", samples=2, latency=False, show_progress=False)
    assert (tmp_path / "b.onnx").read_bytes() == out.read_bytes()


def test_dynamic_dims_survive(optimized):
    _, out, _ = optimized["ppocr-det"]
    dims = bushu.load(out).graph.inputs[0].shape
    assert [str(d) for d in dims][0].startswith("p2o.DynamicDimension")
    _, out, _ = optimized["minilm-legacy"]
    assert [str(d) for d in bushu.load(out).graph.inputs[0].shape] == ["batch", "sequence"]


def test_a_wrong_pass_is_rolled_back_and_named(wrong_pass, ppocr_cls):
    wrong_pass(1.01)  # the first Conv's weight scaled: a 'fold' that changes the results
    out, result = bushu.optimize(ppocr_cls, passes="lift-constants,perturb-weight,fold-batchnorm", latency=False,
                                 show_progress=False)
    assert result, result.render()  # the output is still right: the bad pass was undone
    [bad] = result.rolled_back
    assert bad.name == "perturb-weight" and "FAIL" in bad.reason
    assert bad.divergence and "Conv" in bad.divergence, bad.divergence
    assert "perturbed" not in out.graph.initializers
    assert result.fired.get("fold-batchnorm", 0) == 35  # the pipeline went on
    assert "rolled back perturb-weight" in result.render()


def test_checker_rejected_model_needs_allow_invalid(tmp_path):
    bad = onnx.helper.make_model(onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["x"], ["i"]), onnx.helper.make_node("Concat", ["i", "x"], ["y"])], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [4])]),  # Concat without its axis
        opset_imports=[onnx.helper.make_opsetid("", 17)])
    path = tmp_path / "bad.onnx"
    onnx.save(bad, path)
    with pytest.raises(bushu.BushuError, match="fails onnx.checker.*--allow-invalid"):
        bushu.optimize(path, latency=False)
    out, result = bushu.optimize(path, allow_invalid=True, verify="off", latency=False, show_progress=False)
    assert [n.op_type for n in out.graph] == ["Concat"]


def test_allow_invalid_names_a_dangling_tensor(tmp_path, cli):
    model = onnx.helper.make_model(onnx.helper.make_graph(
        [onnx.helper.make_node("Add", ["x", "nope"], ["y"])], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2])]),
        opset_imports=[onnx.helper.make_opsetid("", 17)])
    onnx.save(model, tmp_path / "dangling.onnx")
    r = cli("optimize", str(tmp_path / "dangling.onnx"), "-o", str(tmp_path / "out.onnx"), "--allow-invalid")
    assert r.returncode == 2 and "reads 'nope', which no node, input or initializer defines" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "out.onnx").exists()


def test_external_data_mechanism(monkeypatch, tmp_path, ppocr_cls):
    import bushu.ir as bir

    monkeypatch.setattr(bir, "EXTERNAL_DATA_THRESHOLD", 100_000)  # stands in for protobuf's 2 GB limit
    src = tmp_path / "ext.onnx"
    bir.save(bir.load(ppocr_cls), src, external_data=True)
    assert (tmp_path / "ext.onnx.data").exists()
    out = tmp_path / "out.onnx"
    _, result = bushu.optimize(src, out, verify="end", latency=False, show_progress=False)
    assert result, result.render()
    assert (tmp_path / "out.onnx.data").stat().st_size > 100_000
    assert out.stat().st_size < 100_000  # the weights went to the data file
    feeds = make_feeds(bir.load(ppocr_cls), samples=1)
    (ref,), (got,) = run_ort(bir.load(ppocr_cls), feeds), run_ort(bir.load(out), feeds)
    np.testing.assert_allclose(got["softmax_0.tmp_0"] if "softmax_0.tmp_0" in got else next(iter(got.values())),
                               ref["softmax_0.tmp_0"] if "softmax_0.tmp_0" in ref else next(iter(ref.values())),
                               rtol=1e-4, atol=1e-5)


def test_output_runs_on_openvino(optimized):
    from bushu import engines

    if "openvino" not in engines.available():
        pytest.skip("openvino not installed")
    src, out, _ = optimized["ppocr-rec"]
    a = bushu.load(src)
    feed = make_feeds(a, samples=1)[0]
    ref = engines.open_session(a, "openvino").run(feed)
    got = engines.open_session(bushu.load(out), "openvino").run(feed)
    for k in ref:
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-3, atol=1e-4)


def test_cli(cli, ppocr_cls, tmp_path):
    out = tmp_path / "cls.onnx"
    r = cli("optimize", ppocr_cls, "-o", out, "--json", "-q", "--no-latency", "--verify", "end")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["kind"] == "optimize" and data["fired"]["fold-batchnorm"] == 35 and out.exists()
    r = cli("optimize", ppocr_cls, "-o", tmp_path / "x.onnx", "--passes", "nope")
    assert r.returncode == 2 and "unknown pass 'nope'" in r.stderr and "fold-constants" in r.stderr
    r = cli("optimize", out, "-o", out, "--no-latency")
    assert r.returncode == 2 and "--force" in r.stderr
    r = cli("optimize", "--list")
    assert r.returncode == 0 and "fuse-layernorm" in r.stdout and "extended:" in r.stdout


def test_shape_fixes_dims_in_the_output(optimized, tmp_path):
    src, _, dynamic = optimized["ppocr-rec"]
    out = tmp_path / "static.onnx"
    _, result = bushu.optimize(src, out, static_shapes={"x": (1, 3, 48, 320)}, verify="end", latency=False,
                               show_progress=False)
    assert result, result.render()
    assert list(bushu.load(out).graph.inputs[0].shape) == [1, 3, 48, 320]
    assert "--shape: x -> 1x3x48x320" in result.notes
    assert sum(result.nodes_after.values()) < sum(dynamic.nodes_after.values())  # static dims let more fold


def test_a_pass_reruns_only_after_a_change(optimized):
    """The fixed point skips a pass that changed nothing when no pass has changed the model since."""
    for name, (_, _, result) in optimized.items():
        clean_since: dict[str, bool] = {}  # pass -> no kept step since its last clean run
        for step in result.steps:
            assert not clean_since.get(step.name), f"{name}: {step.name} reran on an unchanged model"
            if step.status == "kept":
                clean_since = dict.fromkeys(clean_since, False)
            clean_since[step.name] = step.status == "unchanged"


def test_every_fusion_rule_is_gated_on_its_root_op():
    """apply_rules tries a rule only at nodes of its root op type: every commuted variant must have one."""
    from bushu.fusions import base
    from bushu.passes._rules import root_op

    registry.known()
    classes, todo = [], [base.Fusion]
    while todo:
        todo.extend(subs := todo.pop().__subclasses__())
        classes += [c for c in subs if not inspect.isabstract(c)]
    rules = [cls.rule(base.Tally()) for cls in classes]
    assert len(rules) >= 7
    for rule in rules:
        for variant in rule.commute():
            assert root_op(variant), rule.name


def test_output_check_without_its_weights_still_sees_their_types_and_shapes():
    """The output's checker run leaves the large weights out (to_chunks wrote them from their arrays; they are
    declared as inputs of their type and shape): a valid model passes, and a weight whose shape doesn't fit its
    MatMul still fails the full check."""
    from bushu.passes.verify import STRIP_BYTES, check_written

    def model(rows):
        w = onnx.numpy_helper.from_array(np.ones((rows, 64), np.float32), "w")
        assert w.ByteSize() > STRIP_BYTES
        return bir.ir.serde.deserialize_model(onnx.helper.make_model(onnx.helper.make_graph(
            [onnx.helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
            [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 64])],
            [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 64])], [w]),
            opset_imports=[onnx.helper.make_opsetid("", 17)]))

    (_, good, good_w), (_, bad, bad_w) = (bir.to_chunks(model(n), STRIP_BYTES) for n in (64, 32))
    assert not good.graph.initializer and good_w == {"w": (onnx.TensorProto.FLOAT, [64, 64])}
    assert check_written(good, good_w) is None
    assert "Incompatible dimensions" in (check_written(bad, bad_w) or ""), check_written(bad, bad_w)


def test_verify_end_catches_a_wrong_pass_with_the_reference_run_beside_the_passes(monkeypatch, wrong_pass, ppocr_cls):
    """--verify end: the original runs on ORT in a thread once the first pass changed the model (beside the passes),
    the output in that thread too, from the written file (while the main thread runs the checker); a pass that
    changed the results makes the result falsy, named by output."""
    import threading

    from bushu.passes import verify

    wrong_pass(1.01)
    runs = []
    real = verify.run_ort

    def spy(model, feeds, threads=2):
        runs.append((threading.current_thread() is threading.main_thread(), threads, len(feeds), type(model)))
        return real(model, feeds, threads)

    monkeypatch.setattr(verify, "run_ort", spy)
    _, result = bushu.optimize(ppocr_cls, passes="lift-constants,perturb-weight", verify="end", latency=False,
                               show_progress=False)
    assert not result and result.verify_error and "FAIL" in result.verify_error, result.render()
    # the reference beside the passes (the input file), then the written output beside the checker; one feed each
    # (--verify end, no If/Loop/Scan)
    assert runs == [(False, verify.PREFETCH_THREADS, 1, str), (False, 2, 1, str)]


def test_default_samples(ppocr_cls, silero_vad):
    from bushu.passes import default_samples

    assert default_samples(bushu.load(ppocr_cls), "end") == 1
    assert default_samples(bushu.load(ppocr_cls), "each") == 3
    assert default_samples(bushu.load(silero_vad), "end") == 3  # If bodies: feeds may take different branches


@pytest.mark.parametrize("flag, says", [(("--samples", "0"), "--samples 0"), (("--fold-limit", "-1"), "--fold-limit -1")])
def test_optimize_refuses_a_verification_without_feeds_and_a_negative_fold_limit(digits_onnx, tmp_path, cli, flag,
                                                                                  says):
    """--samples 0 verified nothing and reported success; a negative fold limit silently disabled folding."""
    r = cli("optimize", digits_onnx, "-o", tmp_path / "o.onnx", "--no-latency", *flag)
    assert r.returncode == 2 and says in r.stderr and not (tmp_path / "o.onnx").exists(), r.stderr
