"""``bushu.bench``: latency (median and quantiles), throughput, load time and peak memory per model × engine ×
batch size, measured like ``triton.testing.do_bench``, with the machine and versions recorded."""

from __future__ import annotations

from .api import bench
from .result import BenchResult, BenchRow

__all__ = ["BenchResult", "BenchRow", "bench"]
