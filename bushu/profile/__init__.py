"""``bushu.profile``: per-kernel measured time (ONNX Runtime's profiler, OpenVINO's performance counters) mapped
back to the model's nodes and joined with their FLOPs and bytes and the machine's measured peaks: achieved
GFLOP/s, arithmetic intensity, % of peak, compute- or memory-bound, top bottlenecks, and a Chrome trace."""

from __future__ import annotations

from .api import profile
from .peaks import Peaks, peaks
from .result import ProfileResult

__all__ = ["Peaks", "ProfileResult", "peaks", "profile"]
