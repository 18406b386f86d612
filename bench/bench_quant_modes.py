"""Benchmark the quantize modes other than static INT8 (dynamic, weight-only INT8, INT4, FP16) per target engine.

In one run, on all-MiniLM-L6-v2 (bushu.zoo_torch) and, for FP16, PP-OCRv4 det:

* ``bushu-<mode>``: ``bushu.quantize(mode=..., engine=E)`` with its defaults — the file bushu writes *for* engine E
  (dynamic and int4 differ per engine; see bushu/quant/modes.py);
* anchors, the same file on both engines: ONNX Runtime's ``quantize_dynamic`` (defaults), its
  ``MatMulNBitsQuantizer`` (4 bits, block 32, symmetric), its ``float16`` converter (``keep_io_types``), and NNCF's
  ``compress_weights`` (defaults: INT8_ASYM; and INT4_SYM with group 32).

Each file is scored on the engine it runs on: MiniLM by the cosine between its sentence embeddings and the float
model's (ONNX Runtime) on the 234 sentences of bushu.datasets.sentences(); det by the output SNR on 6 photos with
rendered text (bushu.datasets.text_scenes). Speed: on each engine every file and the FP32 model are timed in the
same alternating rounds (bushu.timing.measure_interleaved, 2 threads, ONNX Runtime's spinning off), and the
speed-up is FP32 ÷ file per round: median and IQR over the rounds.

    flock -x /tmp/bushu-quiet.lock .venv/bin/python bench/bench_quant_modes.py --out docs/dev/quant-modes.md
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx

import bushu
from bushu import datasets
from bushu.engines import open_session
from bushu.engines.base import EngineOptions
from bushu.quant import QuantConfig, quantize
from bushu.timing import machine, measure_interleaved

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_quant import det_feeds, det_model  # noqa: E402  (the same PP-OCRv4 det data as the main quant bench)

warnings.filterwarnings("ignore")
ENGINES = ("ort", "openvino")


@dataclasses.dataclass
class Row:
    model: str
    engine: str
    file: str
    metric: str = ""
    value: float | None = None
    worst: float | None = None
    speedup: float | None = None
    iqr: tuple[float, float] | None = None
    mb: float | None = None
    note: str = ""


def minilm_task():
    import bushu.zoo_torch as zt

    feeds = zt.minilm_feeds(s for _, s in datasets.sentences())
    lengths = [f["input_ids"].shape[1] for f in feeds]
    timing_feed = feeds[int(np.argsort(lengths)[len(lengths) // 2])]
    path = zt.onnx_path("minilm")
    ref = np.concatenate([s["sentence_embedding"] for s in _run(path, "ort", feeds)])

    def score(p, engine):
        e = np.concatenate([o["sentence_embedding"] for o in _run(p, engine, feeds)])
        cos = (e * ref).sum(1) / (np.linalg.norm(e, axis=1) * np.linalg.norm(ref, axis=1))
        return float(cos.mean()), float(cos.min())

    return "all-MiniLM-L6-v2", path, feeds[:8], timing_feed, "cosine", score


def det_task(tmp: Path):
    path = det_model(tmp)
    test, held = det_feeds(6, seed=1), det_feeds(2, seed=0)
    ref = [o["sigmoid_0.tmp_0"] if "sigmoid_0.tmp_0" in o else next(iter(o.values())) for o in _run(path, "ort", test)]

    def score(p, engine):
        outs = [next(iter(o.values())) for o in _run(p, engine, test)]
        snr = [10 * np.log10((r ** 2).sum() / max(((o - r) ** 2).sum(), 1e-30)) for o, r in zip(outs, ref)]
        return float(np.mean(snr)), float(np.min(snr))

    return "PP-OCRv4 det", path, held, test[0], "SNR dB", score


def _run(path, engine, feeds):
    s = open_session(path, engine)
    return [s.run(f) for f in feeds]


def anchors(path: Path, tmp: Path, modes: tuple[str, ...]) -> dict[str, Callable[[], Path]]:
    """name → a function writing that anchor's file (run lazily, so one failing anchor is one row)."""
    out: dict[str, Callable[[], Path]] = {}

    def dst(name):
        return tmp / f"{path.stem}.{name}.onnx"

    if "dynamic" in modes:
        def ort_dynamic():
            from onnxruntime.quantization import quantize_dynamic

            quantize_dynamic(str(path), str(dst("ort-dynamic")))
            return dst("ort-dynamic")
        out["ort-dynamic"] = ort_dynamic
    if "int4" in modes:
        def ort_int4():
            from onnxruntime.quantization.matmul_nbits_quantizer import (
                MatMulNBitsQuantizer,
            )

            q = MatMulNBitsQuantizer(onnx.load(str(path)), bits=4, block_size=32, is_symmetric=True)
            q.process()
            q.model.save_model_to_file(str(dst("ort-int4")), use_external_data_format=False)
            return dst("ort-int4")
        out["ort-int4 (MatMulNBits)"] = ort_int4
    if "fp16" in modes:
        def ort_fp16():
            from onnxruntime.transformers.float16 import convert_float_to_float16

            onnx.save(convert_float_to_float16(onnx.load(str(path)), keep_io_types=True), str(dst("ort-fp16")))
            return dst("ort-fp16")
        out["ort-fp16 (float16 converter)"] = ort_fp16
    for mode_name, nncf_mode, kw in (("weight-only", "INT8_ASYM", {}), ("int4", "INT4_SYM", {"group_size": 32,
                                                                                              "ratio": 1.0})):
        if mode_name not in modes:
            continue

        def nncf_file(nncf_mode=nncf_mode, kw=kw):
            import nncf

            m = nncf.compress_weights(onnx.load(str(path)), mode=getattr(nncf.CompressWeightsMode, nncf_mode), **kw)
            onnx.save(m, str(dst(f"nncf-{nncf_mode}")))
            return dst(f"nncf-{nncf_mode}")
        out[f"nncf {nncf_mode.lower()}" + (" g32" if kw else "")] = nncf_file
    return out


def bench(task, modes: tuple[str, ...], tmp: Path, budget_s: float, rounds: int) -> list[Row]:
    name, path, held, timing_feed, metric, score = task
    files: dict[tuple[str, str], Path | str] = {}  # (engine, label) -> file, or the error
    notes: dict[tuple[str, str], str] = {}
    for engine in ENGINES:
        for mode in modes:
            t = time.perf_counter()
            r = quantize(path, held, QuantConfig(mode=mode, engine=engine, progress=False, measure_speed=False))
            dst = tmp / f"{Path(path).stem}.bushu-{mode}-{engine}.onnx"
            bushu.save(r.model, dst)
            files[(engine, f"bushu-{mode}")] = dst
            kernels = ", ".join(f"{k} ×{v}" for k, v in r.kernels.items() if "MatMul" in k or "Fully" in k
                                or "Conv" in k)
            check = "" if r.engine_check is None else ("; check right" if r.engine_check else "; check WRONG")
            notes[(engine, f"bushu-{mode}")] = f"{kernels}{check}; {time.perf_counter() - t:.1f} s"
            print(f"  {name} bushu-{mode} for {engine}: {r}", file=sys.stderr)
    for label, make in anchors(Path(path), tmp, modes).items():
        try:
            f = make()
        except Exception as e:  # noqa: BLE001 (an anchor failing to produce a file is a row)
            f = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:120]}"
        for engine in ENGINES:
            files[(engine, label)] = f
    rows = []
    for engine in ENGINES:
        labels = [lbl for (e, lbl) in files if e == engine]
        runnable, sessions = [], []
        for lbl in labels:
            f = files[(engine, lbl)]
            row = Row(name, engine, lbl, metric, note=notes.get((engine, lbl), ""))
            if isinstance(f, str):
                row.note = f
                rows.append(row)
                continue
            row.mb = bushu.ir.weight_bytes(bushu.load(f)) / 1e6
            try:
                row.value, row.worst = score(f, engine)
                sessions.append(open_session(f, engine, EngineOptions(spin=False)))
                runnable.append(row)
            except Exception as e:  # noqa: BLE001
                row.note = f"{engine} can't run it: {str(e).splitlines()[0][:160]}"
            rows.append(row)
        fp32 = open_session(path, engine, EngineOptions(spin=False))
        fns = [lambda s=fp32: s.run(timing_feed)] + [lambda s=s: s.run(timing_feed) for s in sessions]
        lats, med = measure_interleaved(fns, rounds=rounds, warmup_s=0.5, budget_s=budget_s)
        ratios = med[:, :1] / med[:, 1:]
        for i, row in enumerate(runnable):
            q1, q2, q3 = np.quantile(ratios[:, i], [0.25, 0.5, 0.75])
            row.speedup, row.iqr = float(q2), (float(q1), float(q3))
        rows.append(Row(name, engine, "fp32", metric, *((1.0, 1.0) if metric == "cosine" else (None, None)), 1.0,
                        (1.0, 1.0),
                        bushu.ir.weight_bytes(bushu.load(path)) / 1e6,
                        f"median {lats[0].median_ms:.2f} ms"))
        del sessions, fp32
    return rows


def table(rows: list[Row]) -> str:
    out = ["| model | engine | file | accuracy (mean / worst) | × FP32 (IQR) | weights MB | kernels / notes |",
           "|---|---|---|---|---|---|---|"]
    for r in rows:
        acc = "–" if r.value is None else (f"{r.value:.4f} / {r.worst:.4f}" if r.metric == "cosine"
                                           else f"{r.value:.1f} / {r.worst:.1f} dB")
        sp = "–" if r.speedup is None else f"{r.speedup:.2f} ({r.iqr[0]:.2f}–{r.iqr[1]:.2f})"
        mb = "–" if r.mb is None else f"{r.mb:.1f}"
        name = f"**{r.file}**" if r.file.startswith("bushu") else r.file
        out.append(f"| {r.model} | {r.engine} | {name} | {acc} | {sp} | {mb} | {r.note} |")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None, help="write the markdown section here")
    ap.add_argument("--budget", type=float, default=6.0, help="seconds of timing per file and engine")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--models", default="minilm,det")
    args = ap.parse_args(argv)
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="bushu-bench-modes-") as d:
        tmp = Path(d)
        if "minilm" in args.models:
            rows += bench(minilm_task(), ("dynamic", "weight-only", "int4", "fp16"), tmp, args.budget, args.rounds)
        if "det" in args.models:
            rows += bench(det_task(tmp), ("fp16",), tmp, args.budget, args.rounds)
    import onnxruntime
    import openvino

    head = (f"# Quantize modes per engine\n\nRun {started} on {machine()}; onnxruntime {onnxruntime.__version__}, "
            f"openvino {openvino.__version__}.\n\n```\nflock -x /tmp/bushu-quiet.lock .venv/bin/python "
            f"bench/bench_quant_modes.py {' '.join(argv or sys.argv[1:])}\n```\n\n")
    text = head + table(rows) + "\n"
    print(text)
    if args.out:
        Path(args.out).with_suffix(".json").write_text(json.dumps([dataclasses.asdict(r) for r in rows], indent=1))
        prev = Path(args.out).read_text() if Path(args.out).exists() else ""
        reading = prev[prev.index("## Reading"):] if "## Reading" in prev else ""
        Path(args.out).write_text(text + ("\n" + reading if reading else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
