"""Prometheus metrics with Triton's names, read from the statistics at scrape time.

The exposition text is written from each version's :class:`~bushu.serve.stats.ModelStats` when ``/metrics`` is
scraped, so the request path only updates plain integers (no locks, no double bookkeeping). Names, types and labels
(``model``, ``version``) are Triton's -- counters without the ``_total`` suffix that ``prometheus_client`` would
add, which is why the text is written here. ``bushu_batch_size`` (a histogram of executed batch sizes) is ours;
``nv_inference_pending_request_count`` is the queue depth.
"""

from __future__ import annotations

import dataclasses

from .manager import ModelManager
from .stats import ModelStats

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Triton's counter name -> (help, what it counts: a ModelStats durations key or attribute, ns divisor)
COUNTERS = {
    "nv_inference_request_success": ("Number of successful inference requests, all batch sizes", "success", None),
    "nv_inference_request_failure": ("Number of failed inference requests, all batch sizes", "fail", None),
    "nv_inference_count": ("Number of inferences performed (does not include cached requests)", "inference_count", None),
    "nv_inference_exec_count": ("Number of model executions performed (does not include cached requests)",
                                "execution_count", None),
    "nv_inference_request_duration_us": ("Cumulative inference request duration in microseconds", "request", 1000),
    "nv_inference_queue_duration_us": ("Cumulative inference queuing duration in microseconds", "queue", 1000),
    "nv_inference_compute_input_duration_us": ("Cumulative compute input duration in microseconds",
                                               "compute_input", 1000),
    "nv_inference_compute_infer_duration_us": ("Cumulative compute inference duration in microseconds",
                                               "compute_infer", 1000),
    "nv_inference_compute_output_duration_us": ("Cumulative inference compute output duration in microseconds",
                                                "compute_output", 1000),
}
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


def _escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _value(stats, key: str, div: int | None) -> float:
    d = stats.durations
    if key == "request":  # every finished request, whether it succeeded or not
        return (d["success"][1] + d["fail"][1]) // div
    if key in d:
        return d[key][1] // div if div else d[key][0]
    return getattr(stats, key)


@dataclasses.dataclass(frozen=True)
class Row:
    """What /metrics shows of one model version: its statistics and its queue depth now."""

    model: str
    version: str
    stats: ModelStats
    queue_depth: int


def rows(manager: ModelManager) -> list[Row]:
    """One :class:`Row` per loaded model version of ``manager``."""
    return [Row(n, v, lv.stats, lv.scheduler.queue_depth)
            for n, e in list(manager.entries.items()) for v, lv in list(e.versions.items())]


def exposition(manager: ModelManager) -> bytes:
    """The Prometheus text exposition (format 0.0.4) of every loaded model version of ``manager``."""
    return render(rows(manager))


def render(model_rows: list[Row]) -> bytes:
    """The Prometheus text exposition (format 0.0.4) of ``model_rows`` (from one server, or summed over Ray
    replicas)."""
    versions = [(f'model="{_escape(r.model)}",version="{_escape(r.version)}"', r) for r in model_rows]
    lines = []
    for metric, (help_, key, div) in COUNTERS.items():
        lines += [f"# HELP {metric} {help_}", f"# TYPE {metric} counter"]
        lines += [f"{metric}{{{lab}}} {_value(r.stats, key, div)}" for lab, r in versions]
    lines += ["# HELP nv_inference_pending_request_count Instantaneous number of pending requests awaiting execution",
              "# TYPE nv_inference_pending_request_count gauge"]
    lines += [f"nv_inference_pending_request_count{{{lab}}} {r.queue_depth}" for lab, r in versions]
    lines += ["# HELP bushu_batch_size Batch sizes the model executed (items per engine run)",
              "# TYPE bushu_batch_size histogram"]
    for lab, r in versions:
        counts = {bs: b[0] for bs, b in r.stats.batches.items()}
        for edge in BATCH_BUCKETS:
            lines.append(f'bushu_batch_size_bucket{{{lab},le="{edge}"}} {sum(c for bs, c in counts.items() if bs <= edge)}')
        lines.append(f'bushu_batch_size_bucket{{{lab},le="+Inf"}} {sum(counts.values())}')
        lines.append(f"bushu_batch_size_sum{{{lab}}} {sum(bs * c for bs, c in counts.items())}")
        lines.append(f"bushu_batch_size_count{{{lab}}} {sum(counts.values())}")
    return ("\n".join(lines) + "\n").encode()
