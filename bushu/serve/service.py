"""What the server does, independent of the transport: HTTP (app.py), gRPC (grpc_server.py) and Ray Serve
(ray_serve.py) each decode a request, call one of these, and encode the answer.

Errors are :class:`~bushu.serve.protocol.ProtocolError` with the HTTP status to answer (the gRPC server maps them
to status codes).
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from .. import __version__
from .config import config_json
from .manager import LoadedVersion, ModelManager
from .protocol import InferRequest, ProtocolError, RequestedOutput, classify
from .shm import write_output

# Only what is implemented (DESIGN.md: advertise only the extensions you implement); system_shared_memory where
# the server has a region registry (the single-process server, and --ray's ingress, which replicas mirror).
EXTENSIONS = ["binary_tensor_data", "classification", "model_configuration", "model_repository", "parameters",
              "schedule_policy", "sequence", "statistics"]


@dataclasses.dataclass(frozen=True)
class InferResult:
    model: str
    version: str
    outputs: dict[str, np.ndarray]  # in the order to send, after classification
    binary: dict[str, bool]  # per output: send as binary data
    in_shm: frozenset = frozenset()  # outputs written to system shared memory (sent as datatype and shape only)


def server_metadata(shared_memory: bool = False) -> dict:
    ext = sorted(EXTENSIONS + ["system_shared_memory"]) if shared_memory else EXTENSIONS
    return {"name": "bushu", "version": __version__, "extensions": ext}


def model_config(manager: ModelManager, name: str, version: str = "") -> dict:
    return config_json(manager.get(name, version).model.config)


def model_stats(manager: ModelManager, name: str = "", version: str = "") -> dict:
    """Triton's statistics answer for one model (all its loaded versions unless ``version``) or every model."""
    if name:
        lv = manager.get(name, version)
        entries = [lv] if version else list(manager.entries[name].versions.values())
    else:
        entries = [lv for e in manager.entries.values() for lv in e.versions.values()]
    return {"model_stats": [lv.stats.to_json(lv.model.name, lv.model.version) for lv in entries]}


def _select(lv: LoadedVersion, req: InferRequest, outs: dict[str, np.ndarray]) -> InferResult:
    wanted = req.outputs if req.outputs is not None else [RequestedOutput(n) for n in lv.model.outputs]
    batched = lv.model.batching
    selected, binary, in_shm = {}, {}, set()
    for o in wanted:
        arr = outs[o.name]
        selected[o.name] = classify(arr, o.class_count, batched) if o.class_count else arr
        binary[o.name] = o.binary if o.binary is not None else req.binary_output
        if o.shm is not None:
            write_output(o.shm, o.name, arr)
            in_shm.add(o.name)
    return InferResult(lv.model.name, lv.model.version, selected, binary, frozenset(in_shm))


async def infer(manager: ModelManager, name: str, version: str, req: InferRequest) -> InferResult:
    """Validate ``req`` against the model, queue it on the model's scheduler, and pick the requested outputs."""
    lv = manager.get(name, version)
    try:
        batch = lv.model.validate(req)
    except ProtocolError:
        lv.stats.request(False, 0, None)
        raise
    t0 = time.perf_counter_ns()
    try:
        outs = await lv.scheduler.submit(req, batch)
    except ProtocolError:
        raise
    except Exception as e:  # never let one request take the server down; answer 500 with what went wrong
        lv.stats.request(False, time.perf_counter_ns() - t0, None)
        raise ProtocolError(f"internal error: {type(e).__name__}: {e}", status=500) from e
    return _select(lv, req, outs)
