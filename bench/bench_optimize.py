"""Benchmark ``bushu optimize`` against onnxsim and onnxslim (a script, not a test).

Per model, in one run: every tool optimizes the model; then node count (Constant nodes apart, subgraphs
included), file size, max
output difference from the original (ORT, graph optimizations off), and latency on ONNX Runtime (ORT_ENABLE_ALL,
2 threads) and OpenVINO (CPU, 2 threads) of original / onnxsim / onnxslim / bushu **interleaved**: all sessions
open (idle threads not spinning, alike for all), ``--rounds`` rounds, each round timing every variant for
``--budget`` seconds in a rotated order, so background load hits all variants alike. Reported: median and p90 over
all timed runs, and each tool's ratio to the original (median of the per-round ratios, with their IQR). Targets:
bushu ÷ onnxsim and bushu ÷ onnxslim, each the median of the per-round ratios with its IQR, and a verdict: "≤" when
the median ≤ 1, "level (within noise)" when the IQR contains 1, "slower" otherwise. A control variant, onnxslim's
file opened again in a session of its own, scored against onnxslim the same way, shows how far two sessions of one
graph differ (a "slower" or "≤" there is noise, not a graph effect).

Wall time to optimize, in-process with every library imported and warmed up first (no tool pays its imports):
onnxsim once; onnxslim and ``bushu optimize --verify end --no-latency`` alternated ``--wall-rounds`` times (median)
— like with like: neither measures latency; beside them, once each, bushu without verification (``--verify off``:
the passes alone), with its latency measurement (``--verify end``, latency on, the CLI default) and with the default
``--verify each``.

    flock -x /tmp/bushu-quiet.lock .venv/bin/python bench/bench_optimize.py --out /tmp/optimize-bench.md
"""

from __future__ import annotations

import argparse
import contextlib
import io
import shutil
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

# "control": onnxslim's file again, in a session of its own: a graph equal to onnxslim's, so its ratio to onnxslim is
# what a ratio looks like with no cause in the graph (session-to-session spread).
TOOLS = ["original", "onnxsim", "onnxslim", "bushu", "control"]
ENGINES = ["ort", "openvino"]


def models() -> list[tuple[str, Path]]:
    out = [(n, zoo.path(n)) for n in ("ppocr-det", "ppocr-rec", "ppocr-cls", "silero-vad")]
    for name in ("digits-cnn", "minilm", "resnet18-like", "mobilenetv3-small-like", "tiny-encoder"):
        for legacy in (False, True):
            out.append((f"{name}{' (legacy)' if legacy else ''}", zoo_torch.onnx_path(name, legacy=legacy)))
    return out


def run_onnxsim(src: Path, dst: Path) -> None:
    import onnxsim

    m, ok = onnxsim.simplify(onnx.load(str(src)))
    if not ok:
        raise RuntimeError("onnxsim: check failed")
    onnx.save(m, str(dst))


def run_onnxslim(src: Path, dst: Path) -> None:
    import onnxslim

    with contextlib.redirect_stdout(io.StringIO()):  # it prints a summary table
        onnxslim.slim(str(src), str(dst))


def run_bushu(verify: str, latency: bool = False):
    def go(src: Path, dst: Path) -> None:
        _, r = bushu.optimize(src, dst, verify=verify, latency=latency, show_progress=False)
        if not r:
            raise RuntimeError(str(r))
    return go


def timed(fn, src: Path, dst: Path) -> float:
    t0 = time.perf_counter()
    fn(src, dst)
    return time.perf_counter() - t0


def warm_up(tmp: Path) -> None:
    """Import and run every tool once on two small models (a CNN, a transformer), so no timed run pays imports
    or first-call setup (ONNX Runtime's symbolic shape inference, which some passes ask, imports sympy)."""
    import onnxruntime.tools.symbolic_shape_infer  # noqa: F401

    for name in ("digits-cnn", "tiny-encoder"):
        src = zoo_torch.onnx_path(name, legacy=True)
        for i, fn in enumerate([run_onnxsim, run_onnxslim, run_bushu("end"), run_bushu("end", latency=True)]):
            fn(src, tmp / f"warm-{name}-{i}.onnx")


def counts(path: Path) -> tuple[int, int]:
    """(nodes other than Constant, Constant nodes) over the main graph and every If/Loop/Scan body."""
    m = onnx.load(str(path), load_external_data=False)
    nodes, todo = [], [m.graph]
    while todo:
        g = todo.pop()
        nodes += g.node
        for n in g.node:
            for a in n.attribute:
                todo += [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)
    const = sum(n.op_type == "Constant" for n in nodes)
    return len(nodes) - const, const


RTOL, ATOL = 1e-4, 1e-6  # the "within rtol 1e-4 of the original"; atol for outputs near zero


def max_diff(ref: dict, path: Path, feed) -> tuple[float, bool]:
    """(max |output - original| over the float outputs, whether every element is within RTOL/ATOL as in
    ``np.allclose``)."""
    got = engines.open_session(str(path), "ort", EngineOptions(opt_level="disable", threads=2)).run(feed)
    worst, ok = 0.0, True
    for k, v in ref.items():
        if v.dtype.kind != "f":
            continue
        a, b = got[k].astype(np.float64), v.astype(np.float64)
        worst = max(worst, float(np.max(np.abs(a - b), initial=0.0)))
        ok = ok and bool(np.allclose(a, b, rtol=RTOL, atol=ATOL))
    return worst, ok


def interleaved(paths: dict[str, Path], engine: str, feed, rounds: int, budget: float) -> dict[str, dict]:
    """Latency of every variant on ``engine``, round-robin: {tool: {samples, round_medians}} (missing: can't load)."""
    sessions = {}
    for tool, path in paths.items():
        try:
            s = engines.open_session(str(path), engine, EngineOptions(opt_level="all", threads=2, spin=False))
        except bushu.BushuError:
            continue
        names = {i.name for i in s.inputs}
        f = {k: v for k, v in feed.items() if k in names}
        sessions[tool] = (s, f)
        measure(lambda s=s, f=f: s.run(f), warmup_s=0.3, budget_s=0.0, min_reps=1)
    out = {t: {"samples": [], "round_medians": []} for t in sessions}
    order = list(sessions)
    if not order:  # the engine can't load the model (OpenVINO and silero VAD's If branches)
        return out
    for r in range(rounds):
        for tool in order[r % len(order):] + order[: r % len(order)]:
            s, f = sessions[tool]
            lat = measure(lambda s=s, f=f: s.run(f), warmup_s=0.02, budget_s=budget, min_reps=3)
            out[tool]["samples"] += lat.samples_ms
            out[tool]["round_medians"].append(lat.median_ms)
    return out


def ratio(lat: dict, tool: str, base: str) -> tuple[float, float, float] | None:
    """Median and IQR (q1, q3) of the per-round ratios tool / base (each one tool: no per-round minimum of several,
    which would be biased low)."""
    if tool not in lat or base not in lat:
        return None
    num = np.asarray(lat[tool]["round_medians"])
    den = np.asarray(lat[base]["round_medians"])
    q1, med, q3 = np.quantile(num / den, [0.25, 0.5, 0.75])
    return float(med), float(q1), float(q3)


def bench(selected: list[str], rounds: int, budget: float, wall_rounds: int, each: bool) -> list[dict]:
    results = []
    tmp = Path(tempfile.mkdtemp(prefix="bushu-bench-opt-"))
    warm_up(tmp)
    for name, src in models():
        if selected and not any(s in name for s in selected):
            continue
        stem = tmp / name.replace(" ", "_").replace("(", "").replace(")", "")
        res = {"model": name, "rows": {}, "wall": {}, "errors": {}}
        paths = {"original": src}
        feed = make_feeds(bushu.load(src), samples=1)[0]
        ref = engines.open_session(str(src), "ort", EngineOptions(opt_level="disable", threads=2)).run(feed)
        try:
            res["wall"]["onnxsim"] = timed(run_onnxsim, src, paths.setdefault("onnxsim", Path(f"{stem}.sim.onnx")))
        except Exception as e:  # a tool that fails on a model is a result too
            res["errors"]["onnxsim"] = f"{type(e).__name__}: {str(e).splitlines()[0][:80] if str(e) else ''}"
            paths.pop("onnxsim")
        slim, mine = [], []
        for i in range(wall_rounds):  # alternated: slim, bushu / bushu, slim ...
            pair = [("onnxslim", run_onnxslim, slim), ("bushu", run_bushu("end"), mine)]
            for tool, fn, acc in (pair if i % 2 == 0 else pair[::-1]):
                if tool in res["errors"]:
                    continue
                try:
                    acc.append(timed(fn, src, paths.setdefault(tool, Path(f"{stem}.{tool}.onnx"))))
                except Exception as e:
                    res["errors"][tool] = f"{type(e).__name__}: {str(e).splitlines()[0][:80] if str(e) else ''}"
                    paths.pop(tool, None)
        if "onnxslim" in paths:
            paths["control"] = Path(f"{stem}.control.onnx")
            shutil.copyfile(paths["onnxslim"], paths["control"])
        res["wall"]["onnxslim"] = float(np.median(slim)) if slim else None
        res["wall"]["bushu"] = float(np.median(mine)) if mine else None
        if "bushu" in paths:
            res["wall"]["bushu off"] = timed(run_bushu("off"), src, Path(f"{stem}.off.onnx"))
            res["wall"]["bushu+latency"] = timed(run_bushu("end", latency=True), src, Path(f"{stem}.lat.onnx"))
            if each:
                res["wall"]["bushu each"] = timed(run_bushu("each"), src, Path(f"{stem}.each.onnx"))
        for tool, path in paths.items():
            nodes, const = counts(path)
            res["rows"][tool] = {"nodes": nodes, "constants": const, "kib": path.stat().st_size / 1024,
                                 "max_diff": max_diff(ref, path, feed) if tool != "original" else (0.0, True)}
        res["latency"] = {e: interleaved(paths, e, feed, rounds, budget) for e in ENGINES
                          if e in engines.available()}
        print(name, {k: (round(v, 2) if v else v) for k, v in res["wall"].items()},
              {t: r["nodes"] for t, r in res["rows"].items()}, file=sys.stderr, flush=True)
        results.append(res)
    return results


def verdict(r: tuple[float, float, float]) -> str:
    """"≤" when the median per-round ratio is ≤ 1, "level (within noise)" when its IQR contains 1, else "slower"."""
    med, q1, q3 = r
    return "≤" if med <= 1.0 else ("level (within noise)" if q1 <= 1.0 <= q3 else "slower")


def _ms(lat: dict, tool: str) -> str:
    if tool not in lat:
        return "n/a"
    s = np.asarray(lat[tool]["samples"])
    return f"{np.median(s):.2f} / {np.quantile(s, 0.9):.2f}"


def _ratio(r) -> str:
    return "" if r is None else f"{r[0]:.2f} ({r[1]:.2f}–{r[2]:.2f})"


def tables(results: list[dict]) -> str:
    head = ["model", "tool", "nodes (+Constant)", "KiB", "max diff"]
    for e in ENGINES:
        head += [f"{e} ms median / p90", f"{e} ÷ original (IQR)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for res in results:
        for tool in TOOLS:
            if tool in res["errors"]:
                lines.append(f"| {res['model']} | {tool} | failed: {res['errors'][tool]} |" + " |" * (len(head) - 3))
                continue
            row = res["rows"].get(tool)
            if row is None:
                continue
            cells = [res["model"], tool, f"{row['nodes']} (+{row['constants']})", f"{row['kib']:.0f}",
                     f"{row['max_diff'][0]:.2g}"]
            for e in ENGINES:
                lat = res["latency"].get(e, {})
                cells += [_ms(lat, tool), "" if tool == "original" else _ratio(ratio(lat, tool, "original"))]
            lines.append("| " + " | ".join(cells) + " |")
    body = "\n".join(lines)

    wh = ["model", "onnxsim s", "onnxslim s", "bushu --verify end s", "bushu ÷ onnxslim", "bushu --verify off s",
          "bushu --verify end + latency s", "bushu --verify each s"]
    wl = ["| " + " | ".join(wh) + " |", "|" + "---|" * len(wh)]
    for res in results:
        w = res["wall"]
        rel = f"{w['bushu'] / w['onnxslim']:.2f}" if w.get("bushu") and w.get("onnxslim") else ""
        cells = ["" if w.get(k) is None else f"{w[k]:.2f}" for k in ("onnxsim", "onnxslim", "bushu")]
        cells += [rel, *("" if w.get(k) is None else f"{w[k]:.2f}" for k in ("bushu off", "bushu+latency",
                                                                                "bushu each"))]
        wl.append("| " + " | ".join([res["model"], *cells]) + " |")

    th = ["model", "nodes: bushu vs min(onnxsim, onnxslim)",
          *(c for e in ENGINES for c in (f"{e}: bushu ÷ onnxsim (IQR)", f"{e}: bushu ÷ onnxslim (IQR)",
                                          f"{e}: control ÷ onnxslim (IQR)")),
          "outputs within rtol 1e-4 (atol 1e-6)", "optimize time ≤ onnxslim"]
    tl = ["| " + " | ".join(th) + " |", "|" + "---|" * len(th)]
    for res in results:
        rows = res["rows"]
        if "bushu" not in rows:
            tl.append(f"| {res['model']} | bushu failed |" + " |" * (len(th) - 2))
            continue
        others = [t for t in ("onnxsim", "onnxslim") if t in rows]
        best = min(rows[t]["nodes"] for t in others) if others else None
        mine = rows["bushu"]["nodes"]
        nodes = f"{mine} vs {best} {'✓' if best is None or mine <= best else '✗'}"
        cells = [res["model"], nodes]
        for e in ENGINES:
            lat = res["latency"].get(e, {})
            for anchor in ("onnxsim", "onnxslim"):
                r = ratio(lat, "bushu", anchor) if anchor in rows else None
                cells.append("n/a" if r is None else f"{_ratio(r)} {verdict(r)}")
            # the control is onnxslim's own file in a session of its own: its ratio to onnxslim is what a ratio
            # looks like with no cause in the graph (session-to-session spread); it gets the same verdict rule.
            c = ratio(lat, "control", "onnxslim")
            cells.append("n/a" if c is None else f"{_ratio(c)} {verdict(c)}")
        cells.append("✓" if rows["bushu"]["max_diff"][1] else f"✗ {rows['bushu']['max_diff'][0]:.2g}")
        w = res["wall"]
        cells.append("" if not (w.get("bushu") and w.get("onnxslim")) else
                     ("✓" if w["bushu"] <= w["onnxslim"] else "✗") + f" {w['bushu']:.2f} vs {w['onnxslim']:.2f} s")
        tl.append("| " + " | ".join(cells) + " |")
    return ("### Targets\n\n" + "\n".join(tl) + "\n\n### Nodes, size, output difference, latency\n\n" + body
            + "\n\n### Wall time to optimize\n\n" + "\n".join(wl) + "\n")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=None, help="write the markdown tables here")
    p.add_argument("--models", default="", help="substrings of model names to run (default: all)")
    p.add_argument("--rounds", type=int, default=7, help="latency rounds per engine (default 7)")
    p.add_argument("--budget", type=float, default=0.25, help="seconds per variant per round (default 0.25)")
    p.add_argument("--wall-rounds", type=int, default=5, help="onnxslim / bushu optimize alternations (default 5)")
    p.add_argument("--no-each", action="store_true", help="skip the --verify each wall time")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    results = bench([s for s in args.models.split(",") if s], args.rounds, args.budget, args.wall_rounds,
                    not args.no_each)
    text = (f"Measured on {machine()}; {time.perf_counter() - t0:.0f} s.\n\nCommand: `flock -x /tmp/bushu-quiet.lock "
            f".venv/bin/python bench/bench_optimize.py {' '.join(argv if argv is not None else sys.argv[1:])}`\n\n"
            + tables(results))
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
