"""The model handler: one version of one model, opened on an engine, answering ``execute(list[request])``.

As in Triton's Python backend, the handler gets a list of requests and returns one response per request, so batching
is the scheduler's business: the handler stacks the requests' inputs along the batch dimension, runs the engine once
and splits the outputs back. A request the scheduler hands over has been validated by :meth:`ModelVersion.validate`.
A merged batch that fails is retried request by request, so one bad request can't fail its neighbours.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np

from .. import engines
from ..engines.base import EngineOptions
from ..errors import BushuError
from .config import EngineSection, complete, datatype, instance_count
from .protocol import DATATYPES, InferRequest, ProtocolError


_MAX_STAGING = 64 * 2**20  # larger batches are stacked into a fresh array each time


@dataclasses.dataclass
class Timing:
    """Nanoseconds one execution spent stacking inputs, running the engine, and splitting outputs."""

    input_ns: int = 0
    infer_ns: int = 0
    output_ns: int = 0


@dataclasses.dataclass(frozen=True)
class TensorConfig:
    name: str
    datatype: str
    dims: tuple[int, ...]  # without the batch dim; -1 = any
    reshape: tuple[int, ...] | None
    optional: bool


def _tensor_configs(items) -> dict[str, TensorConfig]:
    return {t.name: TensorConfig(t.name, datatype(t.data_type), tuple(t.dims),
                                 tuple(t.reshape.shape) if t.HasField("reshape") else None,
                                 bool(getattr(t, "optional", False))) for t in items}


class ModelVersion:
    """Version ``version`` of model ``name``: ``instances`` engine sessions over one ONNX file."""

    def __init__(self, name: str, version: str, path: Path, cfg, section: EngineSection, *, configured: bool,
                 defaults):
        self.name, self.version, self.path = name, version, path
        opts = EngineOptions(threads=section.threads, opt_level=section.opt_level, spin=False)
        first = engines.open_session(str(path), section.engine, opts)
        complete(cfg, first.inputs, first.outputs, defaults, configured=configured)
        if cfg.sequence_batching.control_input:
            raise BushuError(f"model '{name}': sequence control_input tensors are not supported; keep the state "
                             "implicit with sequence_batching.state (the server tracks start/end itself)")
        self.config = cfg
        self.engine = section.engine
        self.sessions = [first] + [engines.open_session(str(path), section.engine, opts)
                                   for _ in range(instance_count(cfg) - 1)]
        self.max_batch_size = cfg.max_batch_size
        self.inputs = _tensor_configs(cfg.input)
        self.outputs = _tensor_configs(cfg.output)
        self._specs = {s.name: s for s in first.inputs}
        self._staging: dict[tuple[int, str], np.ndarray] = {}  # see _stack

    @property
    def batching(self) -> bool:
        return self.max_batch_size > 0

    def metadata(self) -> dict:
        """KServe v2 model metadata; shapes start with -1 when the model batches."""
        lead = [-1] if self.batching else []
        return {
            "name": self.name, "versions": [self.version], "platform": self.config.platform or "onnxruntime_onnx",
            "inputs": [{"name": t.name, "datatype": t.datatype, "shape": lead + list(t.dims)} for t in self.inputs.values()],
            "outputs": [{"name": t.name, "datatype": t.datatype, "shape": lead + list(t.dims)} for t in self.outputs.values()],
        }

    def validate(self, req: InferRequest) -> int:
        """Check ``req`` against the configuration (names, datatypes, shapes, batch size) and return its batch size
        (1 for models that don't batch). Applies the config's ``reshape``. Raises :class:`ProtocolError`."""
        batch = None
        for name, arr in req.inputs.items():
            t = self.inputs.get(name)
            if t is None:
                raise ProtocolError(f"unexpected input '{name}' for model '{self.name}': it takes "
                                    f"{', '.join(self.inputs)}")
            if DATATYPES.get(t.datatype) != arr.dtype and not (t.datatype == "BYTES" and arr.dtype == object):
                got = next((k for k, v in DATATYPES.items() if v == arr.dtype), str(arr.dtype))
                raise ProtocolError(f"input '{name}' of model '{self.name}' is {t.datatype}, the request sent {got}")
            shape = arr.shape
            if self.batching:
                if len(shape) != len(t.dims) + 1 or shape[0] < 1:
                    raise ProtocolError(f"input '{name}' of model '{self.name}' has shape {list(shape)}, expected "
                                        f"{[-1, *t.dims]} (batch first)")
                if batch is not None and shape[0] != batch:
                    raise ProtocolError(f"inputs of model '{self.name}' disagree on the batch size ({batch} and {shape[0]})")
                batch = shape[0]
                shape = shape[1:]
            if len(shape) != len(t.dims) or any(d != -1 and d != s for d, s in zip(t.dims, shape)):
                want = ([-1] if self.batching else []) + list(t.dims)
                raise ProtocolError(f"input '{name}' of model '{self.name}' has shape {list(arr.shape)}, expected {want}")
            if t.reshape is not None:
                req.inputs[name] = arr.reshape(((batch,) if self.batching else ()) + t.reshape)
        missing = [n for n, t in self.inputs.items() if n not in req.inputs and not t.optional]
        if missing:
            raise ProtocolError(f"model '{self.name}' needs input(s) {', '.join(missing)}")
        if batch is not None and batch > self.max_batch_size:
            raise ProtocolError(f"batch size {batch} is over model '{self.name}''s max_batch_size {self.max_batch_size}")
        for o in req.outputs or ():
            if o.name not in self.outputs:
                raise ProtocolError(f"model '{self.name}' has no output '{o.name}': it has {', '.join(self.outputs)}")
        return batch or 1

    def _feed(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        # ONNX Runtime takes strings as str objects; the protocol delivers bytes
        return {k: (np.vectorize(lambda b: b.decode(errors="replace"), otypes=[object])(v)
                    if v.dtype == object and self._specs.get(k) and self._specs[k].dtype == "object" else v)
                for k, v in inputs.items()}

    def _run(self, instance: int, feeds: dict[str, np.ndarray], timing: Timing) -> dict[str, np.ndarray]:
        t0 = time.perf_counter_ns()
        out = self.sessions[instance].run(self._feed(feeds))
        timing.infer_ns += time.perf_counter_ns() - t0
        return out

    def execute(self, requests: list[InferRequest], instance: int = 0, timing: Timing | None = None) -> list:
        """Run ``requests`` (validated; stackable when more than one) on session ``instance``. Returns, per request,
        a dict of output arrays or the exception that request failed with."""
        timing = timing if timing is not None else Timing()
        if len(requests) == 1 or not self.batching:
            return [self._execute_one(r, instance, timing) for r in requests]
        t0 = time.perf_counter_ns()
        sizes = [next(iter(r.inputs.values())).shape[0] for r in requests]
        feeds = {n: self._stack(instance, n, [r.inputs[n] for r in requests]) for n in requests[0].inputs}
        timing.input_ns += time.perf_counter_ns() - t0
        try:
            out = self._run(instance, feeds, timing)
        except BushuError:
            return [self._execute_one(r, instance, timing) for r in requests]
        t0 = time.perf_counter_ns()
        bounds = np.cumsum(sizes)[:-1]
        parts = {n: np.split(a, bounds) for n, a in out.items()}
        res = [{n: parts[n][i] for n in out} for i in range(len(requests))]
        timing.output_ns += time.perf_counter_ns() - t0
        return res

    def _stack(self, instance: int, name: str, arrays: list[np.ndarray]) -> np.ndarray:
        """``arrays`` stacked along the batch dimension into this instance's staging buffer for input ``name``,
        reused from batch to batch (only this instance's engine thread uses it, and the engine has read it once it
        returns): a fresh multi-megabyte array per batch cost its page faults and a cold cache each time."""
        first = arrays[0]
        n = sum(a.shape[0] for a in arrays)
        if first.dtype == object or first.nbytes // max(first.shape[0], 1) * self.max_batch_size > _MAX_STAGING:
            return np.concatenate(arrays)
        buf = self._staging.get((instance, name))
        if buf is None or buf.dtype != first.dtype or buf.shape[1:] != first.shape[1:]:
            buf = self._staging[instance, name] = np.empty((self.max_batch_size, *first.shape[1:]), first.dtype)
        return np.concatenate(arrays, out=buf[:n])

    def _execute_one(self, req: InferRequest, instance: int, timing: Timing):
        try:
            return self._run(instance, req.inputs, timing)
        except BushuError as e:
            return e
