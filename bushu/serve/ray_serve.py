"""``bushu serve --ray``: the same repository as Ray Serve deployments, behind the same HTTP protocol.

One deployment per model (``model-<name>``), each replica a one-model :class:`~bushu.serve.app.HttpApp` with its own
scheduler, so per-model routes, dynamic batching and errors behave exactly as in the single-process server. An
ingress deployment routes ``/v2/models/<name>/...`` to the model's deployment and answers the server-level routes
(``/v2``, health, repository index) itself. Replicas scale on queue depth with Ray Serve's autoscaler
(``target_ongoing_requests``) between ``replicas`` and ``max_replicas``.

gRPC and ``/metrics`` are the single-process server's; under Ray, use Ray's own metrics. Ray runs without its token
auth (``RAY_AUTH_MODE=disabled``) so nothing is written under the home folder.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading

from ..errors import BushuError, require
from .config import ModelDefaults
from .repository import Repository


class ModelReplica:
    """One replica of one model: a one-model HttpApp answering forwarded HTTP requests."""

    def __init__(self, repository: str, name: str, defaults: ModelDefaults, max_body_bytes: int):
        from .app import HttpApp, HttpOptions
        from .manager import ModelManager

        self.name = name
        self.manager = ModelManager(Repository(repository, defaults), defaults)
        self.app = HttpApp(self.manager, HttpOptions(max_body_bytes=max_body_bytes))
        self._loading: asyncio.Future | None = None

    async def _ensure_loaded(self) -> None:
        # the schedulers need the replica's event loop, which __init__ doesn't run on
        if self._loading is None:
            self._loading = asyncio.ensure_future(self.manager.load(self.name))
        await asyncio.shield(self._loading)

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
        return sent[0]["status"], sent[0]["headers"], sent[1]["body"]


class Ingress:
    """Routes KServe v2 requests to the model deployments."""

    def __init__(self, handles: dict):
        self.handles = handles

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
    handles = {n: model_dep.options(name=f"model-{n}").bind(repository, n, defaults, max_body_bytes) for n in names}
    return serve.deployment(Ingress, name="ingress", ray_actor_options={"num_cpus": 0}).bind(handles)


def serve_ray(repository: str, options, *, address: str | None = None, replicas: int = 1,
              max_replicas: int | None = None, on_ready=None):
    """Run ``repository`` on Ray Serve until SIGTERM/SIGINT; see :func:`bushu.serve.serve`."""
    from . import ServeResult
    from .server import Endpoints, check_options

    check_options(options)
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
        for n in names:  # models open lazily in each replica; announce only once they have
            serve.get_deployment_handle(f"model-{n}", app_name="bushu").ready.remote().result()
        import sys

        ep = Endpoints(f"http://{options.host}:{options.http_port}", None, None, names)
        (on_ready or (lambda e: print(f"bushu serve: ready {e}", file=sys.stderr, flush=True)))(ep)
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        stop.wait()
        serve.shutdown()
    finally:
        ray.shutdown()
    return ServeResult(repository, {})
