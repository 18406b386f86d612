"""Benchmark of bushu's performance tools (run it under ``flock -x /tmp/bushu-quiet.lock``).

1. ``bushu bench`` adds no overhead: its throughput against a bare loop calling the same session, interleaved in
   rounds so both see the same machine load (target ≥ 0.98).
2. Per-op profile times add up to the end-to-end latency (target within 10 %): per run, the kernels plus the
   executor's measured time between them against the wall time of the same run; beside it the kernels alone, and
   the unprofiled latency measured in alternation with the profiled runs (the profiler's own slowdown).
3. The fraction of the machine's peak FLOP/s each engine reaches on the zoo models, and the fastest engine.

    flock -x /tmp/bushu-quiet.lock .venv/bin/python bench/bench_perf.py --out docs/dev/perf-bench.md

Prints a markdown section (tables + the command + the machine) and writes it to ``--out`` when given.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

import bushu
from bushu.bench.models import resolve
from bushu.engines import available, open_session
from bushu.inputs import synthesize
from bushu.profile import peaks
from bushu.timing import machine

ZOO = ["ppocr-cls", "ppocr-rec", "ppocr-det", "silero-vad"]
TORCH_ZOO = ["digits-cnn", "mobilenetv3-small-like", "resnet18-like", "minilm"]


def md_table(rows, header) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def _bare_loop(sess, feed, budget: float) -> tuple[float, float]:
    """The engine called back to back: (items/s from the median call, calls/s over the wall time)."""
    clock = time.perf_counter
    times, t0 = [], clock()
    while clock() - t0 < budget:
        t = clock()
        sess.run(feed)
        times.append(clock() - t)
    return 1.0 / float(np.median(times)), len(times) / (clock() - t0)


def _quartiles(x) -> str:
    q1, q3 = np.quantile(x, [0.25, 0.75])
    return f"{q1:.3f}–{q3:.3f}"


def overhead(models, rounds: int, budget: float) -> str:
    """Many short rounds, bench and bare loop in alternating order (AB, BA, AB…), so that background load hits
    both alike; the median per-round ratio and its interquartile range."""
    rows = []
    for name in models:
        ref = resolve(name)
        sess = open_session(ref.source, "ort")
        feed = synthesize(sess.inputs, shapes=ref.shapes, values=ref.values)
        _bare_loop(sess, feed, 0.2)  # warm the bare loop's session once; bench warms its own every round
        by_median, by_wall = [], []
        def bench_once(ref=ref):
            return bushu.bench(ref.source, engines=("ort",), shapes=ref.shapes, values=ref.values, warmup_s=0.05,
                               budget_s=budget, isolate=False, show_progress=False).rows[0]

        for i in range(rounds):
            if i % 2 == 0:
                bare_med, bare_wall = _bare_loop(sess, feed, budget)
                row = bench_once()
            else:
                row = bench_once()
                bare_med, bare_wall = _bare_loop(sess, feed, budget)
            by_median.append(row.items_per_s / bare_med)
            by_wall.append(row.items_per_s / bare_wall)
        met = float(np.mean(np.asarray(by_median) >= 0.98))
        rows.append([name, rounds, f"{np.median(by_median):.3f}", _quartiles(by_median),
                     f"{min(by_median):.3f}–{max(by_median):.3f}", f"{100 * met:.0f} %", f"{np.median(by_wall):.3f}",
                     "yes" if np.median(by_median) >= 0.98 else "NO"])
    return md_table(rows, ["model", "rounds", "bench ÷ bare loop, median of rounds (items/s from the median call)",
                           "IQR", "range", "rounds ≥ 0.98", "bench ÷ bare loop calls per wall second (median)",
                           "≥ 0.98"])


def _label(name: str) -> str:
    return Path(name).stem if os.sep in name else name


def coverage(models, engines, repeats: int) -> str:
    """Each model × engine profiled ``repeats`` times; medians and ranges over the repeats."""
    rows = []
    for name in models:
        for engine in engines:
            found = []
            for _ in range(repeats):
                try:
                    found.append(bushu.profile(name, engine, budget_s=2.0))
                except bushu.BushuError as e:
                    rows.append([_label(name), engine, "error: " + str(e)[:80], "", "", "", "", "", ""])
                    break
            if len(found) < repeats:
                continue
            acc = [p.accounted for p in found]
            cov = [p.coverage for p in found]
            ex = [p.executor_ms for p in found if p.executor_ms is not None]
            slow = [p.profiler_slowdown for p in found]
            rows.append([_label(name), engine, f"{np.median([p.e2e_ms for p in found]):.3f}",
                         f"{np.median([p.latency_ms for p in found]):.3f}", f"{np.median(slow):.2f}x",
                         f"{np.median(cov):.3f} ({min(cov):.2f}–{max(cov):.2f})",
                         f"{np.median(ex):.3f}" if ex else "not timed",
                         f"{np.median(acc):.3f} ({min(acc):.2f}–{max(acc):.2f})",
                         "yes" if abs(np.median(acc) - 1) <= 0.10 else "NO"])
    return md_table(rows, ["model", "engine", "profiled run ms", "unprofiled ms", "profiler slowdown",
                           "kernels ÷ run (range)",
                           "measured overhead ms (ORT: executor between kernels; OpenVINO: infer request round trip)",
                           "(kernels + overhead) ÷ run (range)", "within 10 %"])


def _fit_width(x: np.ndarray, width: int) -> np.ndarray:
    out = np.zeros((*x.shape[:-1], width), np.float32)
    out[..., :min(width, x.shape[-1])] = x[..., :width]
    return out


def _interleaved_many(sessions: dict, feed, rounds: int, block: int = 3, settle_s: float = 0.0
                      ) -> dict[str, tuple[float, float, str]]:
    """Each session (name → session) timed in blocks of ``block`` runs, round-robin, the order reversed on odd
    rounds. Per name: median ms, the median per-round ratio (first session's ms ÷ this one's: its speed-up over
    the first) and that ratio's IQR. ``settle_s``: a pause before each block, so that the previous engine's
    worker threads stop spinning (ncnn's OpenMP threads spin 20 ms after a run) before the next is timed."""
    names = list(sessions)
    for s in sessions.values():
        s.run(feed)
    ms: dict[str, list[float]] = {n: [] for n in names}
    for i in range(rounds):
        for n in (names if i % 2 == 0 else names[::-1]):
            s = sessions[n]
            if settle_s:
                time.sleep(settle_s)
            s.run(feed)
            ts = []
            for _ in range(block):
                t0 = time.perf_counter()
                s.run(feed)
                ts.append((time.perf_counter() - t0) * 1e3)
            ms[n].append(float(np.median(ts)))
    base = np.asarray(ms[names[0]])
    out = {}
    for n in names:
        ratios = base / np.asarray(ms[n])
        out[n] = (float(np.median(ms[n])), float(np.median(ratios)), _quartiles(ratios))
    return out


def _interleaved(a, b, feed, rounds: int, block: int = 3) -> tuple[float, float, float, str]:
    """Median ms of ``a`` and ``b`` (sessions) timed in alternating blocks, the median per-round ratio a/b and
    its IQR."""
    got = _interleaved_many({"a": a, "b": b}, feed, rounds, block)
    return got["a"][0], got["b"][0], got["b"][1], got["b"][2]


def int8_by_layer_type(rounds: int, threads: int = 1) -> str:
    """Which ncnn layer types gain from INT8: the FP32 model against copies with only one layer type made INT8
    (and with all but the depthwise convolutions), interleaved, at ``threads`` threads."""
    import tempfile

    from bushu import datasets, zoo
    from bushu.convert import ncnn_int8 as q
    from bushu.convert.ncnn import FILES, fixed_specs, two_shapes
    from bushu.convert.targets import cached
    from bushu.engines.base import model_specs
    from bushu.engines.ncnn import NcnnSession

    def kind(layer) -> str:
        if layer.type != "Convolution":
            return {"ConvolutionDepthWise": "depthwise", "InnerProduct": "fully connected"}[layer.type]
        return "conv 1x1" if layer.i(1) == 1 and layer.i(11, layer.i(1)) == 1 else "conv kxk"

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-int8-types-") as tmp:
        for name, width in (("ppocr-cls", 192), ("ppocr-rec", 320)):
            shapes = {"x": (1, 3, 48, width)}
            folder, m = cached(zoo.path(name), "ncnn", shapes)
            ins, outs = model_specs(m)
            ins = fixed_specs(ins, *two_shapes(ins, shapes))
            fp = NcnnSession(folder / FILES[0], folder / FILES[1], ins, outs, threads)
            feeds = [{"x": _fit_width(t.x, width)} for t in datasets.text_lines(8, seed=102)]
            layers = q.quantizable(folder / FILES[0], depthwise=True)
            th = q.thresholds(fp, feeds, layers, "minmax")
            groups = {"every layer": [la for la in layers],
                      "all but depthwise (bushu's default)": [la for la in layers if kind(la) != "depthwise"]}
            for k in ("depthwise", "conv 1x1", "conv kxk", "fully connected"):
                if any(kind(la) == k for la in layers):
                    groups[f"only {k}"] = [la for la in layers if kind(la) == k]
            sessions = {"FP32": fp}
            for g, chosen in groups.items():
                d = Path(tmp) / f"{name}-{len(sessions)}"
                d.mkdir()
                q.rewrite(folder / FILES[0], folder / FILES[1], d / FILES[0], d / FILES[1],
                          {la.name: th[la.name] for la in chosen})
                sessions[g] = NcnnSession(d / FILES[0], d / FILES[1], ins, outs, threads)
            got = _interleaved_many(sessions, feeds[0], rounds, block=20 if name == "ppocr-cls" else 3)
            for g in list(groups):
                ms, speedup, iqr = got[g]
                rows.append([name, g, len(groups[g]), f"{got['FP32'][0]:.3f}", f"{ms:.3f}", f"{speedup:.2f} ({iqr})"])
    return md_table(rows, ["model", "layers made INT8", "count", "FP32 ms", "INT8 ms",
                           f"speed-up FP32 ÷ INT8, median of {rounds} rounds (IQR), {threads} thread(s)"])


def ncnn_int8(rounds: int) -> str:
    """ncnn's own INT8 (``bushu convert --to ncnn --int8``) against ncnn FP32: accuracy and interleaved latency."""
    import tempfile

    from bushu import datasets, zoo
    from bushu.convert.api import open_converted

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-ncnn-int8-") as tmp:
        rec = zoo.path("ppocr-rec")
        shapes = {"x": (1, 3, 48, 320)}
        calib = [{"x": _fit_width(t.x, 320)} for t in datasets.text_lines(16, seed=100)]
        test = datasets.text_lines(50, seed=7)
        cases = [("ppocr-rec", rec, shapes, calib, "word accuracy, 50 rendered lines (width 320)")]
        cls_test = datasets.text_lines(50, seed=8)
        cases.append(("ppocr-cls", zoo.path("ppocr-cls"), {"x": (1, 3, 48, 192)},
                      [{"x": _fit_width(t.x, 192)} for t in datasets.text_lines(16, seed=101)],
                      "top-1 agreement with FP32, 50 rendered lines"))
        # (the random-weight torch CNNs are left out: resnet18-like's FP32 outputs reach 1e33, no INT8 can follow)
        for name, path, shp, feeds, metric in cases:
            folder = {}
            results = {}
            for prec in ("fp32", "int8", "int8-dw"):
                t0 = time.perf_counter()
                r = bushu.convert(path, "ncnn", os.path.join(tmp, f"{name}-{prec}"), shapes=shp, int8=prec != "fp32",
                                  calib=feeds[:32] if prec != "fp32" else None, verify_outputs=prec != "fp32",
                                  int8_depthwise=prec == "int8-dw")
                results[prec] = (r, time.perf_counter() - t0)
                folder[prec] = Path(r.out_dir) if r.out_dir else None
            r8 = results["int8"][0]
            if None in folder.values():
                rows.append([name, "error: " + (r8.error or "no INT8 files")[:120], "", "", "", "", "", ""])
                continue
            m = bushu.load(path)
            fp = open_converted("ncnn", folder["fp32"], m, shp)
            q8 = open_converted("ncnn", folder["int8"], m, shp)
            q8dw = open_converted("ncnn", folder["int8-dw"], m, shp)
            if name == "ppocr-rec":
                def acc(s):
                    return 100 * float(np.mean([datasets.ppocr_decode(next(iter(s.run({"x": _fit_width(t.x, 320)}).values())))[0]
                                                == t.text for t in test]))
                quality = f"FP32 {acc(fp):.0f} % · INT8 {acc(q8):.0f} %"
            else:
                def top1(s, f):
                    return int(np.argmax(next(iter(s.run(f).values()))))
                feeds_t = [{"x": _fit_width(t.x, 192)} for t in cls_test]
                quality = f"{100 * float(np.mean([top1(fp, f) == top1(q8, f) for f in feeds_t])):.0f} %"
            sizes = [(folder[p] / "model.ncnn.bin").stat().st_size / 2**20 for p in ("fp32", "int8")]
            got = _interleaved_many({"fp32": fp, "int8": q8, "int8-dw": q8dw}, feeds[0], rounds)
            check = f"{r8.verdict}, worst cosine {min(o.cosine for o in r8.outputs):.4f}"
            rdw = results["int8-dw"][0]
            layers = (f"{r8.int8_layers} ({r8.int8_note})" if r8.int8_note
                      else f"{r8.int8_layers} (+{r8.int8_fp32_depthwise} depthwise FP32)")
            rows.append([name, layers,
                         f"{sizes[0]:.1f} → {sizes[1]:.1f}", f"{metric}: {quality}", check,
                         f"{got['fp32'][0]:.2f}", f"{got['int8'][0]:.2f}", f"{got['int8'][1]:.2f} ({got['int8'][2]})",
                         (f"{got['int8-dw'][0]:.2f} ms, {got['int8-dw'][1]:.2f} ({got['int8-dw'][2]}), "
                          f"{rdw.verdict}")])
    return md_table(rows, ["model", "INT8 layers", "weights MiB", "accuracy", "INT8 vs ORT FP32 (4 calibration feeds)",
                           "FP32 ms", "INT8 ms", "speed-up FP32 ÷ INT8, median of rounds (IQR)",
                           "with the depthwise convolutions INT8 too: ms, speed-up (IQR)"])


def fraction_of_peak(models, engines, pk, rounds: int) -> str:
    """Each model on every engine at batch 1, the engines' sessions open side by side in this process and timed in
    interleaved blocks (``_interleaved_many``), so that background load hits them alike: median ms, achieved
    GFLOP/s and % of the peak, and the speed-up over ONNX Runtime (median of per-round ratios, IQR)."""
    from bushu.engines.base import EngineOptions
    from bushu.engines.openvino import bind_scalars
    from bushu.inspect import node_costs

    rows = []
    for name in models:
        ref = resolve(name)
        model = bushu.load(ref.source)
        specs = open_session(model, "ort").inputs
        feed = synthesize(specs, shapes=ref.shapes, values=ref.values)
        # FLOPs of the model with its scalar inputs bound (silero VAD: sr, its If then the branch that runs)
        bound_model, fixed = bind_scalars(model, ref.values)
        bound = {k: v.shape for k, v in feed.items() if k not in fixed}
        flops = sum(c.flops for c in node_costs(bound_model, bound) if c.flops and not c.graph)
        shapes = {k: tuple(v.shape) for k, v in feed.items() if np.ndim(v)}
        sessions, failed = {}, {}
        for e in engines:
            try:  # each engine as it runs alone (ORT's threads spin); the pause before each block lets them stop
                sessions[e] = open_session(ref.source, e, EngineOptions(shapes=shapes, values=ref.values))
            except bushu.BushuError as err:
                failed[e] = str(err)
        got = _interleaved_many(sessions, feed, rounds, block=5, settle_s=0.03) if sessions else {}
        sessions.clear()
        ok = {e: v for e, v in got.items()}
        best = min(ok, key=lambda e: ok[e][0]) if ok else "-"
        cells = []
        for e in engines:
            if e in ok:
                ms, speedup, iqr = ok[e]
                g = flops / (ms * 1e6)
                cells.append(f"{ms:.2f} ms · {g:.1f} GFLOP/s · {100 * g / pk.gflops:.1f} % · {speedup:.2f}× ({iqr})")
            else:
                cells.append(f"error: {failed[e][:120]}")
        rows.append([_label(name), f"{flops / 1e9:.3f}", *cells, best])
    return md_table(rows, ["model", "GFLOPs", *(f"{e}: ms · GFLOP/s · % peak · ×{engines[0]} (IQR)" for e in engines),
                           "fastest"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=None)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--profile-repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="fewer models and rounds")
    args = ap.parse_args()
    engines = tuple(e for e in ("ort", "openvino", "ncnn", "mnn") if e in available())
    zoo = ZOO[:2] if args.quick else ZOO
    torch_models = []
    if not args.quick:
        import bushu.zoo_torch as zt

        torch_models = [str(zt.onnx_path(n)) for n in TORCH_ZOO]
    pk = peaks(refresh=True)
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    parts = ["## Performance tools (bench, profile)", "",
             (f"Measured {started} with `flock -x /tmp/bushu-quiet.lock .venv/bin/python bench/bench_perf.py "
              f"{' '.join(sys.argv[1:])}` on {machine()}."), f"Machine peaks: {pk}.",
             (f"Load average (1 min) at the start: {os.getloadavg()[0]:.2f} on {machine().cores} cores "
              "(other engineers' jobs share this machine: compare only numbers within one table)."), "",
             "### 1. `bushu bench` overhead against a bare loop (ORT, batch 1, short rounds in alternating order)", "",
             overhead(zoo[:2], 4 if args.quick else args.rounds, 0.25), "",
             "### 2. Per-op profile times against end-to-end latency", "",
             coverage(zoo[:3] if args.quick else zoo + torch_models, [e for e in ("ort", "openvino") if e in engines],
                      1 if args.quick else args.profile_repeats), "",
             ("### 3. Fraction of peak FP32 FLOP/s and the fastest engine (batch 1, engines interleaved in blocks of 5 "
              f"runs, {6 if args.quick else args.rounds} rounds; speed-up over {engines[0]}: median of per-round "
              "ratios, IQR)"), "",
             fraction_of_peak(zoo + torch_models, engines, pk, 6 if args.quick else args.rounds), ""]
    if "ncnn" in engines:
        parts += ["### 4. ncnn's own INT8 (`bushu convert --to ncnn --int8`) against ncnn FP32 (interleaved)", "",
                  ncnn_int8(6 if args.quick else 12), "",
                  "### 5. Which ncnn layer types gain from INT8 (one type at a time, interleaved)", "",
                  int8_by_layer_type(4 if args.quick else 10, threads=1), "",
                  int8_by_layer_type(4 if args.quick else 10, threads=2), ""]
    text = "\n".join(parts)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
