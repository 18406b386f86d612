"""The HTTP/REST routes of the Open Inference Protocol (plus Triton's extensions), as a plain ASGI app.

No framework sits between the HTTP server (httpd.py) and these routes: an infer request costs one header parse (orjson), zero-copy
``np.frombuffer`` views for binary inputs, and one response write. Models open in the ASGI lifespan (DESIGN.md
rule 9). Routes::

    GET  /v2  /v2/health/live  /v2/health/ready  /metrics
    GET  /v2/models/{m}[/versions/{v}]            metadata
    GET  /v2/models/{m}[/versions/{v}]/ready|config|stats       GET /v2/models/stats
    POST /v2/models/{m}[/versions/{v}]/infer
    POST /v2/repository/index   /v2/repository/models/{m}/load|unload   (load/unload: --allow-model-control)

Every error is a non-200 answer with ``{"error": "..."}``; nothing a client sends can stop the server.
"""

from __future__ import annotations

import dataclasses
import hmac
import logging
from collections.abc import Awaitable, Callable

import orjson

from ..errors import BushuError
from . import service
from .manager import ModelManager
from .metrics import CONTENT_TYPE, exposition
from .protocol import HEADER_LENGTH, ProtocolError, decode_request, encode_response_parts, error_body
from .shm import SharedMemory

log = logging.getLogger("bushu.serve")
_JSON = [(b"content-type", b"application/json")]


@dataclasses.dataclass(frozen=True)
class HttpOptions:
    """``max_body_bytes``: larger bodies answer 413. ``model_control``: allow repository load/unload; ``token``:
    then require ``Authorization: Bearer <token>`` for them. ``metrics_only_ports``: listening ports that answer
    ``/metrics`` alone (Triton's separate metrics port)."""

    max_body_bytes: int = 64 * 2**20
    model_control: bool = False
    token: str | None = None
    metrics_only_ports: frozenset[int] = frozenset()


class HttpApp:
    """The ASGI application. ``on_startup``/``on_shutdown`` run in the lifespan (open/close models, start the
    gRPC server, stop polling)."""

    def __init__(self, manager: ModelManager, options: HttpOptions = HttpOptions(), *,
                 on_startup: list[Callable[[], Awaitable]] = (), on_shutdown: list[Callable[[], Awaitable]] = (),
                 shm: SharedMemory | None = None):
        self.manager = manager
        self.options = options
        self.shm = shm
        self.on_startup = list(on_startup)
        self.on_shutdown = list(on_shutdown)

    async def __call__(self, scope, receive, send):
        if scope["type"] == "lifespan":
            return await self._lifespan(receive, send)
        if scope["type"] != "http":
            return
        try:
            status, headers, body = await self._route(scope, receive)
        except ProtocolError as e:
            status, headers, body = e.status, _JSON, error_body(str(e))
        except BushuError as e:
            status, headers, body = 400, _JSON, error_body(str(e))
        except Exception as e:  # a bug: answer 500, keep serving
            log.exception("bushu serve: internal error")
            status, headers, body = 500, _JSON, error_body(f"internal error: {type(e).__name__}: {e}")
        # a body is bytes, or a list of buffers (an infer answer's header and its tensors, not copied together)
        # sent as consecutive body messages; never chunked: the length is known
        parts = body if isinstance(body, list) else [body]
        headers = [*headers, (b"content-length", str(sum(len(b) for b in parts)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        for i, b in enumerate(parts):
            await send({"type": "http.response.body", "body": b, "more_body": i < len(parts) - 1})

    async def _lifespan(self, receive, send):
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                try:
                    for fn in self.on_startup:
                        await fn()
                except Exception as e:
                    await send({"type": "lifespan.startup.failed", "message": str(e)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                for fn in self.on_shutdown:
                    try:
                        await fn()
                    except Exception:
                        log.exception("bushu serve: error while shutting down")
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _body(self, scope, receive) -> bytes:
        limit = self.options.max_body_bytes
        for k, v in scope["headers"]:
            if k == b"content-length" and v.isdigit() and int(v) > limit:
                raise ProtocolError(f"the request body ({int(v)} bytes) is over the {limit}-byte limit "
                                    "(raise it with --max-body-mb)", status=413)
        chunks, size = [], 0
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                raise ProtocolError("the client disconnected", status=400)
            chunk = msg.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise ProtocolError(f"the request body is over the {limit}-byte limit (raise it with --max-body-mb)",
                                    status=413)
            chunks.append(chunk)
            if not msg.get("more_body"):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def _authorize(self, scope) -> None:
        if not self.options.model_control:
            raise ProtocolError("repository load/unload is off: start the server with --allow-model-control",
                                status=403)
        if self.options.token:
            auth = dict(scope["headers"]).get(b"authorization", b"").decode(errors="replace")
            if not hmac.compare_digest(auth.encode(), f"Bearer {self.options.token}".encode()):
                raise ProtocolError("repository load/unload needs 'Authorization: Bearer <token>' with the server's "
                                    "--token", status=401)

    async def _route(self, scope, receive):
        path, method = scope["path"].rstrip("/"), scope["method"]
        server = scope.get("server")
        if server and server[1] in self.options.metrics_only_ports and path != "/metrics":
            raise ProtocolError(f"this port serves /metrics only, not {path}", status=404)
        parts = path.split("/")[1:]
        m = self.manager
        if parts[:2] == ["v2", "models"] and len(parts) >= 3 and parts[2] != "stats":
            name, rest = parts[2], parts[3:]
            version = ""
            if rest[:1] == ["versions"] and len(rest) >= 2:
                version, rest = rest[1], rest[2:]
            action = rest[0] if rest else ""
            if action == "infer" and len(rest) == 1:
                _need(method, "POST", path)
                return await self._infer(scope, receive, name, version)
            _need(method, "GET", path)
            if not action:
                return 200, _JSON, orjson.dumps(m.get(name, version).model.metadata())
            if action == "ready" and len(rest) == 1:
                m.get(name, version)
                return 200, _JSON, b""
            if action == "config" and len(rest) == 1:
                return 200, _JSON, orjson.dumps(service.model_config(m, name, version))
            if action == "stats" and len(rest) == 1:
                return 200, _JSON, orjson.dumps(service.model_stats(m, name, version))
        elif path in ("/v2", ""):
            _need(method, "GET", path)
            return 200, _JSON, orjson.dumps(service.server_metadata(self.shm is not None))
        elif parts[:2] in (["v2", "systemsharedmemory"], ["v2", "cudasharedmemory"]):
            return await self._shared_memory(scope, receive, method, path, parts)
        elif path == "/v2/health/live":
            return 200, _JSON, b""
        elif path == "/v2/health/ready":
            if not m.ready():
                raise ProtocolError("no model is ready yet", status=503)
            return 200, _JSON, b""
        elif path == "/v2/models/stats":
            return 200, _JSON, orjson.dumps(service.model_stats(m))
        elif path == "/metrics":
            return 200, [(b"content-type", CONTENT_TYPE.encode())], exposition(m)
        elif path == "/v2/repository/index":
            _need(method, "POST", path)
            return 200, _JSON, orjson.dumps(m.index())
        elif parts[:3] == ["v2", "repository", "models"] and len(parts) == 5 and parts[4] in ("load", "unload"):
            _need(method, "POST", path)
            self._authorize(scope)
            await self._body(scope, receive)  # parameters (config overrides) are not supported; read and ignore
            await (m.load(parts[3]) if parts[4] == "load" else m.unload(parts[3]))
            return 200, _JSON, b""
        raise ProtocolError(f"no route {method} {path}: see the Open Inference Protocol (KServe v2)", status=404)

    async def _shared_memory(self, scope, receive, method: str, path: str, parts: list[str]):
        """Triton's system shared-memory extension (shm.py); CUDA shared memory answers 400."""
        rest = parts[2:]
        if rest[:1] == ["region"] and len(rest) == 3:
            region, action = rest[1], rest[2]
        elif len(rest) == 1:
            region, action = "", rest[0]
        else:
            raise ProtocolError(f"no route {method} {path}", status=404)
        if action not in ("status", "register", "unregister") or (action == "register" and not region):
            raise ProtocolError(f"no route {method} {path}: use .../region/{{name}}/register|unregister|status",
                                status=404)
        _need(method, "GET" if action == "status" else "POST", path)
        body = await self._body(scope, receive) if action == "register" else b""
        if parts[1] == "cudasharedmemory":
            raise ProtocolError("CUDA shared memory is not supported (bushu serves on CPU): use system shared memory")
        if self.shm is None:
            raise ProtocolError("system shared memory is not enabled on this server: send the tensors in the request")
        self.shm.check_client((scope.get("client") or ("",))[0], _header(scope, b"authorization"))
        if action == "status":
            return 200, _JSON, orjson.dumps(self.shm.status(region))
        if action == "unregister":
            self.shm.unregister(region)
            return 200, _JSON, b""
        try:
            req = orjson.loads(body)
        except orjson.JSONDecodeError as e:
            raise ProtocolError(f"malformed JSON in the register request: {e}") from None
        if not isinstance(req, dict) or "key" not in req or "byte_size" not in req:
            raise ProtocolError("a system shared memory register request is a JSON object with 'key', 'byte_size' "
                                "and optionally 'offset'")
        self.shm.register(region, req["key"], req.get("offset", 0), req["byte_size"])
        return 200, _JSON, b""

    async def _infer(self, scope, receive, name: str, version: str):
        body = await self._body(scope, receive)  # read first: an unread body would break keep-alive
        self.manager.get(name, version)
        header_length = None
        for k, v in scope["headers"]:
            if k == HEADER_LENGTH.encode():
                if not v.isdigit():
                    raise ProtocolError(f"Inference-Header-Content-Length must be a number, got {v.decode(errors='replace')!r}")
                header_length = int(v)
        shm = None if self.shm is None else self.shm.for_client((scope.get("client") or ("",))[0],
                                                               _header(scope, b"authorization"))
        req = decode_request(body, header_length, shm)
        res = await service.infer(self.manager, name, version, req)
        out, json_len = encode_response_parts(res.model, res.version, req.id, res.outputs, res.binary,
                                              in_shm=res.in_shm)
        if json_len is None:
            return 200, _JSON, out
        return 200, [(b"content-type", b"application/octet-stream"),
                     (b"inference-header-content-length", str(json_len).encode())], out


def _header(scope, name: bytes) -> str | None:
    for k, v in scope["headers"]:
        if k == name:
            return v.decode(errors="replace")
    return None


def _need(method: str, want: str, path: str) -> None:
    if method != want:
        raise ProtocolError(f"{path} takes {want}, not {method}", status=405)
