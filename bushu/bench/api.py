"""``bushu.bench``: latency, throughput, load time and peak memory per model × engine × batch size."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from importlib import metadata

import onnx_ir as ir

from ..errors import BushuError
from ..progress import progress
from ..timing import machine
from .models import resolve
from .result import BenchResult, BenchRow
from .worker import Job, run_job

_PACKAGES = {"ort": "onnxruntime", "openvino": "openvino", "ncnn": "ncnn", "mnn": "mnn", "reference": "onnx"}


def _in_subprocess(job: Job) -> list[dict]:
    proc = subprocess.run([sys.executable, "-m", "bushu.bench.worker"], input=json.dumps(dataclasses.asdict(job)),
                          capture_output=True, text=True)
    if proc.returncode != 0:
        why = f"signal {-proc.returncode}" if proc.returncode < 0 else f"exit {proc.returncode}"
        tail = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()][-1:] or [""]
        return [{"model": job.model, "engine": job.engine, "batch": b, "status": "error",
                 "note": f"the benchmark process died ({why}): {tail[0]}"} for b in job.batches]
    return json.loads(proc.stdout)


def _row(d: dict, label: str) -> BenchRow:
    lat = d.get("latency") or {}
    return BenchRow(model=label, engine=d["engine"], batch=d["batch"], status=d["status"], note=d.get("note"),
                    median_ms=lat.get("median_ms"), p90_ms=lat.get("p90_ms"), p99_ms=lat.get("p99_ms"),
                    min_ms=lat.get("min_ms"), repetitions=lat.get("repetitions"), items_per_s=d.get("items_per_s"),
                    load_s=d.get("load_s"), peak_mem_mib=d.get("peak_mem_mib"))


def _with_speedups(rows: list[BenchRow], by_model: bool) -> list[BenchRow]:
    """Speedup over the first engine that ran the same model at the same batch (``by_model``), else over the
    first model that ran at the same batch."""
    def key(r: BenchRow):
        return (r.model, r.batch) if by_model else r.batch

    first: dict = {}
    for r in rows:
        if r.ok:
            first.setdefault(key(r), r.median_ms)
    return [dataclasses.replace(r, speedup=first[key(r)] / r.median_ms) if r.ok else r for r in rows]


def _versions(engine_names: Sequence[str]) -> dict[str, str]:
    out = {}
    for e in engine_names:
        for pkg in (_PACKAGES.get(e), "pnnx" if e == "ncnn" else None):
            if pkg:
                try:
                    out[pkg] = metadata.version(pkg)
                except metadata.PackageNotFoundError:
                    out[pkg] = "not installed"
    return out


def _load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def bench(
    models: ir.Model | str | os.PathLike | Sequence[ir.Model | str | os.PathLike],
    engines: Sequence[str] = ("ort",),
    batch: Sequence[int] = (1,),
    threads: int | None = None,
    *,
    opt_level: str = "all",
    shapes: dict | None = None,
    values: dict | None = None,
    warmup_s: float = 0.25,
    budget_s: float = 1.0,
    isolate: bool = True,
    seed: int = 0,
    show_progress: bool = True,
) -> BenchResult:
    """Benchmark every model (paths, ``ir.Model``s or zoo names) on every engine at every batch size.

    Timing is :func:`bushu.timing.measure` (warm-up ``warmup_s``, then every run timed for ``budget_s``).
    ``isolate`` runs each model × engine in a fresh Python process (the default: peak memory is then that
    engine's own, and no other session's threads compete); ``isolate=False`` runs everything here (faster, but
    memory already held by earlier sessions hides part of later peaks). Batch sizes apply to inputs whose batch
    dim is dynamic; a static one gives a ``skipped`` row that says so. An engine that fails (not installed, a
    conversion the converter refuses) gives ``error`` rows with the reason, and the others go on.
    """
    if isinstance(models, (str, os.PathLike, ir.Model)):
        models = [models]
    if not models or not engines or not batch:
        raise BushuError("bench needs at least one model, one engine and one batch size")
    if any(b < 1 for b in batch):
        raise BushuError(f"batch sizes must be ≥ 1, got {list(batch)}")
    refs = [resolve(m, shapes, values) for m in models]
    load_before = _load_average()
    rows: list[BenchRow] = []
    with tempfile.TemporaryDirectory(prefix="bushu-bench-") as tmp:
        jobs = []
        for i, ref in enumerate(refs):
            src = ref.source
            if isinstance(src, ir.Model):  # a worker process opens files
                from .. import ir as bir

                src = str(bir.save(src, os.path.join(tmp, f"model{i}.onnx")))
            for e in engines:
                jobs.append((ref.label, Job(model=src, engine=e, batches=tuple(batch), threads=threads,
                                            opt_level=opt_level, shapes=ref.shapes, values=ref.values,
                                            warmup_s=warmup_s, budget_s=budget_s, seed=seed)))
        for label, job in progress(jobs, total=len(jobs), desc="bench", enabled=show_progress):
            found = _in_subprocess(job) if isolate else run_job(job)
            rows += [_row(d, label) for d in found]
    settings = {"engines": list(engines), "batch": list(batch), "threads": threads, "opt_level": opt_level,
                "warmup_s": warmup_s, "budget_s": budget_s, "isolate": isolate, "seed": seed,
                # other processes' load moves every absolute number; ratios within one run hold up better
                "load_average_1min": [load_before, _load_average()]}
    return BenchResult(rows=tuple(_with_speedups(rows, by_model=len(engines) > 1)), settings=settings, machine=machine(),
                       versions=_versions(engines))
