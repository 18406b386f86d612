"""The result of ``bushu.profile``."""

from __future__ import annotations

import dataclasses

from ..results import Result, fmt_table, human_count
from .join import KernelRow, OpTypeRow

# per-op times must add up to the end-to-end latency within this fraction
COVERAGE_TOLERANCE = 0.10


@dataclasses.dataclass(frozen=True)
class ProfileResult(Result):
    """Per-kernel and per-op-type time joined with FLOPs, bytes and the machine's peaks.

    Truthy when the kernel times of a run plus the engine's measured overhead (``executor_ms``: ORT's executor
    between kernels, OpenVINO's infer request round trip on a no-layer model) add up to that run's end-to-end time
    within 10 % (``accounted``: the median over runs of their ratio; ``coverage`` is the kernels alone): otherwise the run spends time nobody timed (the Python call, waits) and the per-op table should be read
    with care. ``latency_ms`` is the model's unprofiled latency, measured in alternation with the profiled runs:
    a profiler costs time of its own (ORT's adds a few µs to every kernel), so on a model of many tiny kernels the
    profiled run, and each tiny kernel's time, is longer than the model runs without it.
    """

    kind = "profile"
    model: str
    engine: str
    shapes: dict
    threads: int | None
    runs: int
    e2e_ms: float  # median wall time of the profiled runs
    kernels_ms: float  # sum of the kernels' median times
    coverage: float  # median over runs of (sum of kernel times / wall time of that run)
    rows: tuple[KernelRow, ...]
    by_op: tuple[OpTypeRow, ...]
    total_flops: int | None
    peaks: object
    machine: object
    trace: str | None = None
    unattributed: tuple[str, ...] = ()  # ONNX nodes with FLOPs that no kernel claimed
    accounted: float | None = None  # median over runs of (kernels + executor between kernels) / wall time
    executor_ms: float | None = None  # median per run: the engine's executor outside every kernel (None: not timed)
    latency_ms: float | None = None  # median wall time of the unprofiled runs, interleaved with the profiled ones
    # where a profiled run goes: (part, median ms per run, median share of the run) for the kernels, the executor
    # between them (when the engine's profiler times it) and the rest (the Python call, waits for other processes)
    parts: tuple[tuple[str, float, float], ...] = ()
    # what ``executor_ms`` measures: ORT's executor between kernels, OpenVINO's infer request round trip
    executor_label: str | None = None

    def __bool__(self) -> bool:
        return abs((self.coverage if self.accounted is None else self.accounted) - 1.0) <= COVERAGE_TOLERANCE

    @property
    def profiler_slowdown(self) -> float | None:
        """Profiled run ÷ unprofiled run (medians of runs taken in alternation)."""
        return self.e2e_ms / self.latency_ms if self.latency_ms else None

    def top(self, n: int = 5) -> list[KernelRow]:
        return sorted(self.rows, key=lambda r: -r.time_ms)[:n]

    def __str__(self) -> str:
        lat = self.latency_ms or self.e2e_ms
        achieved = (f", {self.total_flops / (lat * 1e6):.1f} GFLOP/s overall" if self.total_flops else "")
        executor = (f" + {self.executor_label or 'executor overhead'} {self.executor_ms:.3f} ms "
                    f"({100 * self.accounted:.0f} % with it)" if self.executor_ms is not None else "")
        plain = (f"; unprofiled {self.latency_ms:.3f} ms (the profiler's slowdown {self.profiler_slowdown:.2f}x)"
                 if self.latency_ms else "")
        kernels = self.parts[0][1] if self.parts else self.kernels_ms  # the median run's, like the percentage
        return (f"{self.model} on {self.engine}: {self.e2e_ms:.3f} ms per profiled run, kernels {kernels:.3f} ms "
                f"({100 * self.coverage:.0f} %){executor}{plain}{achieved}; {len(self.rows)} kernels over {self.runs} runs")

    def render(self) -> str:
        def f(x, spec):
            return "" if x is None else format(x, spec)

        ops = [[r.op_type, r.kernels, f"{r.time_ms:.3f}", f"{r.time_pct:.1f}", human_count(r.flops) if r.flops else "",
                f(r.gflops_s, ".2f"), f(r.pct_peak, ".1f")] for r in self.by_op]
        top = [[r.name[:40], r.onnx_op, f"{r.time_ms:.3f}", f"{r.time_pct:.1f}", human_count(r.flops) if r.flops else "",
                f(r.gflops_s, ".2f"), f(r.intensity, ".1f"), f(r.pct_peak, ".1f"), r.bound] for r in self.top(10)]
        lines = [str(self), "",
                 "by op type",
                 fmt_table(ops, ["op", "kernels", "ms", "% time", "FLOPs", "GFLOP/s", "% peak"]), "",
                 "top kernels",
                 fmt_table(top, ["kernel", "op", "ms", "% time", "FLOPs", "GFLOP/s", "FLOP/B", "% peak", "bound"]), "",
                 "where a profiled run goes",
                 fmt_table([[k, f"{v:.3f}", f"{100 * f:.1f}"] for k, v, f in self.parts],
                           ["part", "ms (median run)", "% of the run (median)"]), "",
                 f"machine: {self.peaks}", f"         {self.machine}"]
        if not self:
            what = "kernels and the engine's measured overhead" if self.executor_ms is not None else "kernels"
            share = self.coverage if self.accounted is None else self.accounted
            lines.append(f"NOTE: {what} add up to {100 * share:.0f} % of the end-to-end time (outside ±10 %)")
        if self.profiler_slowdown and self.profiler_slowdown > 1 + COVERAGE_TOLERANCE:
            lines.append(f"NOTE: the profiled run took {self.profiler_slowdown:.2f}x the unprofiled one "
                         f"({self.latency_ms:.3f} ms): the profiler's own cost, about "
                         f"{1e3 * (self.e2e_ms - self.latency_ms) / max(1, len(self.rows)):.1f} µs per kernel; "
                         "tiny kernels' times are mostly that")
        if self.unattributed:
            lines.append(f"NOTE: {len(self.unattributed)} nodes with FLOPs matched no kernel: "
                         + ", ".join(self.unattributed[:5]) + ("…" if len(self.unattributed) > 5 else ""))
        if self.trace:
            lines.append(f"trace: {self.trace} (open in ui.perfetto.dev)")
        return "\n".join(lines)
