"""Dynamic batching: a bounded queue per model version, one worker per instance, the engine off the event loop.

A worker takes the oldest request and every queued request whose inputs stack with it (same shapes past the batch
dimension, same dtypes), up to ``max_batch_size`` items; with a ``max_queue_delay`` it waits that long from the
oldest request's arrival for more. With preferred batch sizes, a batch that can't reach ``max_batch_size`` is cut
to the largest preferred size it reaches. With no delay, batches still form under load: whatever queued up while
the engine was busy runs together. The merged batch runs in a thread (ONNX Runtime releases the GIL) and the
handler splits the outputs back per request.

A full queue answers 503 at once; a request whose timeout passes while queued answers 503 when it is dequeued.
:meth:`Batcher.close` stops taking requests and lets the queued and running ones finish.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor

from .model import ModelVersion, Timing
from .protocol import InferRequest, ProtocolError
from .stats import ModelStats


class Unavailable(ProtocolError):
    """Overloaded, timed out, or shutting down: HTTP 503, gRPC UNAVAILABLE."""

    def __init__(self, message: str):
        super().__init__(message, status=503)


@dataclasses.dataclass(frozen=True)
class BatchPolicy:
    """How requests are merged and queued (from the config's ``dynamic_batching``)."""

    merge: bool = False
    max_batch_size: int = 0
    preferred: tuple[int, ...] = ()
    max_queue_delay_ns: int = 0
    max_queue_size: int = 256
    default_timeout_ns: int = 0  # 0 = none
    allow_timeout_override: bool = True

    @classmethod
    def of(cls, cfg, max_queue_size: int) -> BatchPolicy:
        if not cfg.HasField("dynamic_batching"):
            return cls(max_batch_size=cfg.max_batch_size, max_queue_size=max_queue_size)
        db = cfg.dynamic_batching
        qp = db.default_queue_policy
        return cls(merge=cfg.max_batch_size > 0, max_batch_size=cfg.max_batch_size,
                   preferred=tuple(sorted(p for p in db.preferred_batch_size if 0 < p <= cfg.max_batch_size)),
                   max_queue_delay_ns=db.max_queue_delay_microseconds * 1000,
                   max_queue_size=qp.max_queue_size or max_queue_size,
                   default_timeout_ns=qp.default_timeout_microseconds * 1000,
                   allow_timeout_override=qp.allow_timeout_override or not qp.default_timeout_microseconds)


@dataclasses.dataclass(eq=False)
class _Item:
    req: InferRequest
    size: int
    key: tuple
    fut: asyncio.Future
    t_enq: int
    deadline: int  # perf_counter_ns, 0 = none


class Batcher:
    """The scheduler of one model version. ``await submit(request, batch_size)`` returns its output arrays."""

    def __init__(self, model: ModelVersion, policy: BatchPolicy, stats: ModelStats):
        self.model, self.policy, self.stats = model, policy, stats
        self._pending: deque[_Item] = deque()
        self._wakeup = asyncio.Event()
        self._running = 0
        self._closing = False
        self._idle = asyncio.Event()
        self._idle.set()
        n = len(model.sessions)
        self._pool = ThreadPoolExecutor(max_workers=n, thread_name_prefix=f"bushu-{model.name}")
        self._workers = [asyncio.get_running_loop().create_task(self._work(i)) for i in range(n)]

    @property
    def queue_depth(self) -> int:
        return len(self._pending)

    def _deadline(self, req: InferRequest, now: int) -> int:
        timeout_us = req.parameters.get("timeout")
        if isinstance(timeout_us, int) and timeout_us > 0 and self.policy.allow_timeout_override:
            return now + timeout_us * 1000
        return now + self.policy.default_timeout_ns if self.policy.default_timeout_ns else 0

    async def submit(self, req: InferRequest, batch_size: int) -> dict:
        if self._closing:
            raise Unavailable(f"model '{self.model.name}' is unloading: retry")
        if len(self._pending) >= self.policy.max_queue_size:
            raise Unavailable(f"model '{self.model.name}' is overloaded ({len(self._pending)} requests queued): retry later")
        key = tuple((n, a.shape[1:], a.dtype.str) for n, a in sorted(req.inputs.items())) if self.policy.merge else ()
        now = time.perf_counter_ns()
        item = _Item(req, batch_size, key, asyncio.get_running_loop().create_future(), now, self._deadline(req, now))
        self._pending.append(item)
        self._idle.clear()
        self._wakeup.set()
        return await item.fut

    def _take(self) -> list[_Item]:
        """The oldest live request and the queued ones that stack with it, oldest first."""
        now = time.perf_counter_ns()
        while self._pending and self._pending[0].deadline and self._pending[0].deadline < now:
            it = self._pending.popleft()
            self.stats.request(False, now - it.t_enq, now - it.t_enq)
            it.fut.done() or it.fut.set_exception(Unavailable("the request timed out in the queue"))
        if not self._pending:
            if not self._running:
                self._idle.set()
            return []
        head = self._pending.popleft()
        batch, size = [head], head.size
        if not self.policy.merge:
            return batch
        rest = deque()
        while self._pending and size < self.policy.max_batch_size:
            it = self._pending.popleft()
            if it.key == head.key and size + it.size <= self.policy.max_batch_size:
                batch.append(it)
                size += it.size
            else:
                rest.append(it)
        self._pending.extendleft(reversed(rest))
        return batch

    def _put_back(self, items: list[_Item]) -> None:
        self._pending.extendleft(reversed(items))

    def _cut_to_preferred(self, batch: list[_Item]) -> list[_Item]:
        size = sum(it.size for it in batch)
        fits = [p for p in self.policy.preferred if p <= size]
        if not fits or size in self.policy.preferred or size >= self.policy.max_batch_size:
            return batch
        keep, n = [], 0
        for it in batch:
            if n + it.size > fits[-1]:
                break
            keep.append(it)
            n += it.size
        self._put_back(batch[len(keep):])
        return keep

    async def _form(self) -> list[_Item]:
        target = self.policy.max_batch_size
        while True:
            while not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
            batch = self._take()
            if not batch:
                continue
            size = sum(it.size for it in batch)
            wait_ns = batch[0].t_enq + self.policy.max_queue_delay_ns - time.perf_counter_ns()
            if not self.policy.merge or size >= target or wait_ns <= 0 or self._closing:
                return self._cut_to_preferred(batch) if self.policy.preferred else batch
            self._put_back(batch)
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), wait_ns / 1e9)
            except TimeoutError:
                pass
            batch = self._take()
            size = sum(it.size for it in batch)
            if size >= target or batch[0].t_enq + self.policy.max_queue_delay_ns <= time.perf_counter_ns():
                return self._cut_to_preferred(batch) if self.policy.preferred else batch
            self._put_back(batch)

    async def _work(self, instance: int) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._form()
            self._running += 1
            t_start = time.perf_counter_ns()
            timing = Timing()
            reqs = [it.req for it in batch]
            try:
                results = await loop.run_in_executor(self._pool, self.model.execute, reqs, instance, timing)
            except Exception as e:  # a bug in a handler must not kill the worker
                results = [e] * len(batch)
            finally:
                self._running -= 1
            self.stats.execution(sum(it.size for it in batch), timing, len(batch))
            now = time.perf_counter_ns()
            for it, res in zip(batch, results):
                ok = not isinstance(res, BaseException)
                self.stats.request(ok, now - it.t_enq, t_start - it.t_enq)
                if it.fut.done():  # the client went away
                    continue
                if ok:
                    it.fut.set_result(res)
                else:
                    err = res if isinstance(res, ProtocolError) else ProtocolError(f"the engine rejected the request: {res}")
                    it.fut.set_exception(err)
            if not self._pending and not self._running:
                self._idle.set()

    async def close(self, timeout_s: float = 30.0) -> None:
        """Refuse new requests, let queued and running ones finish (up to ``timeout_s``), then stop."""
        self._closing = True
        self._wakeup.set()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            pass
        for w in self._workers:
            w.cancel()
        for it in self._pending:
            it.fut.done() or it.fut.set_exception(Unavailable(f"model '{self.model.name}' was unloaded"))
        self._pending.clear()
        self._pool.shutdown(wait=False)
