"""bushu profile on PP-OCR cls: kernels mapped to ONNX nodes, joined with FLOPs, trace, peaks; the mapping rules."""

from __future__ import annotations

import json

import onnx_ir as ir
import pytest

import bushu
from bushu.inspect import node_costs
from bushu.profile import ProfileResult
from bushu.profile.mapping import attribute, name_nodes


@pytest.fixture(scope="module")
def traced(ppocr_cls, tmp_path_factory):
    trace = tmp_path_factory.mktemp("trace") / "cls.trace.json"
    return bushu.profile(ppocr_cls, "ort", budget_s=0.5, trace=trace), trace


@pytest.fixture(scope="module")
def ov(ppocr_cls) -> ProfileResult:
    return bushu.profile(ppocr_cls, "openvino", budget_s=0.5)


@pytest.fixture(scope="module")
def costs(ppocr_cls):
    model = name_nodes(bushu.load(ppocr_cls))
    return {c.name: c for c in node_costs(model, {"x": (1, 3, 48, 192)}) if not c.graph}


def test_ort_kernels_cover_every_compute_node_once(traced, costs):
    r, _ = traced
    claimed = [n for row in r.rows for n in row.nodes]
    assert len(claimed) == len(set(claimed))  # no node in two kernels
    convs = {n for n, c in costs.items() if c.op_type == "Conv"}
    assert convs <= set(claimed)
    assert not r.unattributed


def test_flops_are_joined_and_rates_follow(traced, costs):
    r, _ = traced
    joined = sum(row.flops or 0 for row in r.rows)
    assert joined == sum(c.flops for c in costs.values() if c.flops)  # every FLOP lands in exactly one kernel
    assert r.total_flops == joined
    for row in r.rows:
        if row.flops and row.time_ms > 0:
            assert row.gflops_s == pytest.approx(row.flops / (row.time_ms * 1e6))
            assert row.pct_peak == pytest.approx(100 * row.gflops_s / r.peaks.gflops)
        if row.intensity is not None:
            assert row.bound == ("compute" if row.intensity >= r.peaks.ridge else "memory")
    conv = next(o for o in r.by_op if o.op_type == "Conv")
    assert conv.kernels >= 40 and conv.flops > 0.9 * joined  # a CNN: the convolutions hold the FLOPs


def test_layout_kernels_are_kept_apart(traced):
    r, _ = traced
    layout = [row for row in r.rows if row.bound == "layout"]
    assert all(not row.nodes and row.op_type.startswith("Reorder") for row in layout)


def test_times_add_up(traced):
    r, _ = traced
    assert r.kernels_ms == pytest.approx(sum(row.time_ms for row in r.rows))
    assert sum(row.time_pct for row in r.rows) == pytest.approx(100)
    assert 0.3 < r.coverage < 1.5  # per run, kernel time is most of the run (within 10 % on a quiet machine)
    # the executor's time between kernels is timed apart (ORT's Execute span minus its kernels), never hidden in them
    assert r.executor_ms is not None and r.executor_ms > 0
    assert r.coverage < r.accounted <= 1.0 + 1e-9  # kernels + executor never exceed the run's wall time
    assert bool(r) == (abs(r.accounted - 1) <= 0.10)
    names = [p[0] for p in r.parts]
    assert r.executor_label == "executor overhead (between kernels)"
    assert names == ["kernels (the per-op rows)", "executor overhead (between kernels)",
                     "outside the engine's timers (Python call, waits)"]
    assert all(ms >= 0 and 0 <= share <= 1 for _, ms, share in r.parts)
    assert r.parts[0][2] == pytest.approx(r.coverage)
    # the unprofiled latency, measured in alternation with the profiled runs: ORT's profiler costs time of its own
    assert r.latency_ms > 0 and r.profiler_slowdown == pytest.approx(r.e2e_ms / r.latency_ms)
    assert "where a profiled run goes" in r.render()


def test_trace_is_valid_chrome_trace_json(traced):
    r, path = traced
    data = json.loads(path.read_text())
    spans = [e for e in data["traceEvents"] if e["ph"] == "X" and e["tid"] == 1]
    assert len(spans) == len(r.rows)
    assert sum(e["dur"] for e in spans) == pytest.approx(r.kernels_ms * 1e3, rel=1e-3)
    assert all(spans[i]["ts"] <= spans[i + 1]["ts"] for i in range(len(spans) - 1))
    assert any(e["args"]["onnx_nodes"] for e in spans)


def test_repeat_alternates_profiled_and_plain_blocks():
    from bushu.profile.measure import repeat

    calls = []
    warm, prof, plain = repeat(lambda: calls.append("p"), warmup_s=0.0, budget_s=0.0, min_runs=7, max_runs=100,
                               plain=lambda: calls.append("u"), block=3)
    assert warm == 1 and len(prof) == 9 and len(plain) == 9  # whole blocks, at least min_runs
    # warm-up, one untimed plain call, then blocks: 3 profiled, 1 untimed + 3 timed plain
    assert "".join(calls) == "p" + "u" + ("ppp" + "uuuu") * 3


def test_openvino_layers_map_to_onnx_nodes(ov, costs):
    assert ov.engine == "openvino" and ov.rows
    # OpenVINO times layers, not the gaps: the infer request's round trip is timed on a no-layer model with the same
    # inputs and outputs, after each profiled run, and is its own part; the rest is the untimed remainder
    assert ov.executor_ms is not None and ov.executor_ms > 0 and "round trip" in ov.executor_label
    assert ov.coverage < ov.accounted
    assert [p[0] for p in ov.parts][1:] == [ov.executor_label, "outside every timer (OpenVINO between its layers, waits)"]
    assert sum(p[1] for p in ov.parts) == pytest.approx(ov.e2e_ms, rel=0.5)  # medians of parts, not of their sum
    assert ov.runs >= 30 and ov.latency_ms > 0
    named = [n for row in ov.rows for n in row.nodes]
    assert set(named) <= set(costs)
    assert sum(row.flops or 0 for row in ov.rows) > 0.9 * sum(c.flops for c in costs.values() if c.flops)


def test_peaks_are_cached(traced, tmp_path, monkeypatch):
    r, _ = traced
    assert r.peaks.gflops > 1 and r.peaks.bandwidth_gbs > 0.5
    monkeypatch.setenv("BUSHU_CACHE_DIR", str(tmp_path))
    from bushu.profile import peaks

    first = peaks()
    assert (tmp_path / "peaks.json").is_file()
    assert peaks() == first  # the second call reads the cache


def test_attribute_gives_fused_chains_to_their_kernel():
    m = ir.from_onnx_text("""<ir_version: 8, opset_import: ["": 17]>
        g (float[1,3,8,8] x, float[4,3,3,3] w) => (float[1,4,6,6] y) {
            c = Conv(x, w)  b = Relu(c)  s = Shape(b)  y = Sigmoid(b) }""")
    name_nodes(m)
    assert [n.name for n in m.graph] == ["Conv_0", "Relu_1", "Shape_2", "Sigmoid_3"]
    # kernel 0 ran Conv+Relu but names only its output's producer (Relu), as ORT's fused kernels do
    assert attribute(m, [("Relu_1",), ("Sigmoid_3",)]) == [("Conv_0", "Relu_1"), ("Sigmoid_3",)]
    assert attribute(m, [("Conv_0",), ("Relu_1",)]) == [("Conv_0",), ("Relu_1",)]


def test_cli_profile(cli, ppocr_cls, tmp_path):
    res = cli("profile", ppocr_cls, "--budget", "0.2", "--json", "--trace", tmp_path / "t.json")
    assert res.returncode in (0, 1), res.stderr  # 1: coverage outside 10 % on a busy machine
    d = json.loads(res.stdout)
    assert d["kind"] == "profile" and d["rows"] and (tmp_path / "t.json").is_file()
    bad = cli("profile", ppocr_cls, "--engine", "ncnn")
    assert bad.returncode == 2


def test_attribute_renamed_heads_follows_openvino_fusions():
    # Conv+scale, then an activation fused behind it, then the next Conv+scale: OpenVINO names only the scales
    m = ir.from_onnx_text("""<ir_version: 8, opset_import: ["": 17]>
        g (float[1,3,8,8] x, float[3,3,1,1] w, float[3,1,1] s, float[3,1,1] k) => (float[1,3,8,8] y) {
            c = Conv(x, w)  b = Mul(c, s)  a = Add(b, k)  r = Relu(a)  c2 = Conv(r, w)  y = Mul(c2, s) }""")
    name_nodes(m)
    anchors = [("Mul_1",), ("Mul_5",)]
    assert attribute(m, anchors, renamed_heads=True) == [("Conv_0", "Mul_1", "Add_2", "Relu_3"), ("Conv_4", "Mul_5")]
    assert attribute(m, anchors) == [("Conv_0", "Mul_1"), ("Add_2", "Relu_3", "Conv_4", "Mul_5")]


def test_nested_execute_spans_count_once():
    from bushu.profile.ort import _execute_us

    # a run's Execute span with an If kernel's subgraph Execute nested inside it, then a second run without spans
    assert _execute_us([(0, 100), (200, 300)], [(10, 90), (20, 50), (60, 95)]) == [85, 100]


def test_silero_if_subgraphs_are_not_counted_twice(silero_vad):
    r = bushu.profile(silero_vad, "ort", budget_s=0.2, values={"sr": 16000})
    assert r.coverage <= r.accounted <= 1.0 + 1e-9  # subgraph kernels live inside their If kernel's time


def test_openvino_counters_are_running_means_and_are_differenced(torch_zoo):
    """OpenVINO reports each layer's mean since compiling (the first run repacks weights), not the last run's time;
    the backend differences rebuilt totals over windows of timed runs, so resnet18-like's layers no longer add up to
    more than its run (1.08-1.28 of it when each reading was taken for that run's time)."""
    import numpy as np

    from bushu.engines import open_session
    from bushu.engines.base import EngineOptions
    from bushu.profile.openvino import _means, totals_us

    path = torch_zoo("resnet18-like")
    sess = open_session(str(path), "openvino", EngineOptions(profile=True, shapes={"input": (1, 3, 224, 224)}))
    feed = {"input": np.random.default_rng(0).random((1, 3, 224, 224), np.float32)}
    sess.run(feed)
    first = _means(sess.request)
    for _ in range(5):
        sess.run(feed)
    after = _means(sess.request)
    conv = max(first, key=first.get)  # the layer whose first run was the longest
    # a running mean: after 6 runs it is at most (first + 5 * steady) / 6; a last-run reading would not shrink so
    assert after[conv] < first[conv]
    assert totals_us(after, 6)[conv] >= first[conv]  # the total still holds the first run
    assert totals_us({"a": 7, "b": 0}, 4) == {"a": 29.5, "b": 0.0}  # midpoint of [28, 31]; 0 never ran

    r = bushu.profile(str(path), "openvino", budget_s=0.5)
    assert r.runs >= 30 and r.coverage <= 1.03  # layers never exceed the run they are part of
    assert 0.8 < r.accounted < 1.1
