"""One HTML section per result, chosen by the result's ``kind``; unknown kinds get a generic key/value table.

Each dedicated renderer reads the ``--json`` form of its command's result. If it meets a shape it doesn't know
(another command's JSON grew or changed), the section falls back to the generic table with a note, so a report
never fails because of one result. Every section also keeps all fields in a collapsed "all fields" table.
"""

from __future__ import annotations

from collections.abc import Callable
from html import escape

from . import svg
from .html import cell, kv, records, table, verdict


def _bench(d: dict) -> str:
    rows = d.get("rows", [])
    ok = [r for r in rows if r.get("status") == "ok"]
    out = [table([[r["model"], r["engine"], r["batch"], r["status"], r.get("median_ms"), r.get("p90_ms"),
                   r.get("p99_ms"), r.get("min_ms"), r.get("items_per_s"), r.get("speedup"), r.get("load_s"),
                   r.get("peak_mem_mib"), r.get("note")] for r in rows],
                 ["model", "engine", "batch", "status", "median ms", "p90 ms", "p99 ms", "min ms", "items/s",
                  "speedup", "load s", "peak MiB", "note"])]
    if ok:
        engines = list(dict.fromkeys(r["engine"] for r in ok))
        colors = [svg.PALETTE[engines.index(r["engine"]) % len(svg.PALETTE)] for r in ok]
        out += ["<h3>throughput</h3>", svg.bars([(f"{r['model']} · {r['engine']} · b{r['batch']}", r["items_per_s"])
                                                 for r in ok], unit="items/s", colors=colors)]
    out.append(f'<p class="note">machine: {escape(str(d.get("machine", {}).get("cpu", "")))}; settings: '
               f'{escape(str(d.get("settings", "")))}</p>')
    return "".join(out)


def _profile(d: dict) -> str:
    peaks = d.get("peaks") or {}
    rows = d.get("rows", [])
    accounted = d.get("accounted") if d.get("accounted") is not None else d["coverage"]
    timed = "kernels and the engine's measured overhead" if d.get("executor_ms") is not None else "kernels"
    plain = (f"; unprofiled {d['latency_ms']:.3f} ms (the profiler's slowdown {d['e2e_ms'] / d['latency_ms']:.2f}x)"
             if d.get("latency_ms") else "")
    out = [(f"<p>{escape(d['model'])} on <b>{escape(d['engine'])}</b>: {d['e2e_ms']:.3f} ms per profiled run{plain}; "
            f"{timed} add up to {100 * accounted:.0f} % of each run "
            f"{verdict(abs(accounted - 1) <= 0.1, 'within 10 %', 'outside 10 %')} (kernels alone "
            f"{100 * d['coverage']:.0f} %); machine peak {peaks.get('gflops', 0):.1f} GFLOP/s, "
            f"{peaks.get('bandwidth_gbs', 0):.1f} GB/s</p>"),
           "<h3>where a profiled run goes</h3>",
           table([list(p) for p in d.get("parts", [])], ["part", "ms (median run)", "share of the run (median)"]),
           "<h3>time by op type</h3>",
           svg.bars([(r["op_type"], r["time_ms"]) for r in d.get("by_op", [])]
                    # the executor's own time is not an op: drawn apart, in another colour, after the ops
                    + ([(d.get("executor_label") or "executor overhead (between kernels)", d["executor_ms"])]
                       if d.get("executor_ms") else []),
                    unit="ms", colors=[svg.PALETTE[0]] * len(d.get("by_op", []))
                    + ([svg.PALETTE[1]] if d.get("executor_ms") else [])),
           table([[r["op_type"], r["kernels"], r["time_ms"], r["time_pct"], r.get("flops"), r.get("gflops_s"),
                   r.get("pct_peak")] for r in d.get("by_op", [])],
                 ["op", "kernels", "ms", "% time", "FLOPs", "GFLOP/s", "% peak"]),
           "<h3>roofline</h3>",
           svg.roofline([(r.get("intensity"), r.get("gflops_s"), f"{r['name']} ({r['onnx_op']})", r["bound"])
                         for r in rows], peak_gflops=peaks.get("gflops", 0), bandwidth_gbs=peaks.get("bandwidth_gbs", 0)),
           "<h3>top kernels</h3>"]
    top = sorted(rows, key=lambda r: -r["time_ms"])[:20]
    out.append(table([[r["name"], r["onnx_op"], ", ".join(r["nodes"][:4]) + ("…" if len(r["nodes"]) > 4 else ""),
                       r["time_ms"], r["time_pct"], r.get("flops"), r.get("gflops_s"), r.get("intensity"),
                       r.get("pct_peak"), r["bound"]] for r in top],
                     ["kernel", "op", "ONNX nodes", "ms", "% time", "FLOPs", "GFLOP/s", "FLOP/B", "% peak", "bound"]))
    return "".join(out)


def _convert(d: dict) -> str:
    ok = d.get("error") is None and all(o.get("passed") for o in d.get("outputs", [])) and bool(d.get("outputs"))
    out = [f"<p>{escape(d['model'])} → <b>{escape(d['target'])}</b> ({escape(str(d.get('converter')))}): {verdict(ok)}</p>"]
    if d.get("error"):
        out.append(f"<p>{escape(d['error'])}</p>")
    out.append(records(d.get("outputs", [])))
    return "".join(out)


def _diff_rows(outputs: list) -> str:
    return table([[o["name"], "PASS" if o.get("passed") else "FAIL", o.get("max_abs"),
                   o.get("max_rel"), o.get("cosine"), o.get("snr_db"), o.get("top1"), o.get("note")] for o in outputs],
                 ["output", "verdict", "max_abs", "max_rel", "cosine", "SNR dB", "top1", "note"])


def _compare(d: dict) -> str:
    ok = all(o.get("passed") for o in d.get("outputs", []))
    out = [f"<p>{escape(str(d.get('candidate')))} against {escape(str(d.get('reference')))}: {verdict(ok)}</p>",
           _diff_rows(d.get("outputs", []))]
    lw = d.get("layerwise")
    if lw:
        tensors = lw.get("tensors", [])
        out += ["<h3>per-layer error</h3>",
                svg.line({"SNR dB": [t["diff"].get("snr_db") if isinstance(t["diff"].get("snr_db"), (int, float)) else None
                                     for t in tensors]}, names=[f"{t['node']} ({t['op_type']})" for t in tensors],
                         ylabel="SNR dB (higher is closer)")]
        first = lw.get("first_divergence")
        if first:
            out.append(f"<p>first divergent node: <code>{escape(first['node'])}</code> ({escape(first['op_type'])})</p>")
    return "".join(out)


def _optimize(d: dict) -> str:
    before, after = d.get("nodes_before", {}), d.get("nodes_after", {})
    ops = sorted(set(before) | set(after), key=lambda o: -before.get(o, 0))
    lat_b, lat_a = d.get("latency_before") or {}, d.get("latency_after") or {}
    summary = [["nodes", sum(before.values()), sum(after.values())],
               ["weights (bytes)", d.get("initializer_bytes_before"), d.get("initializer_bytes_after")],
               ["opset", d.get("opset_before"), d.get("opset_after")],
               ["median latency (ms)", lat_b.get("median_ms"), lat_a.get("median_ms")]]
    steps = d.get("steps", [])
    back = [s for s in steps if s.get("status") not in ("kept", "unchanged")]
    out = ["<h3>before / after</h3>", table(summary, ["", "before", "after"]),
           table([[o, before.get(o, 0), after.get(o, 0)] for o in ops], ["op", "before", "after"])]
    if back:  # passes rolled back (or refused) with the reason and the first divergent node
        out += ["<h3>rolled back</h3>", records(back)]
    if d.get("notes"):
        out += ["<h3>notes</h3>", _list(d["notes"])]
    fired: dict[str, list] = {}  # which passes fired and how often, over every round
    for st in steps:
        if st.get("status") == "kept":
            row = fired.setdefault(st.get("name", "?"), [st.get("name", "?"), 0, 0, 0.0])
            row[1] += 1
            row[2] += st.get("rewrites") or 0
            row[3] += st.get("seconds") or 0.0
    return "".join(out + ["<h3>passes that fired</h3>",
                          table(list(fired.values()), ["pass", "rounds", "rewrites", "seconds"]),
                          f"<details><summary>every step ({len(steps)})</summary>{records(steps)}</details>"])


def _diagnosis(diag: dict) -> str:
    layers = diag.get("layers", [])
    tensors = diag.get("tensors", [])
    out = []
    if layers:
        out += ["<h3>per-layer sensitivity</h3>",
                svg.line({"only this layer quantized": [x.get("alone_snr_db") for x in layers],
                          "only this layer in float": [x.get("float_snr_db") for x in layers]},
                         names=[f"{x['node']} ({x['op_type']})" for x in layers], ylabel="output SNR dB")]
    if tensors:
        out += ["<h3>per-layer error</h3>", svg.line({"SNR dB": [t.get("snr_db") for t in tensors]},
                                                      names=[t["tensor"] for t in tensors], ylabel="SNR dB")]
    return "".join(out)


def _latency(lat: dict | None) -> str:
    """A latency result (``timing.Latency.to_dict()``) as one line: median, p90, repetitions."""
    if not lat:
        return ""
    return f"{lat['median_ms']:.4g} ms (p90 {lat.get('p90_ms', float('nan')):.4g}, {lat.get('repetitions', '?')} runs)"


def _list(items) -> str:
    return "<ul>" + "".join(f"<li>{escape(str(x))}</li>" for x in items) + "</ul>"


def _quantize(d: dict) -> str:
    out = [kv({k: d.get(k) for k in ("source", "mode", "engine", "method", "quantized_layers", "calibration_samples",
                                      "budget", "budget_met", "saved_to") if d.get(k) is not None})]
    if d.get("notes"):
        out.append(_list(d["notes"]))
    if d.get("float_layers"):
        out += ["<h3>left in float</h3>", table(list(d["float_layers"].items()), ["layer", "why"])]
    if d.get("accuracy"):
        out += ["<h3>accuracy</h3>", kv({k: v for k, v in d["accuracy"].items() if v is not None})]
    if d.get("budget_steps"):
        out += ["<h3>budget search</h3>", records(d["budget_steps"])]
    sp = d.get("speed")
    if sp:
        fp32, q = sp.get("fp32") or {}, sp.get("quantized") or {}
        speedup = sp.get("speedup")
        faster = None if speedup is None else speedup >= 1.0
        out += [f"<h3>speed on {escape(str(sp.get('engine', '')))}</h3>",
                table([["fp32", _latency(fp32)], ["quantized", _latency(q)]], ["model", "latency"]),
                f"<p>speed-up (fp32 ÷ quantized latency) {cell(speedup)}× {verdict(faster, 'faster', 'not faster')}</p>"]
        if sp.get("reasons"):
            out += ["<p>why:</p>", _list(sp["reasons"])]
    if d.get("diagnosis"):
        out.append(_diagnosis(d["diagnosis"]))
    return "".join(out)


def _inspect(d: dict) -> str:
    ops = sorted((d.get("op_types") or {}).items(), key=lambda kv_: -kv_[1])
    summary = {k: d.get(k) for k in ("model", "producer", "ir_version", "opsets", "node_count", "total_flops",
                                     "total_bytes")}
    summary["opsets"] = ", ".join(f"{dom or 'ai.onnx'} {v}" for dom, v in (d.get("opsets") or {}).items())
    io = [{**t, "shape": "x".join("?" if x is None else str(x) for x in t["shape"])}
          if isinstance(t.get("shape"), list) else t for t in d.get("inputs", []) + d.get("outputs", [])]
    return "".join([kv(summary), "<h3>inputs / outputs</h3>", records(io),
                    "<h3>nodes by op type</h3>", svg.bars(ops[:30], unit="nodes"),
                    "<h3>problems</h3>", records(d.get("problems", []))])


def _run(d: dict) -> str:
    return "".join(["<h3>inputs</h3>", records(d.get("inputs", [])), "<h3>outputs</h3>", records(d.get("outputs", []))])


RENDERERS: dict[str, Callable[[dict], str]] = {
    "bench": _bench, "profile": _profile, "convert": _convert, "compare": _compare, "optimize": _optimize,
    "quantize": _quantize, "quant_diagnosis": _diagnosis, "inspect": _inspect, "run": _run,
}


def _title(d: dict) -> str:
    for key in ("model", "candidate", "source", "reference"):
        if isinstance(d.get(key), str):
            return d[key]
    return ""


def section(d: dict, index: int) -> str:
    """The section for one result dict."""
    kind = str(d.get("kind", "result"))
    render = RENDERERS.get(kind)
    body = ""
    if render is not None:
        try:
            body = render(d)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            body = f'<p class="note">this {escape(kind)} result has a shape the report does not know ({escape(repr(e))}); ' \
                   "its fields follow</p>" + kv(d)
    else:
        body = kv(d)
    fields = f"<details><summary>all fields</summary>{kv(d)}</details>" if render is not None else ""
    return (f'<section id="r{index}" data-kind="{escape(kind)}"><h2>{escape(kind)}'
            f'{": " + escape(_title(d)) if _title(d) else ""}</h2>{body}{fields}</section>')
