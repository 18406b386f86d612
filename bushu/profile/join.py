"""Measured kernel times ⨝ each node's FLOPs and bytes (``bushu.inspect.node_costs``) ⨝ the machine's peaks.

Per kernel: the median of its per-run times; FLOPs and bytes summed over the ONNX nodes it ran (bytes are an upper
bound for fused kernels: a tensor passed between fused nodes is counted though it may stay in cache); achieved
GFLOP/s; arithmetic intensity (FLOP/byte); % of the peak GFLOP/s; and the bound: ``compute`` when the intensity is
above the ridge point (peak FLOP/s ÷ bandwidth), else ``memory``. The peak is scaled to the threads used.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Sequence

import numpy as np

from .measure import Kernel
from .peaks import Peaks


@dataclasses.dataclass(frozen=True)
class KernelRow:
    name: str  # the engine's kernel name
    op_type: str  # the engine's kernel type (FusedConv, Convolution, ReorderInput…)
    onnx_op: str  # the ONNX op that dominates the kernel (most FLOPs), or the engine's type for layout kernels
    nodes: tuple[str, ...]  # the ONNX nodes it ran
    time_ms: float
    time_pct: float
    flops: int | None
    bytes: int | None
    gflops_s: float | None
    intensity: float | None
    pct_peak: float | None
    bound: str  # compute | memory | layout | unknown


@dataclasses.dataclass(frozen=True)
class OpTypeRow:
    op_type: str
    kernels: int
    time_ms: float
    time_pct: float
    flops: int | None
    gflops_s: float | None
    pct_peak: float | None


def _dominant(nodes: Sequence[str], costs: dict, fallback: str) -> str:
    known = [costs[n] for n in nodes if n in costs]
    if not known:
        return fallback
    return max(known, key=lambda c: c.flops or 0).op_type


def _sum(values: list[int | None]) -> int | None:
    known = [v for v in values if v is not None]
    return sum(known) if known else None


def kernel_rows(kernels: Sequence[Kernel], covered: Sequence[tuple[str, ...]], costs: dict, peaks: Peaks,
                thread_share: float) -> list[KernelRow]:
    peak = peaks.gflops * thread_share
    ridge = peak / peaks.bandwidth_gbs
    medians = [float(np.median(k.times_us)) / 1e3 for k in kernels]
    total = sum(medians) or 1.0
    rows = []
    for k, nodes, ms in zip(kernels, covered, medians):
        flops = _sum([costs[n].flops for n in nodes if n in costs])
        nbytes = _sum([costs[n].bytes for n in nodes if n in costs])
        gflops = flops / (ms * 1e6) if flops is not None and ms > 0 else None
        intensity = flops / nbytes if flops is not None and nbytes else None
        if k.layout:
            bound = "layout"
        elif intensity is None:
            bound = "unknown"
        else:
            bound = "compute" if intensity >= ridge else "memory"
        rows.append(KernelRow(k.name, k.op_type, f"{k.op_type} (layout)" if k.layout else _dominant(nodes, costs, k.op_type),
                              tuple(nodes), ms, 100 * ms / total, flops, nbytes, gflops, intensity,
                              None if gflops is None else 100 * gflops / peak, bound))
    return rows


def by_op_type(rows: Sequence[KernelRow], peak_gflops: float) -> list[OpTypeRow]:
    groups: dict[str, list[KernelRow]] = collections.defaultdict(list)
    for r in rows:
        groups[r.onnx_op].append(r)
    total = sum(r.time_ms for r in rows) or 1.0
    out = []
    for op, rs in groups.items():
        ms = sum(r.time_ms for r in rs)
        flops = _sum([r.flops for r in rs])
        gflops = flops / (ms * 1e6) if flops and ms > 0 else None
        out.append(OpTypeRow(op, len(rs), ms, 100 * ms / total, flops, gflops,
                             None if gflops is None else 100 * gflops / peak_gflops))
    return sorted(out, key=lambda r: -r.time_ms)
