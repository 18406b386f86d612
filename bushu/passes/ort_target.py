"""``--target ort``: ONNX Runtime contrib fusions, each kept only where ONNX Runtime runs the model faster with it.

After the generic pipeline, every fusion of :data:`bushu.passes.pipeline.TARGETS` ``["ort"]`` runs on a copy of
the model (then ``dead-code``), is verified like any pass, and is timed against the model without it: both on
ONNX Runtime with all its optimizations (so what ORT fuses by itself at load is in both), 2 threads, in
interleaved rounds (A, B, B, A, ...) so background load hits both alike. The fusion is kept when the fused model is
faster in at least three rounds out of four (the upper quartile of the per-round ratios fused/unfused is below 1)
and by at least 2 % (median ratio below 0.98), else reverted; either way the report notes the measured ratio with
its interquartile range.

A model written for ``--target ort`` holds ``com.microsoft`` ops: it is for ONNX Runtime only (OpenVINO and the
other engines don't run them).
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import onnx_ir as ir

from .. import engines
from ..engines.base import EngineOptions
from ..errors import BushuError
from ..timing import measure_interleaved
from . import pipeline, registry
from .registry import PassContext
from .result import Step
from .verify import Verifier

TARGETS = ("generic", "ort")
MIN_GAIN = 0.02  # a fusion must save at least 2 % (median) to be kept: below that it is noise on this kind of run
_BENCH = EngineOptions(opt_level="all", threads=2, spin=False)  # spin off: two sessions share the process


@dataclasses.dataclass(frozen=True)
class Ratio:
    """Latency of B over A per interleaved round: the median and the interquartile range (the noise)."""

    median: float
    q25: float
    q75: float
    a_ms: float
    b_ms: float
    rounds: int

    def __str__(self) -> str:
        return (f"x{self.median:.3f} (IQR {self.q25:.3f}-{self.q75:.3f}, {self.b_ms:.3f} vs {self.a_ms:.3f} ms "
                f"median, {self.rounds} interleaved rounds)")


def interleaved_ratio(a: ir.Model, b: ir.Model, feed, rounds: int = 8, block_s: float = 0.15) -> Ratio:
    """Time ``a`` and ``b`` on ONNX Runtime (all optimizations, 2 threads) in alternating blocks of ``block_s``
    seconds (A B, then B A, ...); the per-round median latencies give the ratio b/a."""
    sa, sb = engines.open_session(a, "ort", _BENCH), engines.open_session(b, "ort", _BENCH)
    fa = {s.name: feed[s.name] for s in sa.inputs if s.name in feed}
    fb = {s.name: feed[s.name] for s in sb.inputs if s.name in feed}
    (_, _), per_round = measure_interleaved([lambda: sa.run(fa), lambda: sb.run(fb)], rounds=rounds, warmup_s=0.1,
                                            budget_s=block_s * rounds)
    ta, tb = per_round[:, 0], per_round[:, 1]
    ratios = tb / ta
    q25, med, q75 = np.percentile(ratios, [25, 50, 75])
    return Ratio(float(med), float(q25), float(q75), float(np.median(ta)), float(np.median(tb)), rounds)


def check_target(target: str) -> str:
    if target not in TARGETS:
        raise BushuError(f"unknown --target '{target}': choose {' or '.join(TARGETS)}")
    return target


def apply(work: ir.Model, target: str, ctx: PassContext, verifier: Verifier | None, feeds,
          skip=()) -> tuple[ir.Model, list[Step]]:
    """Run ``target``'s fusions on ``work`` one by one (but ``skip``), keeping each only when verified and faster."""
    steps: list[Step] = []
    dead_code = registry.get("dead-code")
    for name in [n for n in pipeline.TARGETS[check_target(target)] if n not in skip]:
        info = registry.get(name)
        t0 = time.perf_counter()
        candidate = work.clone()
        try:
            count = info.run(candidate, ctx)
            if count:
                dead_code.run(candidate, ctx)
        except Exception as e:  # noqa: BLE001 -- a fusion bug must not lose the user's model
            steps.append(Step(name, 0, time.perf_counter() - t0, "crashed", f"{type(e).__name__}: {e}"))
            continue
        if not count:
            steps.append(Step(name, 0, time.perf_counter() - t0, "unchanged"))
            continue
        failure = verifier.check(candidate) if verifier is not None else None
        if failure is not None:
            steps.append(Step(name, count, time.perf_counter() - t0, "rolled back", failure.reason))
            continue
        ratio = interleaved_ratio(work, candidate, feeds[0])
        faster = ratio.q75 < 1.0 and ratio.median < 1.0 - MIN_GAIN
        ctx.note(f"--target ort: {name} {'kept' if faster else 'reverted (not faster)'}: {count} rewrites, "
                 f"ORT latency fused/unfused {ratio}")
        status = "kept" if faster else "reverted"
        steps.append(Step(name, count, time.perf_counter() - t0, status, f"latency {ratio}"))
        if faster:
            work = candidate
    if any(s.status == "kept" for s in steps):  # type the values the fusions wrote: rerunning changes nothing
        registry.get("shape-inference").run(work, ctx)
    return work, steps
