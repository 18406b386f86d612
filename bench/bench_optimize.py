"""Benchmark ``bushu optimize`` against onnxsim and onnxslim (a script, not a test).

For every model: node count (Constant nodes apart), file size, ONNX Runtime latency (ORT_ENABLE_ALL, 2 threads,
median and p90), OpenVINO latency (median), wall time to optimize (bushu with --verify end, as the issue's target
asks, and with the default --verify each), and the max output difference from the original — all in one run, so
ratios compare numbers measured minutes apart, not days. Latencies are measured for each variant back to back,
one session at a time (idle ORT sessions slow others).

    flock /tmp/bushu-bench.lock .venv/bin/python bench/bench_optimize.py --out docs/dev/optimize-bench.md
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

import bushu
from bushu import engines, zoo, zoo_torch
from bushu.engines.base import EngineOptions
from bushu.passes.verify import make_feeds
from bushu.timing import machine, measure


def models() -> list[tuple[str, Path, dict]]:
    out = [(n, zoo.path(n), {"shapes": zoo.MODELS[n].shapes, "values": zoo.MODELS[n].values})
           for n in ("ppocr-det", "ppocr-rec", "ppocr-cls", "silero-vad")]
    for name in ("digits-cnn", "minilm", "resnet18-like", "mobilenetv3-small-like", "tiny-encoder"):
        for legacy in (False, True):
            out.append((f"{name}{' (legacy)' if legacy else ''}", zoo_torch.onnx_path(name, legacy=legacy), {}))
    return out


def run_onnxsim(src: Path, dst: Path) -> None:
    import onnxsim

    m, ok = onnxsim.simplify(onnx.load(str(src)))
    if not ok:
        raise RuntimeError("onnxsim: check failed")
    onnx.save(m, str(dst))


def run_onnxslim(src: Path, dst: Path) -> None:
    import onnxslim

    onnxslim.slim(str(src), str(dst))


def run_bushu(verify: str):
    def go(src: Path, dst: Path, synth: dict) -> None:
        _, r = bushu.optimize(src, dst, verify=verify, latency=False, show_progress=False, **synth)
        if not r:
            raise RuntimeError(str(r))
    return go


def counts(path: Path) -> tuple[int, int]:
    m = onnx.load(str(path), load_external_data=False)
    nodes = [n for g in [m.graph] for n in g.node]
    const = sum(n.op_type == "Constant" for n in nodes)
    return len(nodes) - const, const


def latency(path: Path, engine: str, feed) -> tuple[float, float] | None:
    try:
        sess = engines.open_session(str(path), engine, EngineOptions(opt_level="all", threads=2))
    except bushu.BushuError:
        return None
    names = {s.name for s in sess.inputs}
    f = {k: v for k, v in feed.items() if k in names}
    lat = measure(lambda: sess.run(f), warmup_s=0.3, budget_s=2.0)
    return lat.median_ms, lat.p90_ms


def max_diff(ref: dict, path: Path, feed) -> float:
    got = engines.open_session(str(path), "ort", EngineOptions(opt_level="disable", threads=2)).run(feed)
    return max(float(np.max(np.abs(got[k].astype(np.float64) - v.astype(np.float64)), initial=0.0))
               for k, v in ref.items() if v.dtype.kind == "f")


def bench(selected: list[str] | None) -> list[dict]:
    rows = []
    tmp = Path(tempfile.mkdtemp(prefix="bushu-bench-opt-"))
    for name, src, synth in models():
        if selected and not any(s in name for s in selected):
            continue
        feed = make_feeds(bushu.load(src), samples=1, **synth)[0]
        ref = engines.open_session(str(src), "ort", EngineOptions(opt_level="disable", threads=2)).run(feed)
        tools = {"original": None, "onnxsim": run_onnxsim, "onnxslim": run_onnxslim,
                 "bushu --verify end": run_bushu("end"), "bushu (verify each)": run_bushu("each")}
        for tool, fn in tools.items():
            dst = src if fn is None else tmp / f"{name.replace(' ', '_')}.{tool.split()[0]}.{len(rows)}.onnx"
            row = {"model": name, "tool": tool}
            try:
                t0 = time.perf_counter()
                if fn is not None:
                    fn(src, dst, synth) if tool.startswith("bushu") else fn(src, dst)
                row["wall_s"] = time.perf_counter() - t0 if fn is not None else None
                row["nodes"], row["constants"] = counts(dst)
                row["size_kib"] = dst.stat().st_size / 1024
                row["ort"] = latency(dst, "ort", feed)
                row["openvino"] = latency(dst, "openvino", feed)
                row["max_diff"] = max_diff(ref, dst, feed) if fn is not None else 0.0
            except Exception as e:  # a tool that fails on a model is a result too
                row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:80] if str(e) else ''}"
            rows.append(row)
            print(row, file=sys.stderr, flush=True)
    return rows


def table(rows: list[dict]) -> str:
    def ms(v):
        return "n/a" if not v else f"{v[0]:.2f} / {v[1]:.2f}"

    lines = ["| model | tool | nodes (+Constant) | KiB | ORT ms median / p90 | OpenVINO ms median / p90 | optimize s "
             "| max diff |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['tool']} | failed: {r['error']} | | | | | |")
            continue
        wall = "" if r["wall_s"] is None else f"{r['wall_s']:.2f}"
        lines.append(f"| {r['model']} | {r['tool']} | {r['nodes']} (+{r['constants']}) | {r['size_kib']:.0f} | "
                     f"{ms(r['ort'])} | {ms(r['openvino'])} | {wall} | {r['max_diff']:.2g} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=None, help="write the markdown table here")
    p.add_argument("--models", default="", help="substrings of model names to run (default: all)")
    args = p.parse_args(argv)
    rows = bench([s for s in args.models.split(",") if s])
    text = (f"Measured on {machine()}.\n\nCommand: `flock /tmp/bushu-bench.lock .venv/bin/python "
            f"bench/bench_optimize.py {' '.join(argv or sys.argv[1:])}`\n\n" + table(rows) + "\n")
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
