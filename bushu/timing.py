"""The one timer for everything that reports latency, measured like ``triton.testing.do_bench``.

Warm up for a time budget, then time every repetition on its own, and report the median and quantiles (never the
mean alone), with the machine and library versions recorded next to the numbers.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import time
from collections.abc import Callable, Sequence
from functools import lru_cache

import numpy as np

from .results import Result


@dataclasses.dataclass(frozen=True)
class Machine(Result):
    """Where a number was measured."""

    kind = "machine"
    cpu: str
    cores: int
    memory_gib: float
    os: str
    python: str
    versions: dict[str, str]

    def __str__(self) -> str:
        vers = ", ".join(f"{k} {v}" for k, v in self.versions.items())
        return f"{self.cpu}, {self.cores} cores, {self.memory_gib:.0f} GiB, {self.os}; {vers}"


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    """The CPU's feature flags (``avx2``, ``avx512_vnni``, ``avx_vnni``, …); empty where unknown."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


@lru_cache(maxsize=1)
def machine() -> Machine:
    from importlib import metadata

    versions = {}
    for pkg in ("bushu", "onnx", "onnx-ir", "onnxruntime", "openvino", "torch", "numpy"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            continue
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        mem = float("nan")
    return Machine(
        cpu=_cpu_name(),
        cores=os.cpu_count() or 1,
        memory_gib=round(mem, 1),
        os=f"{platform.system()} {platform.release()}",
        python=platform.python_version(),
        versions=versions,
    )


@dataclasses.dataclass(frozen=True)
class Latency(Result):
    """Latency of one callable, in milliseconds."""

    kind = "latency"
    median_ms: float
    p10_ms: float
    p90_ms: float
    p99_ms: float
    min_ms: float
    max_ms: float
    repetitions: int
    warmup_s: float
    samples_ms: tuple[float, ...] = dataclasses.field(default=(), repr=False)

    def __str__(self) -> str:
        return (
            f"median {self.median_ms:.3f} ms (p10 {self.p10_ms:.3f}, p90 {self.p90_ms:.3f}, p99 {self.p99_ms:.3f}, "
            f"min {self.min_ms:.3f}; {self.repetitions} runs)"
        )

    @classmethod
    def from_samples(cls, samples_s: list[float] | np.ndarray, warmup_s: float = 0.0) -> Latency:
        ms = np.asarray(samples_s, dtype=np.float64) * 1e3
        q = np.quantile(ms, [0.1, 0.5, 0.9, 0.99])
        return cls(
            median_ms=float(q[1]),
            p10_ms=float(q[0]),
            p90_ms=float(q[2]),
            p99_ms=float(q[3]),
            min_ms=float(ms.min()),
            max_ms=float(ms.max()),
            repetitions=int(ms.size),
            warmup_s=warmup_s,
            samples_ms=tuple(float(x) for x in ms),
        )


def measure(
    fn: Callable[[], object],
    *,
    warmup_s: float = 0.25,
    budget_s: float = 1.0,
    min_reps: int = 10,
    max_reps: int = 10_000,
) -> Latency:
    """Time ``fn`` like ``triton.testing.do_bench``.

    Calls ``fn`` for ``warmup_s`` seconds (at least once), then times each call with ``perf_counter`` until
    ``budget_s`` has passed and at least ``min_reps`` calls were made (at most ``max_reps``).
    """
    clock = time.perf_counter
    start = clock()
    fn()
    while clock() - start < warmup_s:
        fn()
    samples: list[float] = []
    t_end = clock() + budget_s
    while len(samples) < max_reps:
        t0 = clock()
        fn()
        t1 = clock()
        samples.append(t1 - t0)
        if t1 >= t_end and len(samples) >= min_reps:
            break
    return Latency.from_samples(samples, warmup_s=warmup_s)


def measure_interleaved(
    fns: Sequence[Callable[[], object]],
    *,
    rounds: int = 6,
    warmup_s: float = 0.2,
    budget_s: float = 1.0,
    min_reps: int = 3,
) -> tuple[list[Latency], np.ndarray]:
    """Time several callables in alternating blocks, so that a drifting background load hits them alike.

    Each is warmed up for ``warmup_s``; then ``rounds`` rounds each give every callable a block of
    ``budget_s / rounds`` seconds, in forward order on even rounds and reversed on odd ones (A B, B A, ...).
    Returns one :class:`Latency` per callable over all its timed calls, and the per-round medians (rounds × n, ms),
    from which a ratio's noise (its interquartile range over rounds) follows.
    """
    for fn in fns:
        measure(fn, warmup_s=warmup_s, budget_s=0.0, min_reps=1)
    block_s = budget_s / rounds
    samples: list[list[float]] = [[] for _ in fns]
    medians = np.zeros((rounds, len(fns)))
    for r in range(rounds):
        order = range(len(fns)) if r % 2 == 0 else reversed(range(len(fns)))
        for i in order:
            lat = measure(fns[i], warmup_s=0.0, budget_s=block_s, min_reps=min_reps)
            samples[i].extend(x / 1e3 for x in lat.samples_ms)
            medians[r, i] = lat.median_ms
    return [Latency.from_samples(s, warmup_s=warmup_s) for s in samples], medians
