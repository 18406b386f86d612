"""``bushu.profile``: where a model's time goes on an engine, per kernel and per op type, against the roofline."""

from __future__ import annotations

import importlib
import os

import numpy as np
import onnx_ir as ir

from ..engines.base import EngineOptions, model_specs
from ..errors import BushuError
from ..inputs import check_feed, load_feeds, synthesize
from ..timing import machine
from . import mapping
from .join import by_op_type, kernel_rows
from .peaks import peaks
from .result import ProfileResult
from .trace import write_trace

BACKENDS = {"ort": "bushu.profile.ort", "onnxruntime": "bushu.profile.ort", "openvino": "bushu.profile.openvino",
            "ov": "bushu.profile.openvino"}


def profile(
    model: ir.Model | str | os.PathLike,
    engine: str = "ort",
    *,
    shapes: dict | None = None,
    values: dict | None = None,
    inputs=None,
    threads: int | None = None,
    opt_level: str = "all",
    warmup_s: float = 0.2,
    budget_s: float = 1.0,
    trace: str | os.PathLike | None = None,
    seed: int = 0,
) -> ProfileResult:
    """Profile ``model`` (a path, an ``ir.Model`` or a zoo name) on ``engine`` (``ort`` or ``openvino``).

    Runs the model for ``warmup_s`` then at least 10 times within ``budget_s`` with the engine's per-kernel
    profiler on (each run's wall time recorded beside its kernel times, and an unprofiled run of the same model
    after each one for the real latency), maps every kernel back to the ONNX nodes it ran (:mod:`bushu.profile.mapping`), joins FLOPs and
    bytes (:func:`bushu.inspect.node_costs`) and the machine's peaks (:func:`bushu.profile.peaks.peaks`), and writes
    a Chrome trace to ``trace`` when given. ``inputs`` (a .npz path or a mapping) replaces the synthesized feed.
    """
    from .. import ir as bir
    from ..bench.models import resolve
    from ..inspect import node_costs

    if engine not in BACKENDS:
        raise BushuError(f"profile supports the engines ort and openvino, not '{engine}'")
    backend = importlib.import_module(BACKENDS[engine])
    ref = resolve(model, shapes, values)
    m = bir.load(ref.source) if isinstance(ref.source, str) else ir.from_proto(ir.to_proto(ref.source))
    mapping.name_nodes(m)
    specs, _ = model_specs(m)
    if inputs is None:
        feed = synthesize(specs, shapes=ref.shapes, values=ref.values, seed=seed)
    else:
        feed = dict(inputs) if isinstance(inputs, dict) else load_feeds(inputs, specs)[0]
        check_feed(feed, specs, source=str(inputs) if not isinstance(inputs, dict) else "inputs")
    bound = {k: tuple(np.asarray(v).shape) for k, v in feed.items()}
    if engine in ("openvino", "ov"):  # the model OpenVINO compiles: scalar inputs given a value bound, If folded
        from ..engines.openvino import bind_scalars

        m, fixed = bind_scalars(m, ref.values)
        mapping.name_nodes(m)
        bound = {k: v for k, v in bound.items() if k not in fixed}
        feed = {k: v for k, v in feed.items() if k not in fixed}
    options = EngineOptions(threads=threads, opt_level=opt_level, shapes=bound, values=ref.values)
    measured = backend.measure(m, feed, options, warmup_s=warmup_s, budget_s=budget_s)
    costs = {c.name: c for c in node_costs(m, bound) if not c.graph}
    covered = mapping.attribute(m, [k.anchors for k in measured.kernels], renamed_heads=engine in ("openvino", "ov"))
    pk = peaks()
    share = min(1.0, (threads or machine().cores) / machine().cores)
    rows = kernel_rows(measured.kernels, covered, costs, pk, share)
    claimed = {n for c in covered for n in c}
    unattributed = tuple(n for n, c in costs.items() if n not in claimed and c.flops)
    e2e = float(np.median(measured.run_ms))
    # Coverage run by run (kernel times against the wall time of the same run), so that load from other processes,
    # which moves both alike, doesn't move the ratio. The executor's own time between kernels (where the engine's
    # profiler times it) is a separate row, never folded into the ops.
    kernel_sums = np.sum([k.times_us for k in measured.kernels], axis=0) / 1e3
    walls = np.asarray(measured.run_ms)
    coverage = float(np.median(kernel_sums / walls))
    between = np.asarray(measured.between_ms) if measured.between_ms else None
    accounted = float(np.median((kernel_sums + between) / walls)) if between is not None else coverage
    executor_ms = float(np.median(between)) if between is not None else None
    outside = walls - kernel_sums - (between if between is not None else 0.0)
    # where a profiled run goes: each part's median over runs, in ms and as a share of its run
    parts = [("kernels (the per-op rows)", kernel_sums)]
    if between is not None:
        parts.append((measured.between_label, between))
    parts.append((measured.rest_label if between is not None
                  else "outside the layers (scheduling, Python call, waits)", outside))
    parts = tuple((name, float(np.median(v)), float(np.median(v / walls))) for name, v in parts)
    latency_ms = float(np.median(measured.plain_ms)) if measured.plain_ms else None
    kernels_ms = sum(r.time_ms for r in rows)
    trace_path = str(write_trace(trace, rows, e2e, f"{ref.label} on {engine}")) if trace else None
    total_flops = sum(c.flops for c in costs.values() if c.flops) or None
    return ProfileResult(model=ref.label, engine=measured.engine, shapes=bound, threads=threads,
                         runs=measured.runs or len(measured.run_ms), e2e_ms=e2e, kernels_ms=kernels_ms, coverage=coverage, rows=tuple(rows),
                         accounted=accounted, executor_ms=executor_ms, latency_ms=latency_ms, parts=parts,
                         executor_label=measured.between_label if between is not None else None,
                         by_op=tuple(by_op_type(rows, pk.gflops * share)), total_flops=total_flops, peaks=pk,
                         machine=machine(), trace=trace_path, unattributed=unattributed)
