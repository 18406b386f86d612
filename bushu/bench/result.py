"""The result of ``bushu.bench``: one row per model × engine × batch size, with the machine and the settings."""

from __future__ import annotations

import csv
import dataclasses
import io
import os
import tempfile
from pathlib import Path

from ..results import Result, fmt_table


@dataclasses.dataclass(frozen=True)
class BenchRow:
    """One model on one engine at one batch size.

    ``status`` is ``ok``, ``skipped`` (e.g. the model's batch dim is static) or ``error`` (``note`` says why).
    Latency in ms (median and quantiles of every timed run); ``items_per_s`` = batch / median latency;
    ``speedup`` = the first engine's median / this median for the same model and batch size (with one engine:
    the first model's at the same batch size; > 1: faster);
    ``load_s`` = time to open the session; ``peak_mem_mib`` = peak RSS above the process's baseline during load
    and the runs.
    """

    model: str
    engine: str
    batch: int
    status: str
    note: str | None = None
    median_ms: float | None = None
    p90_ms: float | None = None
    p99_ms: float | None = None
    min_ms: float | None = None
    repetitions: int | None = None
    items_per_s: float | None = None
    load_s: float | None = None
    peak_mem_mib: float | None = None
    speedup: float | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"


CSV_FIELDS = [f.name for f in dataclasses.fields(BenchRow)]


@dataclasses.dataclass(frozen=True)
class BenchResult(Result):
    """Truthy when every model × engine × batch either ran or was skipped for a stated reason (none failed)."""

    kind = "bench"
    rows: tuple[BenchRow, ...]
    settings: dict
    machine: object
    versions: dict

    def __bool__(self) -> bool:
        return all(r.status != "error" for r in self.rows)

    def __str__(self) -> str:
        ok = [r for r in self.rows if r.ok]
        if not ok:
            return "bench: nothing ran" + (f" ({self.rows[0].note})" if self.rows else "")
        best = min(ok, key=lambda r: r.median_ms / r.batch)
        return (f"bench: {len(ok)}/{len(self.rows)} runs; fastest per item: {best.model} on {best.engine} at batch "
                f"{best.batch} ({best.items_per_s:.1f} items/s)")

    def render(self) -> str:
        rows, notes = [], []
        for r in self.rows:
            if r.ok:
                rows.append([r.model, r.engine, r.batch, f"{r.median_ms:.3f}", f"{r.p90_ms:.3f}", f"{r.p99_ms:.3f}",
                             f"{r.min_ms:.3f}", f"{r.items_per_s:.1f}", f"{r.speedup:.2f}x", f"{r.load_s:.2f}",
                             "" if r.peak_mem_mib is None else f"{r.peak_mem_mib:.0f}", ""])
            else:
                rows.append([r.model, r.engine, r.batch, r.status, *[""] * 7, f"[{len(notes) + 1}]"])
                notes.append(f"[{len(notes) + 1}] {r.model} on {r.engine} at batch {r.batch}: {r.note}")
        header = ["model", "engine", "batch", "median ms", "p90", "p99", "min", "items/s", "speedup", "load s",
                  "peak MiB", ""]
        s = self.settings
        return "\n".join([
            fmt_table(rows, header), *notes, "",
            f"settings: threads {s.get('threads') or 'engine default'}, opt level {s.get('opt_level')}, warm-up "
            f"{s.get('warmup_s')} s + {s.get('budget_s')} s timed per row, "
            f"{'one process per model x engine' if s.get('isolate') else 'in one process'}; load average "
            f"{' -> '.join(str(x) for x in s.get('load_average_1min') or ())} on {getattr(self.machine, 'cores', '?')} cores",
            f"machine:  {self.machine}",
            "speedup: over the first " + ("engine, same model and batch" if len(s.get("engines", ())) > 1 else
                                          "model at the same batch") + "; peak MiB: RSS above the process's baseline",
        ])

    def to_csv(self) -> str:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
        w.writeheader()
        for r in self.rows:
            w.writerow({k: ("" if v is None else v) for k, v in dataclasses.asdict(r).items()})
        return buf.getvalue()

    def write_csv(self, path: str | os.PathLike) -> Path:
        """Write :meth:`to_csv` to ``path`` atomically."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        with os.fdopen(fd, "w") as f:
            f.write(self.to_csv())
        os.chmod(tmp, 0o644)  # mkstemp makes it private; the result is an ordinary file
        os.replace(tmp, path)
        return path
