"""Per model version statistics, kept the way Triton's statistics extension reports them.

Counts are cumulative. ``success``/``fail``/``queue``/``compute_*`` count requests (a request in a batch of N is
charged the whole batch's compute time, as in Triton); ``inference_count`` counts batch items and
``execution_count`` engine runs, so ``execution_count < requests`` shows that dynamic batching merged requests.
Updated only from the event loop thread, so no locks.
"""

from __future__ import annotations

import time

from .model import Timing

_DURATIONS = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output", "cache_hit", "cache_miss")


class ModelStats:
    def __init__(self):
        self.inference_count = 0
        self.execution_count = 0
        self.last_inference_ms = 0
        self.durations = {k: [0, 0] for k in _DURATIONS}  # name -> [count, ns]
        self.batches: dict[int, list[int]] = {}  # batch size -> [count, input_ns, infer_ns, output_ns]

    def _add(self, key: str, ns: int, n: int = 1) -> None:
        d = self.durations[key]
        d[0] += n
        d[1] += ns * n

    def execution(self, batch_size: int, timing: Timing, n_requests: int) -> None:
        """One engine run over ``n_requests`` requests holding ``batch_size`` items."""
        self.inference_count += batch_size
        self.execution_count += 1
        self.last_inference_ms = int(time.time() * 1000)
        b = self.batches.setdefault(batch_size, [0, 0, 0, 0])
        b[0] += 1
        b[1] += timing.input_ns
        b[2] += timing.infer_ns
        b[3] += timing.output_ns
        self._add("compute_input", timing.input_ns, n_requests)
        self._add("compute_infer", timing.infer_ns, n_requests)
        self._add("compute_output", timing.output_ns, n_requests)

    def request(self, ok: bool, total_ns: int, queue_ns: int | None) -> None:
        """One request finished (``queue_ns`` None when it never reached the queue)."""
        self._add("success" if ok else "fail", total_ns)
        if queue_ns is not None:
            self._add("queue", queue_ns)

    @classmethod
    def total(cls, parts: list[ModelStats]) -> ModelStats:
        """The sum of several replicas' statistics of one model version (``last_inference`` is the latest)."""
        out = cls()
        for p in parts:
            out.inference_count += p.inference_count
            out.execution_count += p.execution_count
            out.last_inference_ms = max(out.last_inference_ms, p.last_inference_ms)
            for k, (n, ns) in p.durations.items():
                out.durations[k][0] += n
                out.durations[k][1] += ns
            for bs, b in p.batches.items():
                mine = out.batches.setdefault(bs, [0, 0, 0, 0])
                for i, v in enumerate(b):
                    mine[i] += v
        return out

    def to_json(self, name: str, version: str) -> dict:
        """One ``model_stats`` entry of Triton's ``GET /v2/models/{m}/stats``."""
        def d(count, ns):
            return {"count": count, "ns": ns}

        return {
            "name": name, "version": version, "last_inference": self.last_inference_ms,
            "inference_count": self.inference_count, "execution_count": self.execution_count,
            "inference_stats": {k: d(*v) for k, v in self.durations.items()},
            "batch_stats": [{"batch_size": bs, "compute_input": d(c, i), "compute_infer": d(c, f),
                             "compute_output": d(c, o)} for bs, (c, i, f, o) in sorted(self.batches.items())],
        }
