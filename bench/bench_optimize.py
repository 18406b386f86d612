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
graph differ (a "slower" or "≤" there is noise, not a graph effect). On OpenVINO a model with zoo scalar values
(silero VAD's ``sr``) runs every variant with them bound and its inputs at the feed's static shapes (``open_timed``).

Stage 2 (``--decide-rounds``, default 30) decides every (model, engine) where a bushu cell's stage-1 verdict is
not "≤" (``--decide-all``: every one): one focused interleaved run of onnxsim's, onnxslim's, bushu's and the
control's files, each open in two sessions, reopened afresh in 5 stretches of the rounds (a file is not judged by one
session's luck: two sessions of one file differed by up to 1.3-1.5x on both engines), a sample being a batch of runs lasting
≥ 5 ms (tiny models), every session ``--decide-budget`` s per round in a rotated order; a file's round value is the geometric mean of its
two sessions' medians. Each ratio gets its median over rounds with the 95% order-statistics confidence interval
(which narrows with more rounds, unlike an IQR), and a verdict: "≤" when the median ≤ 1, "equal (±2%)" when the CI
contains 1 and lies within 0.98–1.02, "slower" when the CI lies above 1, else "undecided".

"≡" marks a cell where the engine runs the same executable graph for bushu's file and the anchor's (``executable``:
ONNX Runtime's optimized model, OpenVINO's compiled runtime model): a ratio there has no cause in the graph.

Wall time to optimize, in-process with every library imported and warmed up first (no tool pays its imports):
onnxsim once; onnxslim and ``bushu optimize --verify end --no-latency`` alternated ``--wall-rounds`` times (median)
— like with like: neither measures latency; beside them, once each, bushu without verification (``--verify off``:
the passes alone), with its latency measurement (``--verify end``, latency on, the CLI default) and with the default
``--verify each``.

    flock -x /tmp/bushu-quiet.lock .venv/bin/python bench/bench_optimize.py --out /tmp/optimize-bench.md
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import io
import math
import pickle
import shlex
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
from bushu.passes.verify import make_feeds, zoo_defaults
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


def open_timed(path: Path, engine: str, values: dict, feed=None):
    """A session for timing: all optimizations on, 2 threads, idle threads not spinning. On OpenVINO, a model with
    zoo scalar values (silero VAD's ``sr``) gets them bound and its other inputs fixed to the feed's shapes, as
    ``bushu bench`` does, alike for every variant (its If compiles only at a static rank); ONNX Runtime runs every
    file as it is."""
    ov = engine == "openvino" and bool(values)
    shapes = {k: tuple(np.shape(v)) for k, v in (feed or {}).items() if k not in values} if ov else {}
    opts = EngineOptions(opt_level="all", threads=2, spin=False, values=values if ov else {}, shapes=shapes)
    return engines.open_session(str(path), engine, opts)


def interleaved(paths: dict[str, Path], engine: str, feed, rounds: int, budget: float,
                values: dict | None = None) -> dict[str, dict]:
    """Latency of every variant on ``engine``, round-robin: {tool: {samples, round_medians}} (missing: can't load)."""
    sessions = {}
    for tool, path in paths.items():
        try:
            s = open_timed(path, engine, values or {}, feed)
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
        values = zoo_defaults(src)[1]
        res["latency"] = {e: interleaved(paths, e, feed, rounds, budget, values) for e in ENGINES
                          if e in engines.available()}
        res["same_exec"] = {e: same_executable(paths, e, values, feed) for e in res["latency"]}
        res["_paths"], res["_feed"], res["_values"] = paths, feed, values  # for the deciding stage
        print(name, {k: (round(v, 2) if v else v) for k, v in res["wall"].items()},
              {t: r["nodes"] for t, r in res["rows"].items()}, file=sys.stderr, flush=True)
        results.append(res)
    return results


# ---- the executable graphs: what each engine runs after its own optimizer ------------------------------------------
def executable(path: Path, engine: str, values: dict, feed) -> collections.Counter | None:
    """A multiset describing the graph ``engine`` actually runs for ``path``: on ONNX Runtime the nodes (op, domain,
    attributes) and initializers (dtype, dims) of its optimized model (ORT_ENABLE_ALL, ``optimized_model_filepath``);
    on OpenVINO the compiled runtime model's layers (type, runtime precision, primitive, output layout). Equal
    multisets: the engine runs the same kernels on the same shapes for both files, so a latency ratio between them
    can only be noise (session placement, load). None if the engine can't load the file."""
    if engine == "ort":
        import onnxruntime as ort

        with tempfile.TemporaryDirectory() as d:
            so = ort.SessionOptions()
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            so.intra_op_num_threads, so.log_severity_level = 2, 3
            so.optimized_model_filepath = str(Path(d) / "opt.onnx")
            try:
                ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
            except Exception:  # noqa: BLE001 -- a file ORT can't load has no executable graph
                return None
            m = onnx.load(so.optimized_model_filepath)
        sig, todo = collections.Counter(), [m.graph]
        while todo:  # the main graph and every If/Loop/Scan body (silero VAD's work is in its If branches)
            g = todo.pop()
            sig.update(("initializer", t.data_type, tuple(t.dims)) for t in g.initializer)
            for n in g.node:
                attrs = []
                for a in n.attribute:
                    if a.type == onnx.AttributeProto.GRAPH:
                        todo.append(a.g)
                    elif a.type == onnx.AttributeProto.GRAPHS:
                        todo += list(a.graphs)
                    else:
                        attrs.append((a.name, str(onnx.helper.get_attribute_value(a))))
                sig[(n.op_type, n.domain, tuple(sorted(attrs)))] += 1
        return sig
    try:
        s = open_timed(path, engine, values, feed)
    except bushu.BushuError:
        return None
    rows = collections.Counter()
    for op in s.compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        rows[tuple(info[k].astype(str) if k in info else "" for k in ("layerType", "runtimePrecision",
                                                                        "primitiveType", "outputLayouts"))] += 1
    return rows


def same_executable(paths: dict[str, Path], engine: str, values: dict, feed) -> dict[str, bool | None]:
    """{anchor: whether bushu's file and the anchor's run as the same executable graph on ``engine``}."""
    mine = executable(paths["bushu"], engine, values, feed) if "bushu" in paths else None
    out = {}
    for a in ("onnxsim", "onnxslim"):
        other = executable(paths[a], engine, values, feed) if a in paths else None
        out[a] = None if mine is None or other is None else mine == other
    return out


# ---- stage 2: deciding the contested cells ----------------------------------------------------------------------
DECIDE_FILES = ("onnxsim", "onnxslim", "bushu", "control")
SESSIONS_PER_FILE = 2  # each file opened twice, so no file is judged by one session's luck (arena, alignment)
SAMPLE_MS = 5.0  # a timed sample is a batch of runs lasting at least this long (tiny models: 0.04 ms a run)
EPOCHS = 5  # the sessions are opened afresh this many times over the rounds (6 rounds each at 30)
EQUAL_MARGIN = 0.02  # "equal": the median ratio's 95% CI lies within 1 ± this and contains 1


def median_ci(x, level: float = 0.95) -> tuple[float, float, float]:
    """(median, lo, hi): the distribution-free order-statistics confidence interval of the median of ``x`` (the
    interval between the j-th smallest and j-th largest value, j the largest rank whose binomial(n, ½) tail is
    ≤ (1 - level) / 2). Unlike an IQR, it narrows as rounds are added."""
    x = np.sort(np.asarray(x, dtype=np.float64))
    n = x.size
    alpha, cdf, k = (1 - level) / 2, 0.0, 0
    while k < n:  # find the largest k with P(Bin(n, ½) ≤ k - 1) ≤ alpha: then [X(k), X(n-k+1)] covers ≥ level
        cdf += math.comb(n, k) / 2**n  # P(Bin ≤ k)
        if cdf > alpha:
            break
        k += 1
    k = max(k, 1)  # under 6 rounds no interval reaches the level: the full range
    return float(np.median(x)), float(x[k - 1]), float(x[n - k])


def decided(ci: tuple[float, float, float]) -> str:
    """The stage-2 verdict on a ratio's (median, lo, hi): "≤" when the median ≤ 1; "equal (±2%)" when the 95% CI
    contains 1 and lies within 1 ± EQUAL_MARGIN; "slower" when the CI lies above 1; otherwise "undecided"."""
    med, lo, hi = ci
    if med <= 1.0:
        return "≤"
    if lo > 1.0:
        return "slower"
    if 1 - EQUAL_MARGIN <= lo and hi <= 1 + EQUAL_MARGIN:
        return f"equal (±{EQUAL_MARGIN:.0%})"
    return "undecided"


def decide_cell(paths: dict[str, Path], engine: str, feed, values: dict, rounds: int, budget: float,
                epochs: int = EPOCHS) -> dict:
    """One focused interleaved run on ``engine`` of onnxsim's, onnxslim's, bushu's and the control's files, each in
    SESSIONS_PER_FILE sessions, opened afresh in each of ``epochs`` stretches of the rounds (so a session's luck
    varies over the run and shows in the interval instead of biasing it). A sample is ``reps`` runs timed together
    (reps from the first warm-up, so a sample lasts ≥ SAMPLE_MS); per round every session gets ``budget`` seconds in
    a rotated order and gives its median per-run time; a file's round value is the geometric mean of its sessions'.
    Returns {"ratios": {(tool, anchor): per-round ratios}, "reps", "ms": {tool: median per-run ms}, "same_file":
    the largest ratio between two sessions of one file within an epoch}."""
    files = [t for t in DECIDE_FILES if t in paths]
    per = {t: [] for t in files}  # per round: geometric mean over the file's sessions
    reps, same_file = None, 1.0

    def batch(s, f, n):
        for _ in range(n):
            s.run(f)

    bounds = np.linspace(0, rounds, epochs + 1).astype(int)
    for ep in range(epochs):
        sessions = []
        for tool in files:
            for k in range(SESSIONS_PER_FILE):
                s = open_timed(paths[tool], engine, values, feed)
                names = {i.name for i in s.inputs}
                sessions.append((tool, k, s, {n: v for n, v in feed.items() if n in names}))
        one = [measure(lambda s=s, f=f: s.run(f), warmup_s=0.2, budget_s=0.05, min_reps=3).median_ms
               for _, _, s, f in sessions]
        reps = reps or max(1, math.ceil(SAMPLE_MS / min(one)))
        rows = {(t, k): [] for t, k, _, _ in sessions}
        for r in range(bounds[ep], bounds[ep + 1]):
            order = sessions[r % len(sessions):] + sessions[: r % len(sessions)]
            for tool, k, s, f in (order if r % 2 == 0 else order[::-1]):
                lat = measure(lambda s=s, f=f, n=reps: batch(s, f, n), warmup_s=0.0, budget_s=budget, min_reps=3)
                rows[(tool, k)].append(lat.median_ms / reps)
        for t in files:
            ks = [np.asarray(rows[(t, k)]) for k in range(SESSIONS_PER_FILE)]
            per[t] += list(np.exp(np.mean(np.log(ks), axis=0)))
            meds = [float(np.median(x)) for x in ks]
            same_file = max(same_file, max(meds) / min(meds))
        del sessions, rows
    value = {t: np.asarray(v) for t, v in per.items()}
    pairs = [("bushu", "onnxsim"), ("bushu", "onnxslim"), ("control", "onnxslim")]
    return {"ratios": {(a, b): value[a] / value[b] for a, b in pairs if a in value and b in value},
            "reps": reps, "ms": {t: float(np.median(value[t])) for t in files}, "same_file": same_file}


def decide(results: list[dict], rounds: int, budget: float, everything: bool = False) -> None:
    """Stage 2: every (model, engine) with a bushu cell whose stage-1 verdict is not "≤" (``everything``: every
    (model, engine)) is re-timed by :func:`decide_cell`; the result goes to ``res["decided"][engine]``."""
    for res in results:
        res["decided"] = {}
        for e, lat in res.get("latency", {}).items():
            cells = [a for a in ("onnxsim", "onnxslim")
                     if (r := ratio(lat, "bushu", a)) is not None and (everything or verdict(r) != "≤")]
            if not cells:
                continue
            t0 = time.perf_counter()
            res["decided"][e] = decide_cell(res["_paths"], e, res["_feed"], res["_values"], rounds, budget)
            res["decided"][e]["cells"] = cells
            print("decided", res["model"], e, cells, f"{time.perf_counter() - t0:.0f} s",
                  {k: _ci(median_ci(v)) for k, v in res["decided"][e]["ratios"].items()}, file=sys.stderr, flush=True)


def _ci(c) -> str:
    return f"{c[0]:.3f} [{c[1]:.3f}, {c[2]:.3f}]"


def decide_table(results: list[dict]) -> str:
    head = ["model", "engine", "runs per sample", "ms per run: bushu / onnxsim / onnxslim",
            "bushu ÷ onnxsim [95% CI]", "bushu ÷ onnxslim [95% CI]", "control ÷ onnxslim [95% CI]",
            "2 sessions of one file: largest ratio"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for res in results:
        for e, d in res.get("decided", {}).items():
            cells = [res["model"], e, str(d["reps"]),
                     " / ".join(f"{d['ms'][t]:.3f}" if t in d["ms"] else "n/a" for t in ("bushu", "onnxsim",
                                                                                        "onnxslim"))]
            for pair in (("bushu", "onnxsim"), ("bushu", "onnxslim"), ("control", "onnxslim")):
                if pair not in d["ratios"]:
                    cells.append("n/a")
                    continue
                c = median_ci(d["ratios"][pair])
                staged = "" if pair[0] == "control" or pair[1] in d["cells"] else " (stage 1: ≤)"
                same = " ≡" if pair[0] == "bushu" and res.get("same_exec", {}).get(e, {}).get(pair[1]) else ""
                cells.append(f"{_ci(c)} {decided(c)}{staged}{same}")
            cells.append(f"{d['same_file']:.3f}")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def final_verdicts(results: list[dict]) -> dict[tuple[str, str, str], list[tuple[str, str, bool]]]:
    """{(engine, tool, anchor): [(model, final verdict, same executable graph)]}: the stage-2 verdict where the cell
    was decided, else the stage-1 one (for bushu and for the control)."""
    out: dict = {}
    for res in results:
        for e, lat in res.get("latency", {}).items():
            d = res.get("decided", {}).get(e)
            for tool, anchor in (("bushu", "onnxsim"), ("bushu", "onnxslim"), ("control", "onnxslim")):
                r = ratio(lat, tool, anchor)
                if r is None:
                    continue
                if d and (tool, anchor) in d["ratios"] and (tool == "control" or anchor in d["cells"]):
                    v = decided(median_ci(d["ratios"][(tool, anchor)]))
                else:
                    v = verdict(r)
                same = tool == "bushu" and bool(res.get("same_exec", {}).get(e, {}).get(anchor))
                out.setdefault((e, tool, anchor), []).append((res["model"], v, same))
    return out


def verdict_counts(results: list[dict]) -> str:
    head = ["cells", "n", "≤", "equal (±2%)", "undecided", "slower", "level (stage 1 only)", "≡ (same executable graph)",
            "not ≤ (model: verdict)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (e, tool, anchor), rows in final_verdicts(results).items():
        kinds = [v.split(" (")[0] for _, v, _ in rows]
        rest = "; ".join(f"{m}: {v}{' ≡' if same else ''}" for m, v, same in rows if v != "≤")
        lines.append("| " + " | ".join([f"{e}: {tool} ÷ {anchor}", str(len(rows)), str(kinds.count("≤")),
                                         str(kinds.count("equal")), str(kinds.count("undecided")),
                                         str(kinds.count("slower")), str(kinds.count("level")),
                                         str(sum(same for *_, same in rows)) if tool == "bushu" else "", rest]) + " |")
    return "\n".join(lines)


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
                d = res.get("decided", {}).get(e)
                then = (f" → {decided(median_ci(d['ratios'][('bushu', anchor)]))}"
                        if d and anchor in d["cells"] and ("bushu", anchor) in d["ratios"] else "")
                same = " ≡" if res.get("same_exec", {}).get(e, {}).get(anchor) else ""
                cells.append("n/a" if r is None else f"{_ratio(r)} {verdict(r)}{then}{same}")
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
    p.add_argument("--decide-rounds", type=int, default=30,
                   help="rounds of the focused run deciding each contested cell (default 30; 0: no stage 2)")
    p.add_argument("--decide-all", action="store_true", help="decide every (model, engine), not only contested ones")
    p.add_argument("--decide-budget", type=float, default=0.1,
                   help="seconds per session per round in the deciding run (default 0.1)")
    p.add_argument("--save", default=None, help="also keep the results here (a pickle), for --render")
    p.add_argument("--render", default=None,
                   help="no measuring: write the tables of the runs saved in these files (comma-separated), one table")
    args = p.parse_args(argv)
    if args.render:
        runs = [pickle.loads(Path(f).read_bytes()) for f in args.render.split(",")]
        results = [r for run in runs for r in run["results"]]
        head = "\n".join(run["head"] for run in runs)
    else:
        t0 = time.perf_counter()
        results = bench([s for s in args.models.split(",") if s], args.rounds, args.budget, args.wall_rounds,
                        not args.no_each)
        t1 = time.perf_counter()
        if args.decide_rounds:
            decide(results, args.decide_rounds, args.decide_budget, args.decide_all)
        head = (f"Measured on {machine()}; {t1 - t0:.0f} s, then {time.perf_counter() - t1:.0f} s deciding.\n\n"
                f"Command: `flock -x /tmp/bushu-quiet.lock .venv/bin/python bench/bench_optimize.py "
                f"{shlex.join(argv if argv is not None else sys.argv[1:])}`\n")
        for r in results:  # what only the run needs
            for k in ("_paths", "_feed", "_values"):
                r.pop(k, None)
        if args.save:
            Path(args.save).write_bytes(pickle.dumps({"head": head, "results": results}))
    text = (head + "\n≡: the engine runs the same executable graph for bushu's file and the anchor's (ONNX Runtime's "
            "optimized model: same nodes, attributes and initializer shapes; OpenVINO's compiled runtime model: same "
            "layers, precisions, primitives and layouts), so a ratio there has no cause in the graph.\n\n"
            + tables(results))
    text += "\n### Final verdicts (stage 2 where decided, else stage 1)\n\n" + verdict_counts(results) + "\n"
    if any(r.get("decided") for r in results):
        text += ("\n### Stage 2: cells decided in focused runs (95% CI of the median ratio)\n\n"
                 + decide_table(results) + "\n")
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
