"""What an engine backend of the profiler returns: each kernel's time in every profiled run, each run's end-to-end
time, the engine's own time between kernels, and the wall time of an unprofiled run interleaved with each profiled
one (a profiler costs time of its own: the unprofiled runs say how much, under the same machine load)."""

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
    # per profiled run, the engine's time outside every kernel, measured: ORT's executor between kernels (from the
    # profiler's own timestamps), OpenVINO's infer request round trip (a no-layer model's run); empty: not timed
    between_ms: list[float] = dataclasses.field(default_factory=list)
    # wall time of an unprofiled run of the same model, one after each profiled run
    plain_ms: list[float] = dataclasses.field(default_factory=list)
    # what ``between_ms`` is, and what the rest of a run (outside the kernels and ``between_ms``) is
    between_label: str = "executor overhead (between kernels)"
    rest_label: str = "outside the engine's timers (Python call, waits)"
    # the timed runs when ``run_ms`` (and the kernels' times) are means over windows of runs, not one per run
    runs: int | None = None


def repeat(fn: Callable[[], None], *, warmup_s: float, budget_s: float, min_runs: int, max_runs: int,
           plain: Callable[[], None] | None = None, block: int = 5) -> tuple[int, list[float], list[float]]:
    """Call ``fn`` for ``warmup_s`` (at least once), then time calls until ``budget_s`` and ``min_runs``.

    With ``plain`` (the same work without the profiler), timed calls alternate in blocks of ``block``: ``fn``
    ``block`` times, then ``plain`` once untimed (the other session's threads settle) and ``block`` times timed,
    so that both see the same load from other processes. Returns the number of warm-up calls, the timed
    durations of ``fn`` (one per call after the warm-up) and those of ``plain``, in ms.
    """
    clock = time.perf_counter

    def timed(f: Callable[[], None]) -> float:
        t0 = clock()
        f()
        return (clock() - t0) * 1e3

    start = clock()
    warm = 0
    while warm == 0 or clock() - start < warmup_s:
        fn()
        warm += 1
    if plain is not None:
        plain()
    times: list[float] = []
    plain_ms: list[float] = []
    end = clock() + budget_s
    while len(times) < max_runs and (len(times) < min_runs or clock() < end):
        for _ in range(block if plain is not None else 1):
            times.append(timed(fn))
        if plain is not None:
            plain()
            plain_ms += [timed(plain) for _ in range(block)]
    return warm, times, plain_ms
