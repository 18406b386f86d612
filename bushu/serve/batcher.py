"""Dynamic batching: a bounded queue per model version, one engine thread per instance, off the event loop.

An engine thread takes the oldest request and every queued request whose inputs stack with it (same shapes past the batch
dimension, same dtypes), up to ``max_batch_size`` items; with a ``max_queue_delay`` it waits that long from the
oldest request's arrival for more. With preferred batch sizes, a batch that can't reach ``max_batch_size`` is cut
to the largest preferred size it reaches. With no delay, batches still form under load: whatever queued up while
the engine was busy runs together. A batch that formed while other instances were idle is shared out among them
(each takes an even share), so N instances run N smaller batches at once rather than one runs and N-1 sleep. The
thread runs the merged batch (ONNX Runtime releases the GIL) and the handler splits the outputs back per request.

A full queue answers 503 at once; a request whose timeout passes while queued answers 503 when it is dequeued.
:meth:`Batcher.close` stops taking requests and lets the queued and running ones finish.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from collections import deque

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
    shared: bool = False  # left queued by an instance that took its share of a formed batch: runs without waiting


class Batcher:
    """The scheduler of one model version. ``await submit(request, batch_size)`` returns its output arrays.

    Each instance has its own engine thread that forms batches from the shared queue and runs them: a request
    costs one wake-up of that thread (``Condition.notify``) and one of the event loop when the results come back
    (``call_soon_threadsafe``), with no scheduling task or executor between them. The queue is guarded by a
    condition; futures and statistics are touched only on the event loop."""

    def __init__(self, model: ModelVersion, policy: BatchPolicy, stats: ModelStats):
        self.model, self.policy, self.stats = model, policy, stats
        self._loop = asyncio.get_running_loop()
        self._pending: deque[_Item] = deque()
        self._cond = threading.Condition(threading.Lock())
        self._running = 0  # batches taken and not yet finished on the event loop, under _cond
        self._busy = 0  # engine threads running a batch now, under _cond
        self._closing = False
        self._idle = asyncio.Event()
        self._idle.set()
        self._threads = [threading.Thread(target=self._work, args=(i,), name=f"bushu-{model.name}-{i}", daemon=True)
                         for i in range(len(model.sessions))]
        for t in self._threads:
            t.start()

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
        item = _Item(req, batch_size, key, self._loop.create_future(), now, self._deadline(req, now))
        self._idle.clear()
        with self._cond:
            self._pending.append(item)
            self._cond.notify()
        return await item.fut

    # ------------------------------------------------------------ engine threads (hold _cond where it says so)

    def _take(self, expired: list[_Item]) -> list[_Item]:
        """Under _cond: the oldest live request and the queued ones that stack with it, oldest first; requests
        whose timeout passed go to ``expired``."""
        now = time.perf_counter_ns()
        while self._pending and self._pending[0].deadline and self._pending[0].deadline < now:
            expired.append(self._pending.popleft())
        if not self._pending:
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
        self._pending.extendleft(reversed(batch[len(keep):]))
        return keep

    def _share(self, batch: list[_Item], size: int) -> list[_Item]:
        """Under _cond: with other instances idle, this one takes its share of ``batch`` (``size`` items split
        evenly over the idle instances) and leaves the rest queued for them, so that a batch that formed while
        every instance waited runs on all of them at once rather than on one while the others sleep."""
        idle = len(self._threads) - self._busy  # this one included
        if idle <= 1 or len(batch) <= 1:
            return batch
        share, keep, n = -(-size // idle), [], 0
        for it in batch:
            if keep and n + it.size > share:
                break
            keep.append(it)
            n += it.size
        if len(keep) < len(batch):
            for it in batch[len(keep):]:
                it.shared = True
            self._pending.extendleft(reversed(batch[len(keep):]))
            self._cond.notify()
        return keep

    def _form(self) -> list[_Item] | None:
        """The next batch to run (waiting up to the queue delay for a fuller one), or None once closing and empty."""
        expired: list[_Item] = []
        try:
            with self._cond:
                while True:
                    batch = self._take(expired)
                    if not batch:
                        if self._closing:
                            return None
                        if expired:  # report them now, not after the next request arrives
                            return []
                        self._cond.wait()
                        continue
                    size = sum(it.size for it in batch)
                    wait_ns = batch[0].t_enq + self.policy.max_queue_delay_ns - time.perf_counter_ns()
                    if (not self.policy.merge or size >= self.policy.max_batch_size or wait_ns <= 0 or self._closing
                            or batch[0].shared):
                        batch = self._share(batch, size)
                        batch = self._cut_to_preferred(batch) if self.policy.preferred else batch
                        self._running += 1
                        self._busy += 1
                        return batch
                    self._pending.extendleft(reversed(batch))
                    self._cond.wait(wait_ns / 1e9)
        finally:
            if expired:
                self._loop.call_soon_threadsafe(self._expire, expired)

    def _work(self, instance: int) -> None:
        while True:
            batch = self._form()
            if batch is None:
                return
            if not batch:
                continue
            t_start = time.perf_counter_ns()
            timing = Timing()
            try:
                results = self.model.execute([it.req for it in batch], instance, timing)
            except Exception as e:  # a bug in a handler must not kill the engine thread
                results = [e] * len(batch)
            with self._cond:
                self._busy -= 1
            try:
                self._loop.call_soon_threadsafe(self._finish, batch, results, timing, t_start)
            except RuntimeError:  # the event loop is gone (process exit)
                return

    # ------------------------------------------------------------ event loop

    def _check_idle(self) -> None:
        with self._cond:
            if not self._pending and not self._running:
                self._idle.set()

    def _expire(self, items: list[_Item]) -> None:
        now = time.perf_counter_ns()
        for it in items:
            self.stats.request(False, now - it.t_enq, now - it.t_enq)
            it.fut.done() or it.fut.set_exception(Unavailable("the request timed out in the queue"))
        self._check_idle()

    def _finish(self, batch: list[_Item], results: list, timing: Timing, t_start: int) -> None:
        with self._cond:
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
        self._check_idle()

    async def close(self, timeout_s: float = 30.0) -> None:
        """Refuse new requests, let queued and running ones finish (up to ``timeout_s``), then stop."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            pass
        with self._cond:
            left, self._pending = list(self._pending), deque()
        for it in left:
            it.fut.done() or it.fut.set_exception(Unavailable(f"model '{self.model.name}' was unloaded"))
