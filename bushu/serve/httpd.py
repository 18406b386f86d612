"""A small HTTP/1.1 server for the ASGI app, made for tensor bodies: a body is received straight into one buffer.

An ASGI server such as uvicorn hands a body over in 64 KiB pieces, each copied out of a growing buffer and joined
again by the app -- four copies of a 4.8 MB batch of images, and a socket pause/resume per piece, all on the event
loop the engine threads compete with for the cores. Here a connection is an :class:`asyncio.BufferedProtocol`:
httptools parses the request line and headers, and once ``Content-Length`` is known the rest of the body goes by
``recv_into`` into a buffer of that size, which the app gets as one ``http.request`` message and decodes into
zero-copy numpy views. Chunked bodies go through the parser. The response is one ``writelines`` of head and body.

What it does, and no more: keep-alive (HTTP/1.1 default, ``Connection: close``, HTTP/1.0), one request at a time per
connection (pipelined requests wait their turn), ``Expect: 100-continue``, a body over ``max_body_bytes`` handed to
the app unread (it answers 413) and then skipped, 400 for a request httptools can't parse and 431 for headers over
64 KiB (both close the connection), idle keep-alive connections closed after ``keep_alive_s``. :func:`serve` runs
the app's ASGI lifespan around it and drains on SIGTERM/SIGINT: stop accepting, close idle connections, let
requests in flight finish (up to ``drain_s``), then the lifespan shutdown.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections import deque
from collections.abc import Callable
from http import HTTPStatus
from urllib.parse import unquote

import httptools
import numpy as np

log = logging.getLogger("bushu.serve")
_MAX_HEAD = 64 * 1024
_SCRATCH = 256 * 1024
_ALIGN = 64
_ASGI = {"version": "3.0", "spec_version": "2.3"}
_REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}


class _Request:
    __slots__ = ("url", "headers", "method", "version", "keep_alive", "length", "body", "filled", "chunks", "size",
                 "early")

    def __init__(self):
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.length: int | None = None  # Content-Length
        self.body: memoryview | None = None  # the Content-Length buffer, filled up to ``filled``
        self.filled = 0
        self.chunks: list[bytes] = []  # a body without Content-Length (chunked)
        self.size = 0
        self.early = False  # handed to the app before its body was read (over the limit); the body is skipped


class _Connection(asyncio.BufferedProtocol):
    def __init__(self, server: HttpServer):
        self.server = server
        self.loop = asyncio.get_running_loop()
        self.transport = None
        self.parser = httptools.HttpRequestParser(self)
        self.req: _Request | None = None  # being received
        self.direct = False  # the next bytes go straight into self.req.body
        self.head = 0
        self.ready: deque[_Request] = deque()  # received, waiting for the one running
        self.task: asyncio.Task | None = None
        self.closing = False
        self.paused = False
        self.idle: asyncio.TimerHandle | None = None
        self.writable = asyncio.Event()
        self.writable.set()

    # ---------------------------------------------------------------- asyncio
    def connection_made(self, transport):
        self.transport = transport
        self.sockname = transport.get_extra_info("sockname")[:2]
        peer = transport.get_extra_info("peername")
        self.peer = tuple(peer[:2]) if isinstance(peer, tuple) else None
        self.server.connections.add(self)
        self._arm_idle()

    def connection_lost(self, exc):
        self.server.connections.discard(self)
        self.closing = True
        self.transport = None
        if self.idle:
            self.idle.cancel()
        self.writable.set()

    def pause_writing(self):
        self.writable.clear()

    def resume_writing(self):
        self.writable.set()

    def get_buffer(self, sizehint):
        if self.direct:
            return self.req.body[self.req.filled:]
        return self.server.scratch

    def buffer_updated(self, n):
        if self.idle:
            self.idle.cancel()
            self.idle = None
        if self.direct:
            r = self.req
            r.filled += n
            if r.filled == r.length:
                self.direct = False
                self.parser = httptools.HttpRequestParser(self)  # the old one stopped in the middle of this body
                self.req = None
                self._queue(r)
            return
        try:
            self.parser.feed_data(self.server.scratch[:n])
        except httptools.HttpParserUpgrade:
            return self._refuse(400, "HTTP upgrades are not supported")
        except httptools.HttpParserError as e:
            return self._refuse(431 if self.head > _MAX_HEAD else 400, f"malformed HTTP request: {e}")
        r = self.req
        if r is not None and r.body is not None and not r.early and r.filled < r.length:
            self.direct = True

    # ---------------------------------------------------------------- httptools
    def on_message_begin(self):
        self.req = _Request()
        self.head = 0

    def on_url(self, url: bytes):
        self.req.url += url
        self._count_head(len(url))

    def on_header(self, name: bytes, value: bytes):
        self.req.headers.append((name.lower(), value))
        self._count_head(len(name) + len(value))

    def _count_head(self, n: int) -> None:
        self.head += n
        if self.head > _MAX_HEAD:
            raise httptools.HttpParserError("the request line and headers are over 64 KiB")

    def on_headers_complete(self):
        r, p = self.req, self.parser
        r.method, r.version, r.keep_alive = p.get_method().decode(), p.get_http_version(), p.should_keep_alive()
        json_length = 0
        for k, v in r.headers:
            if k == b"content-length" and v.isdigit():
                r.length = int(v)
            elif k == b"inference-header-content-length" and v.isdigit():
                json_length = int(v)
            elif k == b"expect" and v.lower() == b"100-continue" and self.transport:
                self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        if r.length is not None and r.length > self.server.max_body_bytes:
            r.early = True
            self._queue(r)
        elif r.length:
            # not zeroed (every byte is received into it), and placed so that the binary tensors after the JSON
            # header start on a 64-byte boundary (numpy marks the views aligned; no engine needs to copy them)
            skip = -json_length % _ALIGN
            r.body = memoryview(np.empty(r.length + skip, np.uint8))[skip:]

    def on_body(self, chunk: bytes):
        r = self.req
        if r.early:
            return
        if r.body is not None:
            r.body[r.filled:r.filled + len(chunk)] = chunk
            r.filled += len(chunk)
            return
        r.chunks.append(chunk)
        r.size += len(chunk)
        if r.size > self.server.max_body_bytes:  # the app answers 413; the rest of the body is skipped
            r.early = True
            self._queue(r)

    def on_message_complete(self):
        r, self.req = self.req, None
        if not r.early:
            self._queue(r)

    # ---------------------------------------------------------------- requests
    def _queue(self, r: _Request) -> None:
        self.ready.append(r)
        if len(self.ready) > 1 and self.transport and not self.paused:
            self.transport.pause_reading()  # enough queued; read on once they have answered
            self.paused = True
        if self.task is None:
            self.task = self.loop.create_task(self._run())

    async def _run(self) -> None:
        while self.ready and self.transport is not None:
            r = self.ready.popleft()
            keep = await self._handle(r)
            if not keep or (self.closing and not self.ready):
                self.close()
                break
            if not self.writable.is_set():
                await self.writable.wait()
            if self.paused and self.transport is not None and len(self.ready) <= 1:
                self.transport.resume_reading()
                self.paused = False
        self.task = None
        self._arm_idle()

    def _scope(self, r: _Request) -> dict:
        url = httptools.parse_url(r.url)
        return {"type": "http", "asgi": _ASGI, "http_version": r.version, "method": r.method, "scheme": "http",
                "path": unquote(url.path.decode("latin-1")), "raw_path": url.path, "query_string": url.query or b"",
                "root_path": "", "headers": r.headers, "server": self.sockname, "client": self.peer}

    async def _handle(self, r: _Request) -> bool:
        """Run the app on ``r`` and write its response; returns whether the connection stays open."""
        cycle = _Cycle(r.body if r.body is not None else b"".join(r.chunks))
        try:
            await self.server.app(self._scope(r), cycle.receive, cycle.send)
        except Exception:
            log.exception("bushu serve: the HTTP app failed")
            if cycle.status is None:
                cycle.status, cycle.headers, cycle.body = 500, [(b"content-type", b"application/json")], \
                    b'{"error": "internal error"}'
        if cycle.status is None:
            cycle.status, cycle.headers, cycle.body = 500, [], []
        keep = r.keep_alive and not self.closing and not (r.early and r.chunks)
        self._write(cycle.status, cycle.headers, cycle.body if isinstance(cycle.body, list) else [cycle.body], keep)
        return keep

    def _write(self, status: int, headers: list, body: list, keep: bool) -> None:
        """One ``writelines`` of the head and the body's buffers (not joined: a tensor goes out of its array)."""
        if self.transport is None:
            return
        head = [b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b"Unknown"))]
        head += [b"%s: %s\r\n" % (k, v) for k, v in headers if k.lower() not in (b"content-length", b"connection")]
        head.append(b"content-length: %d\r\n" % sum(len(b) for b in body))
        head.append(b"\r\n" if keep else b"connection: close\r\n\r\n")
        self.transport.writelines([b"".join(head), *(b for b in body if len(b))])

    def _refuse(self, status: int, message: str) -> None:
        import orjson

        self._write(status, [(b"content-type", b"application/json")], [orjson.dumps({"error": message})], False)
        self.close()

    def close(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.close()

    def _arm_idle(self) -> None:
        if self.transport is not None and self.task is None and self.req is None:
            if self.closing:
                return self.close()
            self.idle = self.loop.call_later(self.server.keep_alive_s, self.close)

    @property
    def busy(self) -> bool:
        return self.task is not None or self.req is not None or bool(self.ready)

    def shutdown(self) -> None:
        """Answer what is in flight, then close."""
        self.closing = True
        if not self.busy:
            self.close()


class _Cycle:
    """One request's ASGI ``receive``/``send``: the whole body in one message; the response collected."""

    __slots__ = ("_body", "status", "headers", "body")

    def __init__(self, body):
        self._body = body
        self.status: int | None = None
        self.headers: list = []
        self.body: list[bytes] = []

    async def receive(self) -> dict:
        if self._body is None:
            return {"type": "http.disconnect"}
        body, self._body = self._body, None
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(self, message: dict) -> None:
        if message["type"] == "http.response.start":
            self.status, self.headers = message["status"], list(message.get("headers", ()))
        elif message["type"] == "http.response.body":
            self.body.append(message.get("body", b""))


class HttpServer:
    """The listening sockets and their connections. ``max_body_bytes`` must match the app's limit (a longer
    body is handed over unread, for the app to refuse)."""

    def __init__(self, app, *, max_body_bytes: int, keep_alive_s: float = 30.0):
        self.app, self.max_body_bytes, self.keep_alive_s = app, max_body_bytes, keep_alive_s
        self.connections: set[_Connection] = set()
        # where every connection reads what isn't a body: shared, since the parser consumes it (copying out what
        # it keeps) in the same callback that received it
        self.scratch = memoryview(bytearray(_SCRATCH))
        self._servers: list[asyncio.AbstractServer] = []

    async def start(self, sockets) -> None:
        loop = asyncio.get_running_loop()
        for s in sockets:
            self._servers.append(await loop.create_server(lambda: _Connection(self), sock=s))

    async def shutdown(self, drain_s: float) -> None:
        """Stop accepting, close idle connections, let requests in flight answer (up to ``drain_s``), close."""
        for s in self._servers:
            s.close()
        for c in list(self.connections):
            c.shutdown()
        t_end = time.monotonic() + drain_s
        while any(c.busy for c in self.connections) and time.monotonic() < t_end:
            await asyncio.sleep(0.02)
        for c in list(self.connections):
            c.close()
        while self.connections and time.monotonic() < t_end + 5:  # closing flushes what is still to be sent
            await asyncio.sleep(0.02)


class _Lifespan:
    """An ASGI app's lifespan: :meth:`startup` before serving, :meth:`shutdown` after."""

    def __init__(self, app):
        self._in: asyncio.Queue = asyncio.Queue()
        self._out: asyncio.Queue = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(app({"type": "lifespan", "asgi": _ASGI},
                                                                self._in.get, self._out.put))

    async def _step(self, kind: str) -> None:
        await self._in.put({"type": f"lifespan.{kind}"})
        msg = await self._out.get()
        if msg["type"] != f"lifespan.{kind}.complete":
            raise RuntimeError(msg.get("message") or f"lifespan {kind} failed")

    async def startup(self) -> None:
        await self._step("startup")

    async def shutdown(self) -> None:
        await self._step("shutdown")
        await self._task


async def serve(app, sockets, *, max_body_bytes: int, drain_s: float = 30.0,
                on_serving: Callable[[], None] | None = None) -> None:
    """Run ``app`` on the listening ``sockets`` until SIGTERM/SIGINT (see the module docstring). A failed lifespan
    startup raises :class:`RuntimeError` with the app's message."""
    loop = asyncio.get_running_loop()
    lifespan = _Lifespan(app)
    await lifespan.startup()
    server = HttpServer(app, max_body_bytes=max_body_bytes)
    stop = asyncio.Event()
    sigs = (signal.SIGTERM, signal.SIGINT)
    try:
        await server.start(sockets)
        for sig in sigs:
            loop.add_signal_handler(sig, stop.set)
        if on_serving is not None:
            on_serving()
        await stop.wait()
    finally:
        for sig in sigs:
            loop.remove_signal_handler(sig)
        await server.shutdown(drain_s)
        await lifespan.shutdown()


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's event loop when it is installed (the ``serve`` extra), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()
