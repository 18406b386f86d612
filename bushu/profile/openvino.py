"""Per-layer times from OpenVINO's performance counters, mapped back to the model's nodes.

The model is compiled with ``PERF_COUNT`` (the ``openvino`` engine's ``profile`` option); after each run
``get_profiling_info()`` gives every executed layer's real time. The compiled runtime model lists, per layer,
``originalLayersNames``: the ONNX nodes fused into it (those names are the anchors). Layers with no original names
are the layout reorders OpenVINO inserted.

OpenVINO times layers, not the gaps between them, and its counters carry no timestamps. What a run spends outside
its layers is split in two by measurement: the **infer request's round trip** (the Python call, copying the feed
in, handing the request to OpenVINO's stream thread and waking the caller, copying the outputs out) is timed on a
*floor model*: the same inputs and outputs and no layer at all (each output a constant of the real output's shape
and type), compiled with the same settings and run through the same session code right after each profiled run.
The rest is OpenVINO's graph executor between its layers (and waits for other processes), which nothing times.
Under load the per-run ratio moves a lot, so this backend takes at least 30 runs and the result keeps medians. A
second, unprofiled compiled model runs in alternation with the profiled one, for the real latency.
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

REQUEST = "infer request round trip (a no-layer model, same inputs and outputs)"
REST = "outside every timer (OpenVINO between its layers, waits)"


def _rt(info, key: str) -> str:
    v = info.get(key) if hasattr(info, "get") else info[key]
    return v.astype(str) if hasattr(v, "astype") else str(v)


def floor_session(sess, feed: Mapping[str, np.ndarray], options: EngineOptions):
    """A session of the floor model of ``sess`` (an :class:`bushu.engines.openvino.OpenVinoSession`): its inputs and
    outputs, no layer (see the module docstring)."""
    import openvino as ov
    import openvino.opset13 as ops

    from ..engines.openvino import OpenVinoEngine, OpenVinoSession

    outs = sess.run(feed)
    params, results = [], []
    for spec in sess.inputs:
        a = np.asarray(feed[spec.name])
        p = ops.parameter(list(a.shape), ov.Type(a.dtype), name=spec.name)
        p.output(0).get_tensor().set_names({spec.name})
        params.append(p)
    for spec in sess.outputs:
        c = ops.constant(np.zeros_like(outs[spec.name]))
        c.output(0).get_tensor().set_names({spec.name})
        results.append(ops.result(c))
    cfg = OpenVinoEngine().config(dataclasses.replace(options, profile=False))
    compiled = ov.Core().compile_model(ov.Model(results, params, "bushu-floor"), "CPU", cfg)
    return OpenVinoSession(compiled, list(sess.inputs), list(sess.outputs))


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
    floor = floor_session(sess, feed, options)
    samples: list[dict[str, float]] = []
    wall_ms: list[float] = []
    floor_ms: list[float] = []

    def run_once() -> None:
        t0 = time.perf_counter()
        sess.run(feed)
        wall_ms.append((time.perf_counter() - t0) * 1e3)  # reading the counters is not part of the run
        samples.append({p.node_name: p.real_time.total_seconds() * 1e6 for p in sess.request.get_profiling_info()})
        t0 = time.perf_counter()
        floor.run(feed)
        floor_ms.append((time.perf_counter() - t0) * 1e3)

    warm, _, plain_ms = repeat(run_once, warmup_s=warmup_s, budget_s=budget_s, min_runs=min_runs, max_runs=max_runs,
                               plain=lambda: plain.run(feed))
    run_ms = wall_ms[warm:]
    for sample in samples[warm:]:
        for name, k in kernels.items():
            k.times_us.append(sample.get(name, 0.0))
    return Measurement("openvino", [k for k in kernels.values() if any(k.times_us)], run_ms, plain_ms=plain_ms,
                       between_ms=floor_ms[warm:], between_label=REQUEST, rest_label=REST)
