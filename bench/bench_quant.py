"""Benchmark ``bushu quantize`` against ONNX Runtime's ``quantize_static`` and NNCF on real models.

In one run, on the same ONNX files and the same calibration feeds:

* ``ort-s8s8-minmax`` / ``ort-s8s8-entropy``: ``quantize_static`` at its defaults (QDQ, int8 activations and
  weights) with per-channel weights, MinMax or Entropy calibration (Entropy on feeds padded to one shape, which it
  needs, and on 12 feeds for the PP-OCR models: it keeps every activation in memory);
* ``ort-u8s8rr-minmax`` / ``ort-u8s8rr-entropy``: its best setting on x86 CPUs (uint8 activations, ``reduce_range``);
* ``nncf``: ``nncf.quantize`` at its defaults (``model_type=TRANSFORMER`` for MiniLM);
* ``bushu-ort`` / ``bushu-openvino``: ``bushu.quantize`` with its defaults for each engine (on OpenVINO it builds
  each preset's Q/DQ placement and keeps the fastest there of those OpenVINO computes right); ``bushu-ov-pinned``:
  the OpenVINO preset's placement pinned (the default before); ``bushu-budget`` with the issue's budget where there
  is one; ``bushu-dynamic`` for MiniLM.

Every model is scored on ONNX Runtime and on OpenVINO (the same file), and timed on both with
``bushu.timing.measure`` (one session at a time). Models and metrics:

* digits CNN (bushu.zoo_torch): top-1 on the 449 held-out digits;
* PP-OCRv4 rec: exact-match word accuracy on 1,000 rendered lines (bushu.datasets.text_lines, DejaVu fonts), also
  on their first 300 (the earlier runs' test set); the budget's own metric reads 300 other lines;
* all-MiniLM-L6-v2: cosine between float and quantized sentence embeddings, and top-5 nearest-neighbour agreement,
  on bushu.datasets.sentences();
* PP-OCRv4 det: output SNR on photos with rendered text pasted on them (bushu.datasets.text_scenes);
* a MobileNetV3-small-like network (random weights): output SNR on crops of scikit-image photos;
* calibration peak memory (tracemalloc) at 100 and 1,000 samples.

Run it alone on the machine::

    flock -x /tmp/bushu-quiet.lock .venv/bin/python bench/bench_quant.py --out docs/dev/quant-bench.md
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import tempfile
import time
import tracemalloc
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx

import bushu
from bushu import datasets, zoo
from bushu.engines import open_session
from bushu.quant import QuantConfig, quantize
from bushu.timing import machine, measure

warnings.filterwarnings("ignore")


@dataclasses.dataclass
class Task:
    name: str
    path: Path  # float model at opset >= 13 (ORT's per-channel QDQ needs it)
    calib: list[dict]
    score: Callable  # (model path, engine) -> {metric: value}; the first key is the primary metric
    timing_feed: dict
    budget: str | None = None
    eval_fn: Callable | None = None
    transformer: bool = False
    check_feeds: list[dict] = dataclasses.field(default_factory=list)  # bushu's engine check (default: timing feed)
    timing_note: str = ""


# ------------------------------------------------------------------------------------------------ scoring
def _session(path, engine):
    return open_session(str(path), engine)


def snr_db(ref: list[np.ndarray], out: list[np.ndarray]) -> float:
    err = sum(float(np.sum((a.astype(np.float64) - b) ** 2)) for a, b in zip(out, ref))
    sig = sum(float(np.sum(b.astype(np.float64) ** 2)) for b in ref)
    return math.inf if err == 0 else 10 * math.log10(sig / err)


def digits_task(tmp: Path) -> Task:
    import bushu.zoo_torch as zt

    x_tr, _, x_te, y_te = datasets.digits()

    def score(path, engine):
        out = _session(path, engine).run({"input": x_te})["logits"]
        return {"top1 %": 100 * float((out.argmax(1) == y_te).mean())}

    # timed on the 449 held-out digits at once: one digit is ~30 µs, where the Q/DQ overhead and the machine's
    # noise decide the ratio
    return Task("digits-cnn", zt.onnx_path("digits-cnn"), [{"input": x_tr[i:i + 1]} for i in range(300)], score,
                {"input": x_te}, budget="top1-drop<=0.5", check_feeds=[{"input": x_te}],
                timing_note=f"batch of {len(x_te)} digits")


def rec_task(tmp: Path, n_lines: int) -> Task:
    keys = zoo.ppocr_keys()
    test = datasets.text_lines(n_lines, seed=7)
    path = tmp / "ppocr-rec-op13.onnx"
    bushu.save(bushu.ir.convert_opset(bushu.load(zoo.path("ppocr-rec")), 13), path)

    def score(p, engine):
        s = _session(p, engine)
        ok = [datasets.ppocr_decode(next(iter(s.run({"x": t.x}).values())), keys)[0] == t.text for t in test]
        # the first 300 lines are the earlier runs' test set (the same generator and seed)
        return {"word acc %": 100 * float(np.mean(ok)), "first 300 %": 100 * float(np.mean(ok[:300])),
                "wrong lines": [i for i, o in enumerate(ok) if not o]}

    # 300 lines: one line is 0.33 pp, so "drop <= 1 pp" is decided on more than one or two lines
    budget_lines = datasets.text_lines(300, seed=11)

    def word_accuracy(run):  # the user's metric for the budget: on lines other than the test lines
        return 100 * float(np.mean([datasets.ppocr_decode(next(iter(run({"x": t.x}).values())), keys)[0] == t.text
                                    for t in budget_lines]))

    calib = [{"x": t.x} for t in datasets.text_lines(100, seed=100)]
    return Task("ppocr-rec", path, calib, score, {"x": test[0].x[..., :320]}, budget="eval-drop<=1",
                eval_fn=word_accuracy, check_feeds=[{"x": t.x} for t in test[:8]])


def minilm_task(tmp: Path) -> Task:
    import bushu.zoo_torch as zt

    feeds = zt.minilm_feeds(s for _, s in datasets.sentences())
    ref_cache: dict[str, np.ndarray] = {}

    def embed(p, engine):
        s = _session(p, engine)
        return np.concatenate([s.run(f)["sentence_embedding"] for f in feeds])

    def score(p, engine):
        e = embed(p, engine)
        if "ref" not in ref_cache:
            ref_cache["ref"] = embed(zt.onnx_path("minilm"), "ort")
        ref = ref_cache["ref"]
        cos = (e * ref).sum(1) / (np.linalg.norm(e, axis=1) * np.linalg.norm(ref, axis=1))

        def top5(x):
            sim = x @ x.T
            np.fill_diagonal(sim, -np.inf)
            return np.argsort(-sim, axis=1)[:, :5]

        a, b = top5(e), top5(ref)
        nn = np.mean([len(set(a[i]) & set(b[i])) / 5 for i in range(len(a))])
        unseen = np.ones(len(cos), bool)
        unseen[::2][:100] = False  # the calibration sentences
        return {"cosine": float(cos.mean()), "min cos": float(cos.min()), "top5 NN %": 100 * float(nn),
                "cosine unseen": float(cos[unseen].mean())}

    # calibration: 100 sentences, also among the 234 scored (the corpus is small); "cosine unseen" scores the others
    return Task("minilm", zt.onnx_path("minilm"), feeds[::2][:100], score, feeds[0], transformer=True,
                check_feeds=feeds[1::2][:8])


def _crops(size: int, n: int, seed: int, mean, std) -> list[np.ndarray]:
    out = []
    for img in datasets.photo_crops(n, size, seed):
        crop = (img.astype(np.float32) / 255.0 - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
        out.append(np.ascontiguousarray(crop.transpose(2, 0, 1)[None]))
    return out


def snr_task(name: str, path: Path, calib: list[dict], test: list[dict]) -> Task:
    ref_cache: dict = {}

    def score(p, engine):
        s = _session(p, engine)
        outs = [next(iter(s.run(f).values())) for f in test]
        if "ref" not in ref_cache:
            r = _session(path, "ort")
            ref_cache["ref"] = [next(iter(r.run(f).values())) for f in test]
        return {"SNR dB": snr_db(ref_cache["ref"], outs)}

    return Task(name, path, calib, score, test[0], check_feeds=test[:4])


def det_model(tmp: Path) -> Path:
    """PP-OCRv4 det at opset 13 (per-channel Q/DQ needs it), written under ``tmp``."""
    path = tmp / "ppocr-det-op13.onnx"
    bushu.save(bushu.ir.convert_opset(bushu.load(zoo.path("ppocr-det")), 13), path)
    return path


def det_feeds(n: int, seed: int) -> list[dict]:
    """``n`` photos with rendered text pasted on them (480 px), preprocessed as rapidocr does ((x/255-0.5)/0.5)."""
    return [{"x": np.ascontiguousarray(((im.astype(np.float32) / 255 - 0.5) / 0.5).transpose(2, 0, 1)[None])}
            for im in datasets.text_scenes(n, 480, seed=seed)]


def det_task(tmp: Path) -> Task:
    """PP-OCRv4 det on photos with rendered text pasted on them."""
    return snr_task("ppocr-det", det_model(tmp), det_feeds(64, seed=0), det_feeds(12, seed=1))


def mnv3_task(tmp: Path) -> Task:
    import bushu.zoo_torch as zt

    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    return snr_task("mobilenetv3-small-like", zt.onnx_path("mobilenetv3-small-like"),
                    [{"input": x} for x in _crops(224, 64, 0, mean, std)],
                    [{"input": x} for x in _crops(224, 12, 1, mean, std)])


# ------------------------------------------------------------------------------------------------ quantizers
# ORT's entropy calibrator keeps every intermediate output of every feed until the end (its
# CalibMaxIntermediateOutputs option only applies to MinMax): on PP-OCRv4 rec, 100 lines passed 19 GiB and the run
# was killed. These models' entropy anchors calibrate on their first feeds only.
ENTROPY_SAMPLES = {"ppocr-rec": 12, "ppocr-det": 12}


def padded(feeds: list[dict]) -> list[dict]:
    """Feeds zero-padded on their last axis to a common length: ORT's entropy calibrator stacks every feed's
    outputs and fails on different shapes. Zero is what rapidocr pads rec lines with, and token id 0 / mask 0 is
    BERT's padding, so the padded feeds mean the same thing."""
    out = []
    for f in feeds:
        g = {}
        for k, v in f.items():
            n = max(x[k].shape[-1] for x in feeds)
            g[k] = np.pad(v, [(0, 0)] * (v.ndim - 1) + [(0, n - v.shape[-1])])
        out.append(g)
    return out


class _Reader:
    """ONNX Runtime's calibration reader protocol (get_next returns None at the end)."""

    def __init__(self, feeds):
        self._it = iter(feeds)

    def get_next(self):
        return next(self._it, None)


def ort_static(task: Task, out: Path, *, activations: str, reduce_range: bool, method: str) -> Path:
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    feeds = task.calib if method == "minmax" else padded(task.calib[:ENTROPY_SAMPLES.get(task.name, len(task.calib))])
    quantize_static(str(task.path), str(out), _Reader(feeds), quant_format=QuantFormat.QDQ, per_channel=True,
                    reduce_range=reduce_range,
                    activation_type=QuantType.QUInt8 if activations == "u8" else QuantType.QInt8,
                    weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax if method == "minmax" else CalibrationMethod.Entropy)
    return out


def nncf_quantize(task: Task, out: Path) -> Path:
    import nncf

    model = onnx.load(str(task.path))
    kw = {"model_type": nncf.ModelType.TRANSFORMER} if task.transformer else {}
    q = nncf.quantize(model, nncf.Dataset(task.calib), subset_size=len(task.calib), **kw)
    onnx.save(q, str(out))
    return out


BUSHU_INFO: dict[Path, dict] = {}  # per written file: the placement bushu chose and the checks it made


def bushu_quantize(task: Task, out: Path, **kw) -> Path:
    r = quantize(task.path, task.calib, QuantConfig(progress=False, measure_speed=False, **kw))
    bushu.save(r.model, out)
    BUSHU_INFO[out] = {"placement": r.placement, "engine_check": str(r.engine_check) if r.engine_check else None,
                       "rejected": [str(c) for c in r.rejected], "notes": list(r.notes)}
    return out


def methods(task: Task) -> dict[str, Callable[[Path], Path]]:
    m = {
        "ort-s8s8-minmax": lambda o: ort_static(task, o, activations="s8", reduce_range=False, method="minmax"),
        "ort-s8s8-entropy": lambda o: ort_static(task, o, activations="s8", reduce_range=False, method="entropy"),
        "ort-u8s8rr-minmax": lambda o: ort_static(task, o, activations="u8", reduce_range=True, method="minmax"),
        "ort-u8s8rr-entropy": lambda o: ort_static(task, o, activations="u8", reduce_range=True, method="entropy"),
        "nncf": lambda o: nncf_quantize(task, o),
        "bushu-ort": lambda o: bushu_quantize(task, o, engine="ort"),
        "bushu-openvino": lambda o: bushu_quantize(task, o, engine="openvino"),
        # the OpenVINO preset's own placement, pinned: session 4's default, before the placement chosen by speed
        "bushu-ov-pinned": lambda o: bushu_quantize(task, o, engine="openvino", placement="openvino"),
    }
    if task.budget:
        m["bushu-budget"] = lambda o: bushu_quantize(task, o, engine="ort", budget=task.budget, eval_fn=task.eval_fn)
    if task.transformer:
        m["bushu-dynamic"] = lambda o: bushu_quantize(task, o, mode="dynamic")
    return m


# ------------------------------------------------------------------------------------------------ running
def paired_latency(ref: Path, path: Path, engine: str, feed: dict, budget_s: float, rounds: int = 5) -> dict:
    """FP32 and quantized latency measured in alternation (``rounds`` times each, one session at a time), so that
    load drifting on the shared machine hits both alike; the speed-up is the ratio of the pooled medians."""
    pooled: dict[str, list[float]] = {"fp32": [], "quantized": []}
    ratios = []
    for _ in range(rounds):
        meds = {}
        for key, p in (("fp32", ref), ("quantized", path)):
            s = _session(p, engine)
            samples = measure(lambda s=s: s.run(feed), warmup_s=0.3, budget_s=budget_s / rounds).samples_ms
            pooled[key] += samples
            meds[key] = float(np.median(samples))
            del s
        ratios.append(meds["fp32"] / meds["quantized"])
    med = {k: float(np.median(v)) for k, v in pooled.items()}
    return {"median_ms": med["quantized"], "p90_ms": float(np.quantile(pooled["quantized"], 0.9)),
            "fp32_median_ms": med["fp32"], "speedup": med["fp32"] / med["quantized"],
            "speedup_iqr": [float(np.quantile(ratios, 0.25)), float(np.quantile(ratios, 0.75))],
            "reps": len(pooled["quantized"])}


def run_task(task: Task, tmp: Path, budget_s: float, only: set[str] | None) -> list[dict]:
    rows = []
    entries = {"fp32": lambda o: task.path, **methods(task)}
    for name, make in entries.items():
        if only and name != "fp32" and name not in only:
            continue
        t0 = time.perf_counter()
        try:
            path = make(tmp / f"{task.name}-{name}.onnx")
        except Exception as e:  # noqa: BLE001 (an anchor that fails on a model is a result too)
            rows.append({"model": task.name, "config": name, "error": f"{type(e).__name__}: {str(e)[:160]}"})
            print(f"  {name}: FAILED {e}", file=sys.stderr, flush=True)
            continue
        build_s = time.perf_counter() - t0
        row = {"model": task.name, "config": name, "build_s": build_s, **BUSHU_INFO.get(path, {})}
        for engine in ("ort", "openvino"):
            try:
                row[engine] = {"metrics": task.score(path, engine),
                               "latency": paired_latency(task.path, path, engine, task.timing_feed, budget_s)}
            except Exception as e:  # noqa: BLE001 (an engine that fails on a file is a result too)
                row[engine] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"}
        if name != "fp32" and "error" not in row["openvino"]:
            row["openvino"]["check"] = ov_check(task, path)
        rows.append(row)
        print(f"  {name}: {json.dumps({k: row[k] for k in ('ort', 'openvino')}, default=str)[:300]}", file=sys.stderr,
              flush=True)
    return rows


def ov_check(task: Task, path: Path) -> dict:
    """bushu's own engine check (bushu.quant.verify) of a file on OpenVINO: right when its output error there is
    not far beyond the same file's on ONNX Runtime -- the tolerance bushu quantize applies to its own files."""
    from bushu.quant.verify import engine_check

    c = engine_check(bushu.load(task.path), bushu.load(path), task.check_feeds or [task.timing_feed], "openvino")
    return {"right": bool(c), "snr_db": c.target.snr_db, "ort_snr_db": c.reference.snr_db,
            "divergence": c.divergence, "text": str(c)}


def memory_flatness() -> dict:
    """Peak traced memory of bushu's calibration at 100 and 1,000 samples (MobileNetV3-small-like, 224x224)."""
    import bushu.zoo_torch as zt
    from bushu.quant.calibrate import calibrate
    from bushu.quant.prepare import prepare
    from bushu.quant.static import observable

    model, _ = prepare(bushu.load(zt.onnx_path("mobilenetv3-small-like")))
    names = observable(model, QuantConfig())
    rng = np.random.default_rng(0)
    out = {}
    for n in (100, 1000):
        feeds = ({"input": rng.standard_normal((1, 3, 224, 224), dtype=np.float32)} for _ in range(n))
        tracemalloc.start()
        t0 = time.perf_counter()
        cal = calibrate(model, names, feeds, show_progress=False)
        out[n] = {"peak_mib": tracemalloc.get_traced_memory()[1] / 2**20, "seconds": time.perf_counter() - t0,
                  "observer_state_kib": cal.state_bytes / 1024, "tensors": len(names)}
        tracemalloc.stop()
    return out


# ------------------------------------------------------------------------------------------------ report
def _fmt(v) -> str:
    if isinstance(v, float):
        return "inf" if math.isinf(v) else f"{v:.4f}" if abs(v) < 2 else f"{v:.1f}"
    return str(v)


ANCHORS = ("ort-s8s8-minmax", "ort-s8s8-entropy", "ort-u8s8rr-minmax", "ort-u8s8rr-entropy", "nncf")
BUSHU_ROW = {"ort": "bushu-ort", "openvino": "bushu-openvino"}
ENGINE_LABEL = {"ort": "ORT", "openvino": "OV"}


def _speed(r: dict, engine: str) -> tuple[float, list[float]] | None:
    lat = r.get(engine, {}).get("latency")
    return (lat["speedup"], lat.get("speedup_iqr") or [lat["speedup"]] * 2) if lat else None


def _right(r: dict, engine: str) -> bool:
    """ONNX Runtime is the reference engine (its files are right by definition); on OpenVINO, bushu's check."""
    return engine == "ort" or bool(r.get(engine, {}).get("check", {}).get("right"))


def speed_verdicts(rows: list[dict], metric: str | None) -> list[str]:
    """Per engine: bushu's INT8 against the fastest anchor INT8 the engine computes right (bushu.quant.verify's
    tolerance); the anchors it computes wrong are named, not compared with."""
    out = []
    for engine, label in ENGINE_LABEL.items():
        ours = next((r for r in rows if r["config"] == BUSHU_ROW[engine] and "error" not in r), None)
        anchors = [r for r in rows if r["config"] in ANCHORS and "error" not in r and _speed(r, engine)]
        wrong = [r for r in anchors if not _right(r, engine)]
        usable = [r for r in anchors if _right(r, engine)]
        best = max(usable, key=lambda r: _speed(r, engine)[0], default=None)
        parts = [f"**{label}**:"]
        if ours is None or not _speed(ours, engine):
            parts.append(f"{BUSHU_ROW[engine]} has no timing")
        else:
            sp, iqr = _speed(ours, engine)
            parts.append(f"{BUSHU_ROW[engine]} {sp:.2f}× ({iqr[0]:.2f}–{iqr[1]:.2f})"
                         + ("" if _right(ours, engine) else " [computed WRONG on this engine]")
                         + (f" [{ours['placement']} placement]" if ours.get("placement") not in (None, engine) else ""))
            if best is None:
                parts.append("vs no anchor that the engine computes right")
            else:
                bsp, biqr = _speed(best, engine)
                verdict = ("not met: bushu's file is computed wrong here" if not _right(ours, engine) else
                           "met" if sp >= bsp else
                           "not met, IQRs overlap" if iqr[1] >= biqr[0] else "not met")
                parts.append(f"vs the fastest right anchor {best['config']} {bsp:.2f}× ({biqr[0]:.2f}–{biqr[1]:.2f}): "
                             f"**{verdict}**")
        if wrong:
            def acc(r, e):
                m = r.get(e, {}).get("metrics", {})
                return _fmt(m[metric]) if metric in m else "?"
            parts[-1] += "; computed wrong here, not compared: " + ", ".join(
                f"{r['config']} {_speed(r, engine)[0]:.2f}× ({metric} {acc(r, engine)} vs {acc(r, 'ort')} on ORT)"
                for r in wrong)
        out.append("- " + " ".join(parts))
    return out


def markdown(results: dict, command: str) -> str:
    lines = ["# Quantization benchmark (bushu quantize vs ONNX Runtime quantize_static vs NNCF)", "",
             f"Command: `{command}`", "", f"Machine: {results['machine']}", "",
             ("Accuracy columns are measured on each engine with the same file; each engine's speed sits next to "
              "the accuracy of the file on that engine. `OV right?` is bushu's own engine check "
              "(bushu.quant.verify, the one `bushu quantize --engine openvino` applies to its result): the file's "
              "output error on OpenVINO against the float model is not far beyond the same file's on ONNX Runtime, on "
              "the check feeds (wrong: output SNR < 30 dB and > 3 dB below ORT's). Latency: median of the quantized "
              "model; × = FP32 median / quantized median on that engine (in brackets the IQR of the per-round "
              "ratios), the two measured in alternation (5 rounds each, one session at a time) so that the shared "
              "machine's drifting load hits both alike (p90 and the FP32 medians in the JSON). `error` = the engine "
              "or the tool failed on that model (message in the JSON). Speed targets compare bushu with the fastest "
              "anchor that the engine computes right; rows computed wrong are shown, not compared with."), ""]
    for model in results["models"]:
        rows = [r for r in results["rows"] if r["model"] == model]
        fp = next((r for r in rows if r["config"] == "fp32"), None)
        metric_names = ([k for k, v in fp["ort"]["metrics"].items() if not isinstance(v, list)]  # lists: JSON only
                        if fp and "metrics" in fp.get("ort", {}) else [])
        primary = metric_names[0] if metric_names else None
        lines += [f"## {model}", ""]
        note = results.get("timing_notes", {}).get(model)
        if note:
            lines += [f"Timed on one feed: {note}.", ""]
        hdr = (["config"] + [f"{m} (ORT)" for m in metric_names] + ["ORT ms", "ORT ×"]
               + [f"{primary} (OV)" if primary else "OV", "OV right?", "OV ms", "OV ×", "build s", "placement"])
        lines += ["| " + " | ".join(hdr) + " |", "|" + "---|" * len(hdr)]
        for r in rows:
            if "error" in r:
                lines.append(f"| {r['config']} | {r['error']} |" + " |" * (len(hdr) - 2))
                continue
            cells = [r["config"]]
            for m in metric_names:
                cells.append(_fmt(r["ort"]["metrics"][m]) if "metrics" in r["ort"] else "error")
            for eng in ("ort", "openvino"):
                if eng == "openvino":
                    ov = r["openvino"]
                    cells.append(_fmt(ov["metrics"][primary]) if "metrics" in ov and primary else "error")
                    chk = ov.get("check")
                    cells.append("–" if chk is None else "yes" if chk["right"] else
                                 f"**no** ({chk['snr_db']:.1f} vs {chk['ort_snr_db']:.1f} dB)")
                lat = r[eng].get("latency")
                iqr = lat.get("speedup_iqr") if lat else None
                sp = f"{lat['speedup']:.2f}" + (f" ({iqr[0]:.2f}–{iqr[1]:.2f})" if iqr else "") if lat else "–"
                cells += [f"{lat['median_ms']:.3f}", sp] if lat else ["–", "–"]
            cells.append(f"{r['build_s']:.1f}")
            cells.append(r.get("placement") or "")
            lines.append("| " + " | ".join(cells) + " |")
        lines += ["", *speed_verdicts(rows, primary)]
        for r in rows:
            for text in r.get("notes", []):
                if text.startswith(("placement chosen by speed", "the ort placement is rejected",
                                    "the openvino placement is rejected")):
                    lines.append(f"- {r['config']}: {text}")
            for text in r.get("rejected", []):
                lines.append(f"- {r['config']}: rejected placement: {text}")
            chk = r.get("openvino", {}).get("check")
            if chk and not chk["right"] and chk.get("divergence"):
                lines.append(f"- {r['config']} on OV: first divergent layer {chk['divergence']}")
        lines.append("")
    mem = results.get("memory")
    if mem:
        lines += ["## Calibration memory (bushu, MobileNetV3-small-like 224×224, tracemalloc peak)", "",
                  "| samples | peak MiB | observer state KiB | tensors | seconds |", "|---|---|---|---|---|"]
        for n, m in mem.items():
            lines.append(f"| {n} | {m['peak_mib']:.1f} | {m['observer_state_kib']:.0f} | {m['tensors']} | "
                         f"{m['seconds']:.1f} |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="digits-cnn,ppocr-rec,minilm,ppocr-det,mobilenetv3-small-like")
    ap.add_argument("--configs", default="", help="comma-separated subset of configs (default: all)")
    ap.add_argument("--lines", type=int, default=1000,
                    help="rendered lines for PP-OCRv4 rec (default: 1000; one line = 0.1 pp)")
    ap.add_argument("--budget-s", type=float, default=2.0, help="timing budget per model and engine")
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--out", default="docs/dev/quant-bench.md")
    ap.add_argument("--merge", nargs="+", metavar="JSON",
                    help="write one report from the JSON results of several runs (per-model runs) and exit")
    args = ap.parse_args(argv)
    if args.merge:
        return merge([Path(x) for x in args.merge], Path(args.out))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    only = set(filter(None, args.configs.split(","))) or None
    results = {"machine": str(machine()), "models": [], "rows": []}
    with tempfile.TemporaryDirectory(prefix="bushu-bench-quant-") as t:
        tmp = Path(t)
        makers = {"digits-cnn": lambda: digits_task(tmp), "ppocr-rec": lambda: rec_task(tmp, args.lines),
                  "minilm": lambda: minilm_task(tmp), "ppocr-det": lambda: det_task(tmp),
                  "mobilenetv3-small-like": lambda: mnv3_task(tmp)}
        for name in filter(None, args.models.split(",")):  # --models '' with memory: the memory table alone
            print(f"{name}:", file=sys.stderr, flush=True)
            task = makers[name]()
            results["models"].append(name)
            if task.timing_note:
                results.setdefault("timing_notes", {})[name] = task.timing_note
            results["rows"] += run_task(task, tmp, args.budget_s, only)
    if not args.no_memory:
        results["memory"] = memory_flatness()
    results["command"] = ("flock -x /tmp/bushu-quiet.lock .venv/bin/python bench/bench_quant.py "
                          + " ".join(argv or sys.argv[1:])).strip()
    _write(results, Path(args.out))
    return 0


def _write(results: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    text = markdown(results, results["command"])
    atomic_write(out, text)
    atomic_write(out.with_suffix(".json"), json.dumps(results, indent=1, default=str))
    print(text)


def atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def merge(paths: list[Path], out: Path) -> int:
    """One report from several runs' JSON (the models in the order given; the memory table from the run that has
    it); the command line lists every run's."""
    parts = [json.loads(p.read_text()) for p in paths]
    results = {"machine": parts[0]["machine"], "models": [], "rows": [],
               "command": "; ".join(r.get("command", "?") for r in parts)}
    for r in parts:
        results["models"] += r["models"]
        results["rows"] += r["rows"]
        results.setdefault("timing_notes", {}).update(r.get("timing_notes", {}))
        if r.get("memory"):
            results["memory"] = r["memory"]
    _write(results, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
