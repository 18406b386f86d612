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
A second, unprofiled compiled model runs in alternation with the profiled one, for the real latency.

**The counters are running means, not the last run.** OpenVINO's CPU plugin adds each layer's time, floored to
whole µs, to a total kept since the model was compiled, and ``get_profiling_info()`` returns ``total // runs``
(``Graph::GetPerfData``, ``PerfCount::avg``). Read after each run as if it were that run's time, the counters
carried the first runs in them: the first run of a compiled model repacks the weights, and on resnet18-like it
put ~200 ms into one convolution's counter, which still weighed on the mean a hundred runs later (the layers
then summed to 1.08–1.17 of the run). So this backend rebuilds each layer's total from the mean and the number of
runs (the midpoint of ``[mean·n, mean·n + n − 1]``) and takes differences: a layer's time in a *window* of
consecutive timed runs is the growth of its total over the window ÷ the window's runs, set beside the window's
mean wall time and mean round trip. The warm-up runs fall outside every window. A window's per-layer error is
below ``(n_start + n_end) / (2 · runs in the window)`` µs, so the number of windows is chosen to keep the summed
error small against the run (one window on a model of many short layers, up to ten on a long one);
``WINDOW_ERROR`` bounds it. Each run's time is floored to whole µs before it is added: a layer's mean reads
about 0.5 µs low, which this backend adds back to every layer that ran (``FLOOR_US``).
"""

from __future__ import annotations

import dataclasses
import itertools
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
        if spec.name in sess.bound:  # made a constant of the model (bushu.engines.openvino.bind_scalars)
            continue
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
    return OpenVinoSession(compiled, list(sess.inputs), list(sess.outputs), sess.bound)


def totals_us(means_us: Mapping[str, int], runs: int) -> dict[str, float]:
    """Each layer's total µs over the ``runs`` runs since compiling, from OpenVINO's reported means (``total //
    runs``): the midpoint of the totals that floor to that mean. A layer that reads 0 gets 0 (it never ran, or
    always under 1 µs)."""
    return {k: (m * runs + (runs - 1) / 2 if m else 0.0) for k, m in means_us.items()}


def windows(timed: int, wall_ms: float, layers: int, last_count: int) -> int:
    """How many windows to split ``timed`` runs into: the most (at most 10, none under 10 runs) whose last and
    widest window keeps the expected summed error of its ``layers`` means (each uniform within ``±(n_start + n_end)
    / (2 · runs in the window)`` µs, ``last_count`` the runs at the end) under ``WINDOW_ERROR`` of a run of
    ``wall_ms``."""
    for k in range(min(10, timed // 10), 1, -1):
        size = timed / k
        half = (2 * last_count - size) / (2 * size)
        if half / np.sqrt(3) * np.sqrt(max(1, layers)) <= WINDOW_ERROR * wall_ms * 1e3:
            return k
    return 1


# a window's summed per-layer error (its standard deviation) may be this share of a run at most
WINDOW_ERROR = 0.005
# each run's time is floored to whole µs by OpenVINO before it is summed: the expected loss per layer and run
FLOOR_US = 0.5


def _means(request) -> dict[str, int]:
    out: dict[str, int] = {}
    for p in request.get_profiling_info():  # a fused layer is listed again under its host, with 0: sum by name
        out[p.node_name] = out.get(p.node_name, 0) + round(p.real_time.total_seconds() * 1e6)
    return out


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
    runs = 1  # floor_session ran the profiled session once
    totals: list[tuple[int, dict[str, float]]] = []  # after each run: (runs so far, each layer's total µs)
    wall_ms: list[float] = []
    floor_ms: list[float] = []

    def run_once() -> None:
        nonlocal runs
        t0 = time.perf_counter()
        sess.run(feed)
        wall_ms.append((time.perf_counter() - t0) * 1e3)  # reading the counters is not part of the run
        runs += 1
        totals.append((runs, totals_us(_means(sess.request), runs)))
        t0 = time.perf_counter()
        floor.run(feed)
        floor_ms.append((time.perf_counter() - t0) * 1e3)

    warm, _, plain_ms = repeat(run_once, warmup_s=warmup_s, budget_s=budget_s, min_runs=min_runs, max_runs=max_runs,
                               plain=lambda: plain.run(feed))
    timed = len(wall_ms) - warm
    ran = [name for name, t in totals[-1][1].items() if t > totals[warm - 1][1].get(name, 0.0)]
    n_windows = windows(timed, float(np.median(wall_ms[warm:])), len(ran), totals[-1][0])
    edges = [warm + round(i * timed / n_windows) for i in range(n_windows + 1)]
    run_ms, between = [], []
    for a, b in itertools.pairwise(edges):
        (n0, t0), (n1, t1) = totals[a - 1], totals[b - 1]
        for name, kern in kernels.items():
            grown = (t1.get(name, 0.0) - t0.get(name, 0.0)) / (n1 - n0)
            kern.times_us.append(grown + FLOOR_US if grown > 0 else 0.0)
        run_ms.append(float(np.mean(wall_ms[a:b])))
        between.append(float(np.mean(floor_ms[a:b])))
    return Measurement("openvino", [k for k in kernels.values() if any(k.times_us)], run_ms, plain_ms=plain_ms,
                       between_ms=between, between_label=REQUEST, rest_label=REST, runs=timed)
