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
    """One replica of one model: a one-model HttpApp answering forwarded HTTP requests."""

    def __init__(self, repository: str, name: str, defaults: ModelDefaults, max_body_bytes: int, hub=None):
        from .app import HttpApp, HttpOptions
        from .manager import ModelManager

        self.name = name
        self.manager = ModelManager(Repository(repository, defaults), defaults)
        self.app = HttpApp(self.manager, HttpOptions(max_body_bytes=max_body_bytes))
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

    async def grpc(self, method: str, request: bytes, metadata: tuple) -> tuple[str, bytes | str]:
        """One ``GRPCInferenceService`` call, serialized, answered by this replica (see ``grpc_server.invoke``)."""
        from . import grpc_server

        await self._ensure_loaded()
        if self._servicer is None:
            self._servicer = grpc_server.Servicer(self.manager, model_control=False, token=None)
        return await grpc_server.invoke(self._servicer, method, request, metadata)

    async def ready(self) -> bool:
        await self._ensure_loaded()
        return True

    async def __call__(self, method: str, path: str, headers: list, body: bytes) -> tuple[int, list, bytes]:
        await self._ensure_loaded()
        scope = {"type": "http", "method": method, "path": path, "headers": headers, "server": None}
        sent: list[dict] = []

        async def receive():
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(msg):
            sent.append(msg)

        await self.app(scope, receive, send)
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
    """Routes KServe v2 requests to the model deployments."""

    def __init__(self, handles: dict, hub=None):
        self.handles = handles
        self.hub = hub

    async def __call__(self, request):
        import orjson
        from starlette.responses import Response

        from . import service

        path = request.url.path.rstrip("/")
        parts = path.split("/")[1:]
        if parts[:2] == ["v2", "models"] and len(parts) >= 3 and parts[2] in self.handles:
            headers = [(k.encode(), v.encode()) for k, v in request.headers.items()]
            status, out_headers, body = await self.handles[parts[2]].remote(
                request.method, path, headers, await request.body())
            return Response(body, status, headers={k.decode(): v.decode() for k, v in out_headers
                                                   if k != b"content-length"})
        if path in ("", "/v2"):
            return Response(orjson.dumps(service.server_metadata()), 200, media_type="application/json")
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
          max_body_bytes: int = 64 * 2**20):
    """The Ray Serve application for ``repository`` (not yet running)."""
    serve = require("ray.serve", extra="ray", feature="bushu serve --ray")
    names = Repository(repository, defaults).names()
    scaling = ({"autoscaling_config": {"min_replicas": replicas, "max_replicas": max_replicas,
                                       "target_ongoing_requests": 4}}
               if max_replicas and max_replicas > replicas else {"num_replicas": replicas})
    # num_cpus=0: ONNX Runtime's threads do the work; Ray must not refuse replicas on a small machine
    model_dep = serve.deployment(ModelReplica, ray_actor_options={"num_cpus": 0}, max_ongoing_requests=64, **scaling)
    hub = serve.deployment(MetricsHub, name="metrics", ray_actor_options={"num_cpus": 0}).bind()
    handles = {n: model_dep.options(name=f"model-{n}").bind(repository, n, defaults, max_body_bytes, hub)
               for n in names}
    return serve.deployment(Ingress, name="ingress", ray_actor_options={"num_cpus": 0}).bind(handles, hub)


class GrpcFront(service_pb2_grpc.GRPCInferenceServiceServicer):
    """``GRPCInferenceService`` in the driver: server-level calls answered here, model calls forwarded as bytes to a
    replica of the model (blocking calls; grpc's thread pool runs them concurrently). Repository load/unload answer
    UNIMPLEMENTED."""

    def __init__(self, handles: dict):
        from . import service

        self.handles, self.grpc, self.pb2, self.service = handles, grpc, service_pb2, service

    def _forward(self, method: str, model: str, request, context):
        handle = self.handles.get(model)
        if handle is None:
            context.abort(self.grpc.StatusCode.NOT_FOUND,
                          f"unknown model '{model}': this server has {', '.join(sorted(self.handles))}")
        metadata = tuple((m.key, m.value) for m in context.invocation_metadata())
        code, payload = handle.grpc.remote(method, request.SerializeToString(), metadata).result()
        if code:
            context.abort(getattr(self.grpc.StatusCode, code), payload)
        return getattr(self.pb2, f"{method}Response").FromString(payload)

    def ServerLive(self, request, context):
        return self.pb2.ServerLiveResponse(live=True)

    def ServerReady(self, request, context):
        return self.pb2.ServerReadyResponse(ready=all(h.ready.remote().result() for h in self.handles.values()))

    def ServerMetadata(self, request, context):
        return self.pb2.ServerMetadataResponse(**self.service.server_metadata())

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
        return self._forward("ModelInfer", request.model_name, request, context)


def _start_grpc(handles: dict, host: str, port: int, max_message_bytes: int):
    """The driver's gRPC server (see :class:`GrpcFront`); returns ``(server, bound port)``."""
    from concurrent.futures import ThreadPoolExecutor

    server = grpc.server(ThreadPoolExecutor(max_workers=32, thread_name_prefix="bushu-grpc"),
                         options=[("grpc.max_receive_message_length", max_message_bytes),
                                  ("grpc.max_send_message_length", max_message_bytes)])
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(GrpcFront(handles), server)
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
                max_body_bytes=options.max_body_bytes)
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
            grpc_server, port = _start_grpc(handles, options.host, options.grpc_port, options.max_body_bytes)
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
