"""What an engine backend of the profiler returns: each kernel's time in every profiled run, and each run's
end-to-end time, in execution order."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable


@dataclasses.dataclass
class Kernel:
    """One kernel the engine ran: its engine name and op type, the ONNX node names it certainly covers
    (``anchors``; empty for layout conversions the engine inserted) and its time in each run, in µs."""

    name: str
    op_type: str
    anchors: tuple[str, ...]
    times_us: list[float] = dataclasses.field(default_factory=list)
    layout: bool = False  # a reorder/layout conversion the engine added


@dataclasses.dataclass
class Measurement:
    engine: str
    kernels: list[Kernel]
    run_ms: list[float]  # wall-clock time of each profiled run, as the caller sees it
    note: str = ""


def repeat(fn: Callable[[], None], *, warmup_s: float, budget_s: float, min_runs: int, max_runs: int) -> tuple[int, list[float]]:
    """Call ``fn`` for ``warmup_s`` (at least once), then time calls until ``budget_s`` and ``min_runs``;
    returns the number of warm-up calls and the timed durations in ms."""
    clock = time.perf_counter
    start = clock()
    warm = 0
    while warm == 0 or clock() - start < warmup_s:
        fn()
        warm += 1
    times: list[float] = []
    end = clock() + budget_s
    while len(times) < max_runs and (len(times) < min_runs or clock() < end):
        t0 = clock()
        fn()
        times.append((clock() - t0) * 1e3)
    return warm, times
