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

    Truthy when the kernel times of a run add up to that run's end-to-end time within 10 % (``coverage``: the
    median over runs of their ratio): otherwise the per-op table misses time (framework overhead, unprofiled work) and should be read
    with care.
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

    def __bool__(self) -> bool:
        return abs(self.coverage - 1.0) <= COVERAGE_TOLERANCE

    def top(self, n: int = 5) -> list[KernelRow]:
        return sorted(self.rows, key=lambda r: -r.time_ms)[:n]

    def __str__(self) -> str:
        achieved = (f", {self.total_flops / (self.e2e_ms * 1e6):.1f} GFLOP/s overall" if self.total_flops else "")
        return (f"{self.model} on {self.engine}: {self.e2e_ms:.3f} ms end to end, kernels {self.kernels_ms:.3f} ms "
                f"({100 * self.coverage:.0f} %){achieved}; {len(self.rows)} kernels over {self.runs} runs")

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
                 f"machine: {self.peaks}", f"         {self.machine}"]
        if not self:
            lines.append(f"NOTE: kernels add up to {100 * self.coverage:.0f} % of the end-to-end time (outside ±10 %)")
        if self.unattributed:
            lines.append(f"NOTE: {len(self.unattributed)} nodes with FLOPs matched no kernel: "
                         + ", ".join(self.unattributed[:5]) + ("…" if len(self.unattributed) > 5 else ""))
        if self.trace:
            lines.append(f"trace: {self.trace} (open in ui.perfetto.dev)")
        return "\n".join(lines)
