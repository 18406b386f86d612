"""Benchmark one model on one engine at several batch sizes, in this process.

``python -m bushu.bench.worker`` reads a :class:`Job` as JSON on stdin and writes its rows as JSON on stdout, so
:func:`bushu.bench.bench` can give each model × engine a fresh process: peak memory is then that engine's alone,
and no idle session of another engine keeps threads spinning beside the one being timed.

Per job: the engine's library is imported and (ncnn, MNN) the conversion cache is filled first, so neither is
counted in load time or memory. Memory is the peak RSS above that baseline (taken once, before the first
session) during the load and the runs of each batch size (``VmHWM`` reset before each; see
:mod:`bushu.bench.memory`).
"""

from __future__ import annotations

import dataclasses
import gc
import importlib
import json
import os
import sys
import time

from .. import engines
from ..engines.base import EngineOptions, model_specs
from ..errors import BushuError
from ..inputs import resolve_shape, synthesize
from ..timing import measure
from . import memory

# the library each engine loads, imported before the memory baseline is taken
_LIBRARY = {"ort": "onnxruntime", "openvino": "openvino", "ncnn": "ncnn", "mnn": "bushu.engines.mnn"}


@dataclasses.dataclass(frozen=True)
class Job:
    model: str
    engine: str
    batches: tuple[int, ...] = (1,)
    threads: int | None = None
    opt_level: str = "all"
    shapes: dict = dataclasses.field(default_factory=dict)
    values: dict = dataclasses.field(default_factory=dict)
    warmup_s: float = 0.25
    budget_s: float = 1.0
    seed: int = 0

    @classmethod
    def from_dict(cls, d: dict) -> Job:
        shapes = {k: tuple(v) if isinstance(v, list) else v for k, v in d.get("shapes", {}).items()}
        return cls(**{**d, "batches": tuple(d["batches"]), "shapes": shapes})


def batch_shapes(specs, shapes: dict, batch: int) -> dict | str:
    """``shapes`` with the batch dim of every input whose first dim is dynamic set to ``batch``; inputs with a
    static first dim (a recurrent state, a static-batch model) keep their shape. A note (str) instead when
    ``batch`` > 1 and no input has a dynamic first dim: the model's batch is static."""
    out = dict(shapes)
    dynamic = False
    for spec in specs:
        full = resolve_shape(spec, shapes)
        first = spec.shape[0] if spec.shape else None
        if spec.shape and not (isinstance(first, int) and first >= 0):
            out[spec.name] = (batch, *full[1:])
            dynamic = True
    if batch > 1 and not dynamic:
        return f"the batch dim is static in every input ({', '.join(str(s) for s in specs)}): batch {batch} not run"
    return out


def _prepare(job: Job) -> None:
    lib = _LIBRARY.get(engines._ALIASES.get(job.engine, job.engine))
    if lib:
        try:
            importlib.import_module(lib)
        except ImportError:
            pass  # the engine's load() gives the one-line error naming the extra
    if job.engine in ("ncnn", "mnn"):
        from ..convert.targets import cached

        cached(job.model, job.engine, job.shapes, job.values)


def _error_rows(job: Job, note: str) -> list[dict]:
    return [{"model": job.model, "engine": job.engine, "batch": b, "status": "error", "note": note} for b in job.batches]


def run_job(job: Job) -> list[dict]:
    """One row per batch size: ``status`` ok/skipped/error, latency, throughput, load time, peak memory.

    Each batch size gets its own session with the shapes bound to it, as engines that compile for static shapes
    (OpenVINO, ncnn) run best; the previous session is closed first.
    """
    from .. import ir as bir

    try:
        _prepare(job)
        specs, _ = model_specs(bir.load(job.model))
    except BushuError as e:
        return _error_rows(job, str(e))
    gc.collect()
    # One baseline for all batch sizes: memory a closed session leaves with the allocator still counts as used.
    baseline = memory.rss_mib()
    rows = []
    for b in job.batches:
        row = {"model": job.model, "engine": job.engine, "batch": b}
        shapes = batch_shapes(specs, job.shapes, b)
        if isinstance(shapes, str):
            rows.append({**row, "status": "skipped", "note": shapes})
            continue
        gc.collect()
        memory.reset_peak()
        try:
            t0 = time.perf_counter()
            sess = engines.open_session(job.model, job.engine, EngineOptions(threads=job.threads, opt_level=job.opt_level,
                                                                             shapes=shapes, values=job.values))
            load_s = time.perf_counter() - t0
            feed = synthesize(sess.inputs, shapes=shapes, values=job.values, seed=job.seed)
            sess.run(feed)
            lat = measure(lambda: sess.run(feed), warmup_s=job.warmup_s, budget_s=job.budget_s)
        except BushuError as e:
            rows.append({**row, "status": "error", "note": str(e)})
            continue
        finally:
            sess = None  # close it before the next batch size opens its own
        peak = memory.peak_mib()
        rows.append({**row, "status": "ok", "latency": lat.to_dict(), "items_per_s": b * 1e3 / lat.median_ms,
                     "load_s": load_s, "peak_mem_mib": None if peak is None or baseline is None else peak - baseline})
    return rows


def main() -> int:
    job = Job.from_dict(json.load(sys.stdin))
    # Engines' C++ code may print on fd 1: send all of it to stderr and keep the real stdout for the JSON.
    sys.stdout.flush()
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    rows = run_job(job)
    sys.stdout.flush()
    out.write(json.dumps(rows))
    out.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
