"""Triton's sequence extension with implicit state: the server keeps a stateful model's state between requests.

Each request carries ``sequence_id`` and the ``sequence_start``/``sequence_end`` flags. For every
``sequence_batching.state`` entry of the config (for silero VAD: input ``state``, output ``stateN``) the server feeds
the sequence's current state, and keeps the state output for the next request of the sequence; the client never
sends or sees it. A start flag (re)initialises the state (zeros, or ``initial_state``), an end flag frees it, and a
sequence idle for ``max_sequence_idle_microseconds`` (Triton's default: 1 s) is freed too. Requests of one sequence
run in order; different sequences run concurrently, up to the instance count, on the model's engine threads (a
:class:`~bushu.serve.batcher.Batcher` that doesn't merge: the same queue bound, timeouts and statistics as a
stateless model).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time

import numpy as np

from ..errors import BushuError
from .batcher import Batcher, BatchPolicy, Unavailable
from .config import datatype
from .model import ModelVersion
from .protocol import DATATYPES, InferRequest, ProtocolError
from .stats import ModelStats


@dataclasses.dataclass(eq=False)
class _Sequence:
    state: dict[str, np.ndarray]
    lock: asyncio.Lock
    last_used: float


class Sequencer:
    """The scheduler of a stateful model version; ``await submit(request, 1)`` returns its outputs."""

    def __init__(self, model: ModelVersion, stats: ModelStats, *, max_sequences: int = 1024, max_queue_size: int = 256):
        self.model, self.stats = model, stats
        sb = model.config.sequence_batching
        self._pairs = [(s.input_name, s.output_name) for s in sb.state]
        self._initial = {s.input_name: self._initial_state(s) for s in sb.state}
        self.idle_s = (sb.max_sequence_idle_microseconds or 1_000_000) / 1e6
        self.max_sequences = max_sequences
        self.sequences: dict[object, _Sequence] = {}
        self._engine = Batcher(model, BatchPolicy(max_batch_size=model.max_batch_size, max_queue_size=max_queue_size),
                               stats)
        self._reaper = asyncio.get_running_loop().create_task(self._reap())

    @staticmethod
    def _initial_state(s) -> np.ndarray:
        dtype = DATATYPES[datatype(s.data_type)]
        dims = [d if d > 0 else 1 for d in s.dims]
        for init in s.initial_state:
            if init.data_file:
                raise BushuError(f"state '{s.input_name}': initial_state.data_file is not supported: use zero_data")
        return np.zeros(dims, dtype=dtype)

    @property
    def queue_depth(self) -> int:
        return sum(1 for s in self.sequences.values() if s.lock.locked())

    async def _reap(self) -> None:
        while True:
            await asyncio.sleep(min(1.0, self.idle_s / 2))
            cutoff = time.monotonic() - self.idle_s
            for sid in [k for k, s in self.sequences.items() if s.last_used < cutoff and not s.lock.locked()]:
                del self.sequences[sid]

    async def submit(self, req: InferRequest, batch_size: int = 1) -> dict:
        p = req.parameters
        sid = p.get("sequence_id")
        if sid in (None, 0, ""):
            raise ProtocolError(f"model '{self.model.name}' is stateful: send a sequence_id, with sequence_start "
                                "on the first request and sequence_end on the last")
        seq = self.sequences.get(sid)
        if p.get("sequence_start"):
            if seq is None:
                if len(self.sequences) >= self.max_sequences:
                    raise Unavailable(f"model '{self.model.name}' already tracks {self.max_sequences} sequences: "
                                      "end some (sequence_end) or retry later")
                seq = self.sequences[sid] = _Sequence({}, asyncio.Lock(), time.monotonic())
        elif seq is None:
            raise ProtocolError(f"sequence {sid} of model '{self.model.name}' is not active (never started, ended, "
                                f"or idle for over {self.idle_s:g} s): send sequence_start=true first")
        async with seq.lock:
            if p.get("sequence_start"):
                seq.state = {k: v.copy() for k, v in self._initial.items()}
            run_req = InferRequest({**req.inputs, **seq.state}, req.outputs, req.id, req.parameters)
            res = await self._engine.submit(run_req, batch_size)  # counts the request in the statistics
            seq.state = {i: res.pop(o) for i, o in self._pairs}
            seq.last_used = time.monotonic()
            if p.get("sequence_end"):
                self.sequences.pop(sid, None)
        return res

    async def close(self, timeout_s: float = 30.0) -> None:
        """Let running requests finish, then free every sequence."""
        self._reaper.cancel()
        deadline = time.monotonic() + timeout_s
        while any(s.lock.locked() for s in self.sequences.values()) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        self.sequences.clear()
        await self._engine.close(max(0.0, deadline - time.monotonic()))
