"""Per-kernel times from ONNX Runtime's profiler, mapped back to the model's nodes.

The session saves its optimized graph (``optimized_model_filepath``), which names every kernel the profiler
reports, so the mapping is exact rather than guessed from names: a kernel's anchors are the ONNX producers of its
outputs that exist in the original model, the tensor an ``…_nchwc`` kernel is named after, and the original node of
the same name. ``ReorderInput``/``ReorderOutput`` (NCHWc layout changes ORT inserts) are kept as layout rows.

Where a run's time goes, from the profile's own timestamps: ``model_run`` (the session's run) contains
``SequentialExecutor::Execute``, which contains the ``…_kernel_time`` events. Execute's time outside every kernel
is the executor's overhead (between kernels: the profiler's own recording, allocation planning, the next node's
setup); the wall time outside Execute is the Python call (binding, feed and output conversion, the session's run
preamble). Subgraphs (If, Loop) are timed inside their kernel: their nodes and nested Execute spans are not counted
a second time. An unprofiled session of the same model runs after each profiled run: ORT's profiler records the
node's arguments (shapes, memory, thread-pool statistics) before it stops a kernel's clock, which adds a few µs
to every kernel, so the unprofiled runs give the model's real latency beside the profiled breakdown.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import tempfile
from collections.abc import Mapping

import numpy as np
import onnx
import onnx_ir as ir

from ..engines.base import EngineOptions
from ..engines.ort import session_options
from ..errors import BushuError
from .mapping import producers
from .measure import Kernel, Measurement, repeat

_LAYOUT = {"ReorderInput", "ReorderOutput"}


def _anchors(node: onnx.NodeProto, model: ir.Model, made_by: dict[str, ir.Node], names: set[str]) -> tuple[str, ...]:
    found = [made_by[t].name for t in node.output if t in made_by]
    if node.name.endswith("_nchwc") and node.name[: -len("_nchwc")] in made_by:
        found.append(made_by[node.name[: -len("_nchwc")]].name)
    if node.name in names:
        found.append(node.name)
    return tuple(dict.fromkeys(found))


def _spans(events: list[dict], name: str) -> list[tuple[float, float]]:
    return sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e.get("cat") == "Session" and e.get("name") == name)


def _execute_us(runs: list[tuple[float, float]], executes: list[tuple[float, float]]) -> list[float]:
    """Per run, the executor's time (its Execute span inside the run; the run itself when the version logs none).

    A control-flow kernel (If, Loop, Scan) runs its subgraph in an Execute span of its own, nested in the run's:
    the spans are merged (their union), so the nested time is counted once."""
    out = []
    for start, end in runs:
        total, reach = 0.0, -float("inf")
        for s, e in sorted((s, e) for s, e in executes if start <= s <= end):
            if e > reach:
                total += e - max(s, reach)
                reach = e
        out.append(total if reach > -float("inf") else end - start)
    return out


def measure(model: ir.Model, feed: Mapping[str, np.ndarray], options: EngineOptions, *, warmup_s: float = 0.2,
            budget_s: float = 1.0, min_runs: int = 10, max_runs: int = 200) -> Measurement:
    """Profile ``model`` (nodes already named, see :func:`bushu.profile.mapping.name_nodes`) on ``feed``."""
    import onnxruntime as ort

    from .. import ir as bir

    with tempfile.TemporaryDirectory(prefix="bushu-profile-") as tmp:
        so = session_options(dataclasses.replace(options, profile=True))
        so.profile_file_prefix = os.path.join(tmp, "ort")
        so.optimized_model_filepath = os.path.join(tmp, "optimized.onnx")
        try:
            data = bir.to_bytes(model)
            sess = ort.InferenceSession(data, sess_options=so, providers=["CPUExecutionProvider"])
            plain = ort.InferenceSession(data, sess_options=session_options(dataclasses.replace(options, profile=False)),
                                         providers=["CPUExecutionProvider"])
            warm, run_ms, plain_ms = repeat(lambda: sess.run(None, dict(feed)), warmup_s=warmup_s, budget_s=budget_s,
                                            min_runs=min_runs, max_runs=max_runs,
                                            plain=lambda: plain.run(None, dict(feed)))
        except Exception as e:
            raise BushuError(f"ONNX Runtime could not run the model: {str(e).strip().splitlines()[0]}") from None
        with open(sess.end_profiling()) as f:
            events = json.load(f)
        optimized = onnx.load(os.path.join(tmp, "optimized.onnx"), load_external_data=False)
    made_by = producers(model)
    names = {n.name for n in model.graph}
    kernels = {n.name: Kernel(n.name, n.op_type, () if n.op_type in _LAYOUT else _anchors(n, model, made_by, names),
                              layout=n.op_type in _LAYOUT) for n in optimized.graph.node}
    runs = _spans(events, "model_run")[warm:]
    execute_us = _execute_us(runs, _spans(events, "SequentialExecutor::Execute"))
    per_run: list[collections.Counter] = [collections.Counter() for _ in runs]
    starts = [r[0] for r in runs]
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time"):
            continue
        if e["name"][: -len("_kernel_time")] not in kernels:
            continue  # a subgraph's node: its time is inside its If/Loop kernel's
        i = int(np.searchsorted(starts, e["ts"], side="right")) - 1
        if 0 <= i < len(runs) and e["ts"] <= runs[i][1]:
            per_run[i][e["name"][: -len("_kernel_time")]] += e["dur"]
    for counts in per_run:
        for name, k in kernels.items():
            k.times_us.append(float(counts.get(name, 0.0)))
    executed = [k for k in kernels.values() if any(k.times_us)]
    between = [max(0.0, ex - sum(c.values())) / 1e3 for ex, c in zip(execute_us, per_run)]
    n = len(runs)
    return Measurement("ort", executed, run_ms[-n:] if runs else run_ms, between_ms=between,
                       plain_ms=plain_ms[-n:] if runs else plain_ms)
