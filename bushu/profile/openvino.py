"""Per-layer times from OpenVINO's performance counters, mapped back to the model's nodes.

The model is compiled with ``PERF_COUNT`` (the ``openvino`` engine's ``profile`` option); after each run
``get_profiling_info()`` gives every executed layer's real time. The compiled runtime model lists, per layer,
``originalLayersNames``: the ONNX nodes fused into it (those names are the anchors). Layers with no original names
are the layout reorders OpenVINO inserted.

OpenVINO times layers, not the gaps between them, so a run's time outside every layer (the plugin's scheduling,
the Python call, waits for another process) is one remainder. Under load the per-run ratio moves a lot, so this
backend takes at least 30 runs and the result keeps medians. A second, unprofiled compiled model runs after each
profiled run, for the real latency beside the profiled one.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping

import numpy as np
import onnx_ir as ir

from ..engines import open_session
from ..engines.base import EngineOptions
from .measure import Kernel, Measurement, repeat


def _rt(info, key: str) -> str:
    v = info.get(key) if hasattr(info, "get") else info[key]
    return v.astype(str) if hasattr(v, "astype") else str(v)


def measure(model: ir.Model, feed: Mapping[str, np.ndarray], options: EngineOptions, *, warmup_s: float = 0.2,
            budget_s: float = 1.0, min_runs: int = 30, max_runs: int = 400) -> Measurement:
    """Profile ``model`` (nodes already named, see :func:`bushu.profile.mapping.name_nodes`) on ``feed``."""
    sess = open_session(model, "openvino", dataclasses.replace(options, profile=True))
    plain = open_session(model, "openvino", dataclasses.replace(options, profile=False))
    kernels: dict[str, Kernel] = {}
    for op in sess.compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        if _rt(info, "execTimeMcs") == "not_executed" and _rt(info, "layerType") in ("Input", "Output", "Const"):
            continue
        names = tuple(n for n in _rt(info, "originalLayersNames").split(",") if n)
        kind = _rt(info, "layerType")
        kernels[op.get_friendly_name()] = Kernel(op.get_friendly_name(), kind, names, layout=not names and kind == "Reorder")
    samples: list[dict[str, float]] = []
    wall_ms: list[float] = []

    def run_once() -> None:
        t0 = time.perf_counter()
        sess.run(feed)
        wall_ms.append((time.perf_counter() - t0) * 1e3)  # reading the counters is not part of the run
        samples.append({p.node_name: p.real_time.total_seconds() * 1e6 for p in sess.request.get_profiling_info()})

    warm, _, plain_ms = repeat(run_once, warmup_s=warmup_s, budget_s=budget_s, min_runs=min_runs, max_runs=max_runs,
                               plain=lambda: plain.run(feed))
    run_ms = wall_ms[warm:]
    for sample in samples[warm:]:
        for name, k in kernels.items():
            k.times_us.append(sample.get(name, 0.0))
    return Measurement("openvino", [k for k in kernels.values() if any(k.times_us)], run_ms, plain_ms=plain_ms)
