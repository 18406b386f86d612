"""bushu bench on PP-OCR cls: schema, arithmetic between fields, static batch dims, failing engines, CSV, CLI."""

from __future__ import annotations

import csv
import io
import json

import onnx
import pytest

import bushu
from bushu.bench import BenchResult
from bushu.bench.result import CSV_FIELDS
from bushu.bench.worker import batch_shapes
from bushu.engines.base import TensorSpec


@pytest.fixture(scope="module")
def result(ppocr_cls) -> BenchResult:
    """ORT and MNN at batch 1 and 2, each model × engine in its own process (the default)."""
    return bushu.bench(ppocr_cls, engines=("ort", "mnn"), batch=(1, 2), warmup_s=0.1, budget_s=0.3,
                       show_progress=False)


def test_rows_cover_every_engine_and_batch(result):
    assert result, result.render()
    assert [(r.engine, r.batch) for r in result.rows] == [("ort", 1), ("ort", 2), ("mnn", 1), ("mnn", 2)]
    assert all(r.status == "ok" for r in result.rows)


def test_latency_fields_are_consistent(result):
    for r in result.rows:
        assert 0 < r.min_ms <= r.median_ms <= r.p90_ms <= r.p99_ms
        assert r.repetitions >= 10
        assert r.items_per_s == pytest.approx(r.batch * 1e3 / r.median_ms)
        assert r.load_s > 0
        assert r.peak_mem_mib is not None and r.peak_mem_mib > 0  # a session holds weights and buffers


def test_speedups_are_relative_to_the_first_engine(result):
    by = {(r.engine, r.batch): r for r in result.rows}
    for b in (1, 2):
        assert by[("ort", b)].speedup == 1.0
        assert by[("mnn", b)].speedup == pytest.approx(by[("ort", b)].median_ms / by[("mnn", b)].median_ms)


def test_json_records_machine_versions_and_settings(result):
    d = json.loads(result.to_json())
    assert d["kind"] == "bench"
    assert d["machine"]["cores"] >= 1 and "onnxruntime" in d["machine"]["versions"]
    assert d["versions"]["mnn"] and d["versions"]["onnxruntime"]
    assert d["settings"]["batch"] == [1, 2] and d["settings"]["isolate"] is True
    assert set(d["rows"][0]) == set(CSV_FIELDS)


def test_csv_round_trips(result, tmp_path):
    path = result.write_csv(tmp_path / "b.csv")
    rows = list(csv.DictReader(io.StringIO(path.read_text())))
    assert list(rows[0]) == CSV_FIELDS and len(rows) == len(result.rows)
    assert float(rows[0]["median_ms"]) == pytest.approx(result.rows[0].median_ms)


def test_static_batch_dim_is_skipped_with_a_note(ppocr_cls, tmp_path):
    proto = onnx.load(str(ppocr_cls))
    proto.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1  # the same network, batch fixed at 1
    static = tmp_path / "cls-static.onnx"
    onnx.save(proto, str(static))
    r = bushu.bench(static, batch=(1, 4), warmup_s=0.05, budget_s=0.1, isolate=False, show_progress=False)
    assert [x.status for x in r.rows] == ["ok", "skipped"]
    assert "static" in r.rows[1].note and "batch 4" in r.rows[1].note
    assert r  # a skip is not a failure


def test_batch_shapes_sets_only_dynamic_batch_dims():
    specs = [TensorSpec("x", "float32", ("N", 3, 48, "W")), TensorSpec("state", "float32", (2, 1, 4))]
    assert batch_shapes(specs, {"x": (1, 3, 48, 320)}, 8) == {"x": (8, 3, 48, 320)}  # the state keeps its shape
    assert "static" in batch_shapes(specs[1:], {}, 8)
    assert batch_shapes(specs[1:], {}, 1) == {}


def test_a_failing_engine_does_not_stop_the_others(ppocr_cls):
    r = bushu.bench(ppocr_cls, engines=("nosuch", "ort"), warmup_s=0.05, budget_s=0.1, isolate=False,
                    show_progress=False)
    assert not r
    assert r.rows[0].status == "error" and "unknown engine" in r.rows[0].note
    assert r.rows[1].status == "ok" and r.rows[1].speedup == 1.0


def test_cli_bench_json_and_csv(cli, ppocr_cls, tmp_path):
    res = cli("bench", ppocr_cls, "--budget", "0.1", "--warmup", "0.05", "--csv", tmp_path / "o.csv", "--json", "-q")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["rows"][0]["status"] == "ok"
    assert (tmp_path / "o.csv").read_text().startswith(",".join(CSV_FIELDS))
    bad = cli("bench", ppocr_cls, "--batch", "one")
    assert bad.returncode == 2 and "--batch" in bad.stderr
