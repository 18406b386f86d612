"""``bushu serve --ray``: the same repository as Ray Serve deployments, behind the same HTTP protocol.

One deployment per model (``model-<name>``), each replica a one-model :class:`~bushu.serve.app.HttpApp` with its own
scheduler, so per-model routes, dynamic batching and errors behave exactly as in the single-process server. An
ingress deployment routes ``/v2/models/<name>/...`` to the model's deployment and answers the server-level routes
(``/v2``, health, repository index) itself. Replicas scale on queue depth with Ray Serve's autoscaler
(``target_ongoing_requests``) between ``replicas`` and ``max_replicas``.

``/metrics`` (same names and labels as the single-process server) is answered by the ingress on the HTTP port from a
``metrics`` deployment that sums what every replica reports each second: counters are the sum over replicas (a
replica's counts stay after it stops, so they never go down), the queue depth the sum over live replicas, and they
lag by up to a second. gRPC (``GRPCInferenceService``) is served by the driver process, which forwards each call as
bytes to a replica of the model it names; the replica answers with the single-process server's servicer. What differs
from the single-process server: per-model statistics (``/stats``, ``ModelStatistics``) are those of the replica that
answers; repository load/unload is not served, and ``--poll``/``--allow-model-control`` are refused. Ray runs without its token auth (``RAY_AUTH_MODE=disabled``) so
nothing is written under the home folder.

System shared memory (Triton's extension, :mod:`bushu.serve.shm`) works as in the single-process server: the ingress
keeps the registry and answers register/unregister/status (gRPC ones forwarded to it by the driver); every infer
request it forwards carries the registry's snapshot, which the replica mirrors (maps the regions that are new to it)
before reading the tensors. The client's address travels with the request, so the loopback rule and
``--allow-shared-memory``/``--token`` apply as they do without Ray. A replica on another machine of a Ray cluster
refuses the regions, saying why.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
import time
import uuid

import grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc

from ..errors import BushuError, require
from .config import ModelDefaults
from .repository import Repository

log = logging.getLogger("bushu.serve")
REPORT_S = 1.0  # how often a replica sends its statistics to the metrics deployment


class ModelReplica:
    """One replica of one model: a one-model HttpApp answering forwarded HTTP requests, with a mirror of the
    ingress's shared-memory registry (``shm``: ``(allow_remote, token)``)."""

    def __init__(self, repository: str, name: str, defaults: ModelDefaults, max_body_bytes: int, hub=None,
                 shm: tuple = (False, None)):
        from .app import HttpApp, HttpOptions
        from .manager import ModelManager
        from .shm import SharedMemory

        self.name = name
        self.manager = ModelManager(Repository(repository, defaults), defaults)
        self.shm = SharedMemory(allow_remote=shm[0], token=shm[1])
        self.app = HttpApp(self.manager, HttpOptions(max_body_bytes=max_body_bytes), shm=self.shm)
        self.hub = hub
        self._servicer = None
        self._loading: asyncio.Future | None = None
        self._reporting: asyncio.Task | None = None

    async def _ensure_loaded(self) -> None:
        # the schedulers need the replica's event loop, which __init__ doesn't run on
        if self._loading is None:
            self._loading = asyncio.ensure_future(self.manager.load(self.name))
            if self.hub is not None:
                self._reporting = asyncio.get_running_loop().create_task(self._report())
        await asyncio.shield(self._loading)

    async def _report(self) -> None:
        from . import metrics

        replica = uuid.uuid4().hex
        while True:
            await asyncio.sleep(REPORT_S)
            try:
                await self.hub.report.remote(replica, metrics.rows(self.manager))
            except Exception as e:  # the hub restarting must not stop the replica
                log.warning("bushu serve --ray: can't report statistics: %s", e)

    async def grpc(self, method: str, request: bytes, metadata: tuple, peer: str = "",
                   shm: tuple | None = None) -> tuple[str, bytes | str]:
        """One ``GRPCInferenceService`` call, serialized, answered by this replica (see ``grpc_server.invoke``);
        ``shm``: the ingress's shared-memory snapshot when the request uses shared memory."""
        from . import grpc_server

        await self._ensure_loaded()
        if self._servicer is None:
            self._servicer = grpc_server.Servicer(self.manager, model_control=False, token=None, shm=self.shm)
        if shm is not None:
            self.shm.mirror(shm)
        return await grpc_server.invoke(self._servicer, method, request, metadata, peer)

    async def ready(self) -> bool:
        await self._ensure_loaded()
        return True

    async def __call__(self, method: str, path: str, headers: list, body: bytes, client: tuple | None = None,
                       shm: tuple | None = None) -> tuple[int, list, bytes]:
        """A forwarded HTTP request (``client``: the client's address; ``shm``: the ingress's shared-memory
        snapshot)."""
        await self._ensure_loaded()
        if shm is not None:
            self.shm.mirror(shm)
        return await _asgi(self.app, method, path, headers, body, client)


async def _asgi(app, method: str, path: str, headers: list, body: bytes, client) -> tuple[int, list, bytes]:
    """Run one request through an ASGI ``app``; its (status, headers, body)."""
    scope = {"type": "http", "method": method, "path": path, "headers": headers, "server": None, "client": client}
    sent: list[dict] = []

    async def receive():
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(msg):
        sent.append(msg)

    await app(scope, receive, send)
    return sent[0]["status"], sent[0]["headers"], b"".join(m["body"] for m in sent[1:])


class MetricsHub:
    """The replicas' latest statistics, summed per model version for ``/metrics``."""

    STALE_S = 10 * REPORT_S  # a replica silent this long no longer counts towards the queue depth

    def __init__(self):
        self._reports: dict[str, tuple[float, list]] = {}

    def report(self, replica: str, rows: list) -> None:
        self._reports[replica] = (time.monotonic(), rows)

    def exposition(self) -> bytes:
        from .metrics import Row, render
        from .stats import ModelStats

        now, parts, depth = time.monotonic(), {}, {}
        for t, rows in self._reports.values():
            for r in rows:
                key = (r.model, r.version)
                parts.setdefault(key, []).append(r.stats)
                depth[key] = depth.get(key, 0) + (r.queue_depth if now - t < self.STALE_S else 0)
        return render([Row(m, v, ModelStats.total(parts[m, v]), depth[m, v]) for m, v in sorted(parts)])


class Ingress:
    """Routes KServe v2 requests to the model deployments; keeps the system shared-memory registry (``shm``:
    ``(allow_remote, token)``), whose routes it answers with the single-process server's code."""

    def __init__(self, handles: dict, hub=None, shm: tuple = (False, None)):
        from . import grpc_server
        from .app import HttpApp
        from .shm import SharedMemory

        self.handles = handles
        self.hub = hub
        self.shm = SharedMemory(allow_remote=shm[0], token=shm[1])
        self._shm_app = HttpApp(None, shm=self.shm)  # answers /v2/systemsharedmemory/... and /v2/cudasharedmemory/...
        self._shm_servicer = grpc_server.Servicer(None, model_control=False, token=None, shm=self.shm)

    def shm_snapshot(self) -> tuple:
        return self.shm.snapshot()

    async def grpc(self, method: str, request: bytes, metadata: tuple, peer: str = "") -> tuple[str, bytes | str]:
        """A shared-memory ``GRPCInferenceService`` call forwarded by the driver (register/unregister/status)."""
        from . import grpc_server

        if "SharedMemory" not in method:
            return "UNIMPLEMENTED", f"the ingress answers shared-memory calls only, not {method}"
        return await grpc_server.invoke(self._shm_servicer, method, request, metadata, peer)

    async def __call__(self, request):
        import orjson
        from starlette.responses import Response

        from . import service

        path = request.url.path.rstrip("/")
        parts = path.split("/")[1:]
        client = tuple(request.client) if request.client else None
        if parts[:2] == ["v2", "models"] and len(parts) >= 3 and parts[2] in self.handles:
            headers = [(k.encode(), v.encode()) for k, v in request.headers.items()]
            status, out_headers, body = await self.handles[parts[2]].remote(
                request.method, path, headers, await request.body(), client, self.shm.snapshot())
            return Response(body, status, headers={k.decode(): v.decode() for k, v in out_headers
                                                   if k != b"content-length"})
        if parts[:2] in (["v2", "systemsharedmemory"], ["v2", "cudasharedmemory"]):
            headers = [(k.encode(), v.encode()) for k, v in request.headers.items()]
            status, out_headers, body = await _asgi(self._shm_app, request.method, path, headers,
                                                    await request.body(), client)
            return Response(body, status, headers={k.decode(): v.decode() for k, v in out_headers
                                                   if k != b"content-length"})
        if path in ("", "/v2"):
            return Response(orjson.dumps(service.server_metadata(True)), 200, media_type="application/json")
        if path == "/v2/health/live":
            return Response(b"", 200)
        if path == "/v2/health/ready":
            await asyncio.gather(*(h.ready.remote() for h in self.handles.values()))
            return Response(b"", 200)
        if path == "/metrics" and self.hub is not None:
            from .metrics import CONTENT_TYPE

            return Response(await self.hub.exposition.remote(), 200, headers={"content-type": CONTENT_TYPE})
        if path == "/v2/repository/index":
            return Response(orjson.dumps([{"name": n, "version": "", "state": "READY", "reason": ""}
                                          for n in sorted(self.handles)]), 200, media_type="application/json")
        return Response(orjson.dumps({"error": f"no route {request.method} {path} (or unknown model)"}), 404,
                        media_type="application/json")


def build(repository: str, defaults: ModelDefaults, *, replicas: int = 1, max_replicas: int | None = None,
          max_body_bytes: int = 64 * 2**20, shm: tuple = (False, None)):
    """The Ray Serve application for ``repository`` (not yet running); ``shm``: shared memory's
    ``(allow_remote, token)``."""
    serve = require("ray.serve", extra="ray", feature="bushu serve --ray")
    names = Repository(repository, defaults).names()
    scaling = ({"autoscaling_config": {"min_replicas": replicas, "max_replicas": max_replicas,
                                       "target_ongoing_requests": 4}}
               if max_replicas and max_replicas > replicas else {"num_replicas": replicas})
    # num_cpus=0: ONNX Runtime's threads do the work; Ray must not refuse replicas on a small machine
    model_dep = serve.deployment(ModelReplica, ray_actor_options={"num_cpus": 0}, max_ongoing_requests=64, **scaling)
    hub = serve.deployment(MetricsHub, name="metrics", ray_actor_options={"num_cpus": 0}).bind()
    handles = {n: model_dep.options(name=f"model-{n}").bind(repository, n, defaults, max_body_bytes, hub, shm)
               for n in names}
    # one ingress replica: it holds the shared-memory registry
    return serve.deployment(Ingress, name="ingress", num_replicas=1,
                            ray_actor_options={"num_cpus": 0}).bind(handles, hub, shm)


class GrpcFront(service_pb2_grpc.GRPCInferenceServiceServicer):
    """``GRPCInferenceService`` in the driver: server-level calls answered here, model calls forwarded as bytes to a
    replica of the model (blocking calls; grpc's thread pool runs them concurrently), shared-memory calls to the
    ingress, which keeps the registry. Repository load/unload answer UNIMPLEMENTED."""

    def __init__(self, handles: dict, ingress=None):
        from . import service

        self.handles, self.ingress, self.grpc, self.pb2, self.service = handles, ingress, grpc, service_pb2, service

    def _answer(self, method: str, context, code: str, payload):
        if code:
            context.abort(getattr(self.grpc.StatusCode, code), payload)
        return getattr(self.pb2, f"{method}Response").FromString(payload)

    def _forward(self, method: str, model: str, request, context, shm: tuple | None = None):
        handle = self.handles.get(model)
        if handle is None:
            context.abort(self.grpc.StatusCode.NOT_FOUND,
                          f"unknown model '{model}': this server has {', '.join(sorted(self.handles))}")
        metadata = tuple((m.key, m.value) for m in context.invocation_metadata())
        code, payload = handle.grpc.remote(method, request.SerializeToString(), metadata, context.peer(), shm).result()
        return self._answer(method, context, code, payload)

    def _shm_call(self, method: str, request, context):
        metadata = tuple((m.key, m.value) for m in context.invocation_metadata())
        code, payload = self.ingress.grpc.remote(method, request.SerializeToString(), metadata,
                                                 context.peer()).result()
        return self._answer(method, context, code, payload)

    def SystemSharedMemoryStatus(self, request, context):
        return self._shm_call("SystemSharedMemoryStatus", request, context)

    def SystemSharedMemoryRegister(self, request, context):
        return self._shm_call("SystemSharedMemoryRegister", request, context)

    def SystemSharedMemoryUnregister(self, request, context):
        return self._shm_call("SystemSharedMemoryUnregister", request, context)

    def CudaSharedMemoryStatus(self, request, context):
        return self._shm_call("CudaSharedMemoryStatus", request, context)

    def CudaSharedMemoryRegister(self, request, context):
        return self._shm_call("CudaSharedMemoryRegister", request, context)

    def CudaSharedMemoryUnregister(self, request, context):
        return self._shm_call("CudaSharedMemoryUnregister", request, context)

    def ServerLive(self, request, context):
        return self.pb2.ServerLiveResponse(live=True)

    def ServerReady(self, request, context):
        return self.pb2.ServerReadyResponse(ready=all(h.ready.remote().result() for h in self.handles.values()))

    def ServerMetadata(self, request, context):
        return self.pb2.ServerMetadataResponse(**self.service.server_metadata(True))

    def RepositoryIndex(self, request, context):
        M = self.pb2.RepositoryIndexResponse.ModelIndex
        return self.pb2.RepositoryIndexResponse(models=[M(name=n, state="READY") for n in sorted(self.handles)])

    def ModelReady(self, request, context):
        if request.name not in self.handles:
            return self.pb2.ModelReadyResponse(ready=False)
        return self._forward("ModelReady", request.name, request, context)

    def ModelMetadata(self, request, context):
        return self._forward("ModelMetadata", request.name, request, context)

    def ModelConfig(self, request, context):
        return self._forward("ModelConfig", request.name, request, context)

    def ModelStatistics(self, request, context):
        if request.name:
            return self._forward("ModelStatistics", request.name, request, context)
        out = self.pb2.ModelStatisticsResponse()
        for n in sorted(self.handles):
            one = self._forward("ModelStatistics", n, self.pb2.ModelStatisticsRequest(name=n), context)
            out.model_stats.extend(one.model_stats)
        return out

    def ModelInfer(self, request, context):
        uses_shm = any("shared_memory_region" in t.parameters for t in (*request.inputs, *request.outputs))
        shm = self.ingress.shm_snapshot.remote().result() if uses_shm else None  # the registry as of now
        return self._forward("ModelInfer", request.model_name, request, context, shm)


def _start_grpc(handles: dict, ingress, host: str, port: int, max_message_bytes: int):
    """The driver's gRPC server (see :class:`GrpcFront`); returns ``(server, bound port)``."""
    from concurrent.futures import ThreadPoolExecutor

    server = grpc.server(ThreadPoolExecutor(max_workers=32, thread_name_prefix="bushu-grpc"),
                         options=[("grpc.max_receive_message_length", max_message_bytes),
                                  ("grpc.max_send_message_length", max_message_bytes)])
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(GrpcFront(handles, ingress), server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if not bound and port:
        raise BushuError(f"can't listen for gRPC on {host}:{port}: pick another --grpc-port")
    server.start()
    return server, bound


def serve_ray(repository: str, options, *, address: str | None = None, replicas: int = 1,
              max_replicas: int | None = None, on_ready=None):
    """Run ``repository`` on Ray Serve until SIGTERM/SIGINT; see :func:`bushu.serve.serve`."""
    from . import ServeResult
    from .server import Endpoints, _url, check_options

    check_options(options)
    if options.poll_s:
        raise BushuError("--poll is not available with --ray: redeploy (run bushu serve --ray again) to pick up "
                         "changed models")
    if options.model_control:
        raise BushuError("--allow-model-control is not available with --ray: the deployments are fixed when it starts")
    if options.http_port == 0:
        raise BushuError("--ray needs a fixed --http-port (Ray Serve's proxy can't pick a free one)")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray = require("ray", extra="ray", feature="bushu serve --ray")
    serve = require("ray.serve", extra="ray", feature="bushu serve --ray")
    app = build(repository, options.defaults, replicas=replicas, max_replicas=max_replicas,
                max_body_bytes=options.max_body_bytes, shm=(options.shared_memory_remote, options.token))
    ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        serve.start(http_options={"host": options.host, "port": options.http_port})
        serve.run(app, name="bushu", route_prefix="/", blocking=False)
        names = tuple(Repository(repository, options.defaults).names())
        handles = {n: serve.get_deployment_handle(f"model-{n}", app_name="bushu") for n in names}
        for h in handles.values():  # models open lazily in each replica; announce only once they have
            h.ready.remote().result()
        grpc_server, grpc_addr = None, None
        if options.grpc_port is not None:
            ingress = serve.get_deployment_handle("ingress", app_name="bushu")
            grpc_server, port = _start_grpc(handles, ingress, options.host, options.grpc_port, options.max_body_bytes)
            grpc_addr = _url(options.host, port)
        import sys

        http = _url(options.host, options.http_port)
        ep = Endpoints(f"http://{http}", grpc_addr, f"http://{http}/metrics", names)
        (on_ready or (lambda e: print(f"bushu serve: ready {e}", file=sys.stderr, flush=True)))(ep)
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        stop.wait()
        if grpc_server is not None:
            grpc_server.stop(grace=options.drain_s).wait()
        serve.shutdown()
    finally:
        ray.shutdown()
    return ServeResult(repository, {})
