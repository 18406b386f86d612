"""KServe v2 ``GRPCInferenceService`` over the same models, with the stubs generated in ``tritonclient[grpc]``.

Tensors travel as ``raw_input_contents``/``raw_output_contents`` (what ``tritonclient.grpc`` sends and reads) or as
typed ``contents``. Errors map onto gRPC status codes from the HTTP status the service raised.
"""

from __future__ import annotations

import hmac
import logging

import grpc
import numpy as np
from tritonclient.grpc import service_pb2, service_pb2_grpc

from ..errors import BushuError
from . import service
from .manager import ModelManager
from .protocol import (
    DATATYPES,
    InferRequest,
    ProtocolError,
    RequestedOutput,
    datatype_of,
    deserialize_bytes,
    need_shm,
    requested_shm,
    serialize_bytes,
)
from .shm import SharedMemory

log = logging.getLogger("bushu.serve")
_CONTENTS = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
             "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
             "UINT64": "uint64_contents", "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents"}


def _param(p):
    kind = p.WhichOneof("parameter_choice")
    return getattr(p, kind) if kind else None


def decode(request, shm=None) -> InferRequest:
    """A ``ModelInferRequest`` as an :class:`InferRequest` (raw contents as zero-copy views; inputs that name a
    system shared-memory region read from ``shm``, as in Triton, without a raw_input_contents entry)."""
    raw = request.raw_input_contents
    in_shm = [{k: _param(v) for k, v in t.parameters.items()} if "shared_memory_region" in t.parameters else None
              for t in request.inputs]
    n_raw = sum(p is None for p in in_shm)
    if raw and len(raw) != n_raw:
        raise ProtocolError(f"{len(raw)} raw_input_contents for {n_raw} inputs not in shared memory: send one per "
                            "input")
    inputs = {}
    i = -1
    for t, shm_params in zip(request.inputs, in_shm):
        if t.datatype not in DATATYPES:
            raise ProtocolError(f"input '{t.name}': unknown datatype {t.datatype!r}: use one of {', '.join(DATATYPES)}")
        dt, shape = DATATYPES[t.datatype], tuple(t.shape)
        if any(d < 0 for d in shape):
            raise ProtocolError(f"input '{t.name}': shape {list(shape)} has a negative dimension")
        count = int(np.prod(shape, dtype=np.int64))
        if shm_params is not None:
            inputs[t.name] = need_shm(shm).input(t.name, t.datatype, shape, shm_params)
            continue
        i += 1
        if raw:
            if t.datatype == "BYTES":
                arr = deserialize_bytes(raw[i], count, t.name)
            else:
                if len(raw[i]) != count * dt.itemsize:
                    raise ProtocolError(f"input '{t.name}': {len(raw[i])} raw bytes but {t.datatype}{list(shape)} "
                                        f"needs {count * dt.itemsize}")
                arr = np.frombuffer(raw[i], dtype=dt)
        else:
            field = _CONTENTS.get(t.datatype)
            if field is None:
                raise ProtocolError(f"input '{t.name}': {t.datatype} can only be sent as raw_input_contents")
            values = list(getattr(t.contents, field))
            if len(values) != count:
                raise ProtocolError(f"input '{t.name}': {len(values)} values but shape {list(shape)} needs {count}")
            arr = np.array(values, dtype=dt)
        inputs[t.name] = arr.reshape(shape)
    outputs = None
    if request.outputs:
        outputs = []
        for o in request.outputs:
            key = "classification" if "classification" in o.parameters else "class_count"
            cc = int((_param(o.parameters[key]) if key in o.parameters else 0) or 0)
            params = {k: _param(v) for k, v in o.parameters.items()}
            outputs.append(RequestedOutput(o.name, True, cc, requested_shm(shm, o.name, params, cc)))
    params = {k: _param(v) for k, v in request.parameters.items()}
    return InferRequest(inputs, outputs, request.id, params)


def _auth(context) -> str | None:
    return dict(context.invocation_metadata()).get("authorization")


def _peer_host(context) -> str | None:
    """The client's address from gRPC's peer string (``ipv4:127.0.0.1:5000``, ``ipv6:[::1]:5000``)."""
    peer = context.peer() if hasattr(context, "peer") else ""
    if peer.startswith("ipv4:"):
        return peer[5:].rsplit(":", 1)[0]
    if peer.startswith("ipv6:"):
        return peer[5:].rsplit(":", 1)[0].strip("[]")
    return None


_CODES = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
          405: "UNIMPLEMENTED", 413: "RESOURCE_EXHAUSTED", 503: "UNAVAILABLE"}


class Servicer(service_pb2_grpc.GRPCInferenceServiceServicer):
    """The ``GRPCInferenceService`` methods (async; grpc.aio); the rest answer UNIMPLEMENTED."""

    def __init__(self, manager: ModelManager, *, model_control: bool, token: str | None,
                 shm: SharedMemory | None = None):
        self.m = manager
        self.model_control = model_control
        self.token = token
        self.shm = shm
        self.pb2 = service_pb2

    async def _call(self, context, fn, *args):
        try:
            return await fn(*args)
        except ProtocolError as e:
            await context.abort(getattr(grpc.StatusCode, _CODES.get(e.status, "INTERNAL")), str(e))
        except BushuError as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        except Exception as e:
            log.exception("bushu serve: internal error (gRPC)")
            await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(e).__name__}: {e}")

    async def ServerLive(self, request, context):
        return self.pb2.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):
        return self.pb2.ServerReadyResponse(ready=self.m.ready())

    async def ModelReady(self, request, context):
        try:
            self.m.get(request.name, request.version)
            return self.pb2.ModelReadyResponse(ready=True)
        except ProtocolError:
            return self.pb2.ModelReadyResponse(ready=False)

    async def ServerMetadata(self, request, context):
        return self.pb2.ServerMetadataResponse(**service.server_metadata(self.shm is not None))

    async def ModelMetadata(self, request, context):
        async def go():
            md = self.m.get(request.name, request.version).model.metadata()
            T = self.pb2.ModelMetadataResponse.TensorMetadata
            return self.pb2.ModelMetadataResponse(
                name=md["name"], versions=md["versions"], platform=md["platform"],
                inputs=[T(**t) for t in md["inputs"]], outputs=[T(**t) for t in md["outputs"]])
        return await self._call(context, go)

    async def ModelConfig(self, request, context):
        async def go():
            return self.pb2.ModelConfigResponse(config=self.m.get(request.name, request.version).model.config)
        return await self._call(context, go)

    async def ModelStatistics(self, request, context):
        from google.protobuf import json_format

        async def go():
            stats = service.model_stats(self.m, request.name, request.version)
            return json_format.ParseDict(stats, self.pb2.ModelStatisticsResponse())
        return await self._call(context, go)

    async def ModelInfer(self, request, context):
        async def go():
            shm = None if self.shm is None else self.shm.for_client(_peer_host(context), _auth(context))
            req = decode(request, shm)
            res = await service.infer(self.m, request.model_name, request.model_version, req)
            out = self.pb2.ModelInferResponse(model_name=res.model, model_version=res.version, id=request.id)
            for name, arr in res.outputs.items():
                dt = datatype_of(arr.dtype)
                out.outputs.add(name=name, datatype=dt, shape=list(arr.shape))
                # one raw_output_contents per output, empty for one in shared memory (as Triton answers)
                out.raw_output_contents.append(b"" if name in res.in_shm else serialize_bytes(arr) if dt == "BYTES"
                                               else np.ascontiguousarray(arr).tobytes())
            return out
        return await self._call(context, go)

    # Triton's system shared-memory extension (shm.py); CUDA shared memory is not supported
    def _regions(self, context) -> SharedMemory:
        if self.shm is None:
            raise ProtocolError("system shared memory is not enabled on this server: send the tensors in the request")
        self.shm.check_client(_peer_host(context), _auth(context))
        return self.shm

    async def SystemSharedMemoryStatus(self, request, context):
        async def go():
            R = self.pb2.SystemSharedMemoryStatusResponse
            return R(regions={r["name"]: R.RegionStatus(**r) for r in self._regions(context).status(request.name)})
        return await self._call(context, go)

    async def SystemSharedMemoryRegister(self, request, context):
        async def go():
            self._regions(context).register(request.name, request.key, request.offset, request.byte_size)
            return self.pb2.SystemSharedMemoryRegisterResponse()
        return await self._call(context, go)

    async def SystemSharedMemoryUnregister(self, request, context):
        async def go():
            self._regions(context).unregister(request.name)
            return self.pb2.SystemSharedMemoryUnregisterResponse()
        return await self._call(context, go)

    async def _no_cuda(self, context):
        async def go():
            raise ProtocolError("CUDA shared memory is not supported (bushu serves on CPU): use system shared memory")
        return await self._call(context, go)

    async def CudaSharedMemoryStatus(self, request, context):
        return await self._no_cuda(context)

    async def CudaSharedMemoryRegister(self, request, context):
        return await self._no_cuda(context)

    async def CudaSharedMemoryUnregister(self, request, context):
        return await self._no_cuda(context)

    async def RepositoryIndex(self, request, context):
        M = self.pb2.RepositoryIndexResponse.ModelIndex
        return self.pb2.RepositoryIndexResponse(models=[M(**m) for m in self.m.index()])

    def _authorize(self, context) -> None:
        if not self.model_control:
            raise ProtocolError("repository load/unload is off: start the server with --allow-model-control", 403)
        if self.token:
            auth = dict(context.invocation_metadata()).get("authorization", "")
            if not hmac.compare_digest(auth.encode(), f"Bearer {self.token}".encode()):
                raise ProtocolError("repository load/unload needs 'authorization: Bearer <token>' metadata", 401)

    async def RepositoryModelLoad(self, request, context):
        async def go():
            self._authorize(context)
            await self.m.load(request.model_name)
            return self.pb2.RepositoryModelLoadResponse()
        return await self._call(context, go)

    async def RepositoryModelUnload(self, request, context):
        async def go():
            self._authorize(context)
            await self.m.unload(request.model_name)
            return self.pb2.RepositoryModelUnloadResponse()
        return await self._call(context, go)


class _Aborted(Exception):
    def __init__(self, code, details: str):
        super().__init__(details)
        self.code, self.details = code, details


class _Context:
    """The part of ``grpc.aio.ServicerContext`` the :class:`Servicer` uses, for calls that arrive as bytes."""

    def __init__(self, metadata, peer: str = ""):
        self._metadata = tuple(metadata)
        self._peer = peer

    def invocation_metadata(self):
        return self._metadata

    def peer(self) -> str:
        return self._peer

    async def abort(self, code, details: str):
        raise _Aborted(code, details)


async def invoke(servicer: Servicer, method: str, request: bytes, metadata=(), peer: str = "") -> tuple[str, bytes | str]:
    """Run ``servicer.<method>`` on a serialized request, as a gRPC server would (for a process that forwards gRPC
    calls, such as the ``--ray`` front; ``peer`` is the client's, as ``context.peer()`` gave it there). Returns
    ``("", serialized response)`` or ``(status code name, message)``."""
    handler = getattr(servicer, method, None)
    if handler is None or not hasattr(service_pb2, f"{method}Request"):
        return "UNIMPLEMENTED", f"no gRPC method {method}"
    try:
        response = await handler(getattr(service_pb2, f"{method}Request").FromString(request), _Context(metadata, peer))
    except _Aborted as e:
        return e.code.name, e.details
    return "", response.SerializeToString()


async def start(manager: ModelManager, host: str, port: int, *, model_control: bool, token: str | None,
                max_message_bytes: int, shm: SharedMemory | None = None):
    """Start the gRPC server on the running loop; returns ``(server, bound port)``."""
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", max_message_bytes),
                                      ("grpc.max_send_message_length", max_message_bytes)])
    servicer = Servicer(manager, model_control=model_control, token=token, shm=shm)
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if not bound and port:
        raise BushuError(f"can't listen for gRPC on {host}:{port}: pick another --grpc-port")
    await server.start()
    return server, bound
