"""A Chrome-trace / Perfetto JSON of one profiled run (open it in ui.perfetto.dev or chrome://tracing).

Track 1 lays the kernels end to end with their median times, in execution order; each event's ``args`` carry the
ONNX nodes, FLOPs, GFLOP/s and bound. Track 2 is the median end-to-end run, so the gap between the two shows the
time no kernel accounts for.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from .join import KernelRow


def trace_events(rows: Sequence[KernelRow], e2e_ms: float, label: str) -> dict:
    events = [{"ph": "M", "pid": 1, "name": "process_name", "args": {"name": label}},
              {"ph": "M", "pid": 1, "tid": 1, "name": "thread_name", "args": {"name": "kernels (median)"}},
              {"ph": "M", "pid": 1, "tid": 2, "name": "thread_name", "args": {"name": "end to end (median)"}}]
    ts = 0.0
    for r in rows:
        dur = r.time_ms * 1e3
        events.append({"ph": "X", "pid": 1, "tid": 1, "ts": round(ts, 3), "dur": round(dur, 3), "name": r.name,
                       "cat": r.onnx_op, "args": {"op_type": r.op_type, "onnx_nodes": list(r.nodes), "flops": r.flops,
                                                  "bytes": r.bytes, "gflops_s": r.gflops_s, "bound": r.bound}})
        ts += dur
    events.append({"ph": "X", "pid": 1, "tid": 2, "ts": 0, "dur": round(e2e_ms * 1e3, 3), "name": "run", "cat": "run"})
    return {"traceEvents": events, "displayTimeUnit": "ms"}


def write_trace(path: str | os.PathLike, rows: Sequence[KernelRow], e2e_ms: float, label: str) -> Path:
    """Write the trace to ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(trace_events(rows, e2e_ms, label), f)
    os.chmod(tmp, 0o644)  # mkstemp makes it private; the result is an ordinary file
    os.replace(tmp, path)
    return path
