"""bushu report: one self-contained HTML file from real results, checked in headless Chromium."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from html import escape
from pathlib import Path

import pytest

import bushu
from bushu.report import report, write_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROME_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--enable-logging=stderr", "--v=0"]


@pytest.fixture(scope="module")
def results(ppocr_cls, tmp_path_factory):
    """Real results of the commands the report draws: bench (two engines), profile, convert, compare --layerwise."""
    out = tmp_path_factory.mktemp("results")
    bench = bushu.bench(ppocr_cls, engines=("ort", "openvino"), warmup_s=0.05, budget_s=0.1, isolate=False,
                        show_progress=False)
    prof = bushu.profile(ppocr_cls, "ort", budget_s=0.2)
    conv = bushu.convert(ppocr_cls, "openvino", out / "ov")
    cmp = bushu.compare(ppocr_cls, engines=("ort", "openvino"), layerwise=True, show_progress=False)
    return [bench, prof, conv, cmp]


@pytest.fixture(scope="module")
def page(results, tmp_path_factory):
    path = tmp_path_factory.mktemp("report") / "report.html"
    odd = {"kind": "from-the-future", "answer": 42, "items": [{"a": 1}, {"a": 2, "b": "x"}]}
    broken = {"kind": "bench", "rows": [{"model": "m"}]}  # a known kind in a shape the renderer doesn't expect
    r = write_report([*results, odd, broken], path)
    return path, r


def test_sections_follow_the_results(page):
    path, r = page
    assert r.sections == ("bench", "profile", "convert", "compare", "from-the-future", "bench")
    html = path.read_text()
    for kind in r.sections:
        assert f'data-kind="{kind}"' in html
    assert "answer" in html and "42" in html  # the unknown kind as a key/value table
    assert "shape the report does not know" in html  # the malformed one fell back, and the page still rendered


def test_self_contained(page):
    html = page[0].read_text()
    assert "<script" not in html and "<link" not in html and "src=" not in html and "@import" not in html
    urls = set(re.findall(r"https?://[^\s\"'<>]+", html))
    assert urls <= {"http://www.w3.org/2000/svg"}  # the SVG namespace is a name, never fetched


def test_plots_are_inline_svg(page):
    html = page[0].read_text()
    assert html.count("<svg") >= 4  # throughput bars, op-type bars, roofline, per-layer or more
    assert "arithmetic intensity" in html  # the roofline's axis
    assert "<circle" in html and "<rect" in html


def test_report_cli_and_bad_input(cli, results, tmp_path):
    paths = []
    for i, r in enumerate(results):
        p = tmp_path / f"r{i}.json"
        p.write_text(r.to_json())
        paths.append(p)
    ok = cli("report", *paths, "-o", tmp_path / "out.html", "--json")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["sections"] == ["bench", "profile", "convert", "compare"]
    (tmp_path / "notjson.json").write_text("hello")
    bad = cli("report", tmp_path / "notjson.json", "-o", tmp_path / "x.html")
    assert bad.returncode == 2 and "not JSON" in bad.stderr
    wrong = cli("report", paths[0], "-o", tmp_path / "x.txt")
    assert wrong.returncode == 2 and ".html" in wrong.stderr
    assert report([paths[0]], tmp_path / "api.html").sections == ("bench",)


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium: apt-get install -y chromium")
def test_renders_in_headless_chromium(page, tmp_path):
    path, _ = page
    with tempfile.TemporaryDirectory() as profile_dir:
        flags = [*CHROME_FLAGS, f"--user-data-dir={profile_dir}"]
        dom = subprocess.run([CHROMIUM, *flags, "--dump-dom", path.as_uri()], capture_output=True, text=True,
                             timeout=120)
        shot = tmp_path / "report.png"
        snap = subprocess.run([CHROMIUM, *flags, "--window-size=1200,3000", f"--screenshot={shot}", path.as_uri()],
                              capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert dom.stdout.count("<svg") >= 4 and "<polyline" in dom.stdout
    console = [ln for ln in dom.stderr.splitlines() + snap.stderr.splitlines()
               if "CONSOLE" in ln or "Uncaught" in ln or "net::ERR" in ln]
    assert not console, console
    assert snap.returncode == 0 and shot.stat().st_size > 20_000  # a page with plots, not a blank one


def test_report_path_is_checked_before_the_work(digits_onnx, tmp_path, capsys):
    from bushu.cli.main import main

    out = tmp_path / "d.opt.onnx"
    with pytest.raises(SystemExit) as e:
        main(["optimize", str(digits_onnx), "-o", str(out), "--report", str(tmp_path / "r.txt")])
    assert e.value.code == 2 and "give a .html path" in capsys.readouterr().err
    assert not out.exists()  # refused at parse time: no model written, no time spent


def test_quantize_section_reads_like_the_text(digits_onnx, tmp_path):
    from bushu import datasets
    from bushu.quant import QuantConfig

    x = datasets.digits()[0]
    res = bushu.quantize(digits_onnx, [{"input": x[i:i + 1]} for i in range(16)], QuantConfig(progress=False))
    path = write_report([res], tmp_path / "q.html").path
    body = Path(path).read_text(encoding="utf-8").split("<details>")[0]  # the section, before its raw "all fields"
    assert "left in float" in body and next(iter(res.float_layers)) in body
    sp = res.to_dict()["speed"]
    assert f"{sp['fp32']['median_ms']:.4g} ms (p90" in body and f"{sp['quantized']['median_ms']:.4g} ms" in body
    assert '"kind": "latency"' not in body and "&quot;kind&quot;" not in body  # no raw JSON dicts in the section
    for note in res.notes:
        assert escape(note) in body
