"""Run the HTTP, gRPC and metrics endpoints in one process and one event loop until SIGTERM/SIGINT.

:mod:`~bushu.serve.httpd` (httptools, on uvloop when installed) serves the ASGI app on pre-bound sockets -- the HTTP
port, and the metrics port, which answers ``/metrics`` only -- so port 0 works and the bound ports are known before
serving. The gRPC server and the repository poller start in the app's lifespan. On SIGTERM the server stops
accepting, waits for in-flight HTTP requests, then the lifespan shutdown stops gRPC with a grace period and drains
every model's queue. asyncio sets TCP_NODELAY on accepted sockets (DESIGN.md: without it a small request took
~44 ms, not ~0.4 ms).
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import socket
import sys
from collections.abc import Callable

from ..errors import BushuError, require
from .app import HttpApp, HttpOptions
from .config import ModelDefaults
from .manager import ModelManager
from .repository import Repository
from .shm import SharedMemory


@dataclasses.dataclass(frozen=True)
class ServeOptions:
    """Where to listen and how to behave. A port of 0 picks a free one; ``None`` turns the endpoint off."""

    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int | None = 8001
    metrics_port: int | None = 8002
    poll_s: float | None = None
    model_control: bool = False
    token: str | None = None
    shared_memory_remote: bool = False  # system shared memory for clients beyond loopback too
    max_body_bytes: int = 64 * 2**20
    drain_s: float = 30.0
    defaults: ModelDefaults = ModelDefaults()


@dataclasses.dataclass(frozen=True)
class Endpoints:
    http: str
    grpc: str | None
    metrics: str | None
    models: tuple[str, ...]

    def __str__(self) -> str:
        parts = [f"http={self.http}", f"grpc={self.grpc or 'off'}", f"metrics={self.metrics or 'off'}",
                 f"models={','.join(self.models)}"]
        return " ".join(parts)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_options(o: ServeOptions) -> None:
    if o.model_control and not is_loopback(o.host) and not o.token:
        raise BushuError(f"--allow-model-control on {o.host} (beyond loopback) needs a bearer token: add --token "
                         "SECRET (or set BUSHU_SERVE_TOKEN)")
    if o.shared_memory_remote and not is_loopback(o.host) and not o.token:
        raise BushuError(f"--allow-shared-memory on {o.host} (beyond loopback) needs a bearer token: add --token "
                         "SECRET (or set BUSHU_SERVE_TOKEN)")


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind((host, port))
    except OSError as e:
        s.close()
        raise BushuError(f"can't listen on {host}:{port} ({e.strerror}): pick another port") from None
    s.listen(2048)
    s.setblocking(False)
    return s


def _url(host: str, port: int) -> str:
    return f"{'[' + host + ']' if ':' in host else host}:{port}"


class Server:
    """One ``bushu serve`` process. :meth:`run` blocks until a signal stops it; ``on_ready`` gets the
    :class:`Endpoints` once models are open and the ports answer."""

    def __init__(self, repository: str, options: ServeOptions = ServeOptions()):
        check_options(options)
        self.options = options
        self.repository = Repository(repository, options.defaults)
        self.manager = ModelManager(self.repository, options.defaults)
        self.shm = SharedMemory(allow_remote=options.shared_memory_remote, token=options.token)
        self._tasks: list[asyncio.Task] = []
        self._grpc = None
        self.endpoints: Endpoints | None = None
        self._startup_error: BaseException | None = None

    def run(self, on_ready: Callable[[Endpoints], None] | None = None) -> None:
        require("httptools", extra="serve", feature="bushu serve")
        from . import httpd

        o = self.options
        http_sock = _listen(o.host, o.http_port)
        metrics_sock = _listen(o.host, o.metrics_port) if o.metrics_port is not None else None
        socks = [http_sock] + ([metrics_sock] if metrics_sock else [])
        metrics_port = metrics_sock.getsockname()[1] if metrics_sock else None
        http_port = http_sock.getsockname()[1]

        async def startup():
            try:
                await self.manager.load_all()
            except BaseException as e:  # the lifespan only reports a message; re-raised as itself below
                self._startup_error = e
                raise
            grpc_addr = None
            if o.grpc_port is not None:
                from . import grpc_server

                self._grpc, port = await grpc_server.start(self.manager, o.host, o.grpc_port, model_control=o.model_control,
                                                           token=o.token, max_message_bytes=o.max_body_bytes,
                                                           shm=self.shm)
                grpc_addr = _url(o.host, port)
            if o.poll_s:
                self._tasks.append(asyncio.get_running_loop().create_task(self.manager.poll(o.poll_s)))
            self.endpoints = Endpoints(f"http://{_url(o.host, http_port)}", grpc_addr,
                                       f"http://{_url(o.host, metrics_port)}/metrics" if metrics_port else None,
                                       tuple(self.manager.entries))

        async def shutdown():
            for t in self._tasks:
                t.cancel()
            if self._grpc is not None:
                await self._grpc.stop(grace=o.drain_s)
            await self.manager.close()
            self.shm.close()

        app = HttpApp(self.manager, HttpOptions(o.max_body_bytes, o.model_control, o.token,
                                                frozenset({metrics_port}) if metrics_port else frozenset()),
                      on_startup=[startup], on_shutdown=[shutdown], shm=self.shm)
        loop = httpd.new_event_loop()
        try:
            loop.run_until_complete(httpd.serve(app, socks, max_body_bytes=o.max_body_bytes, drain_s=o.drain_s,
                                                on_serving=lambda: (on_ready or _announce)(self.endpoints)))
        except RuntimeError:  # a failed startup: say why, as the BushuError it was (exit code 2)
            if self._startup_error is not None:
                raise self._startup_error from None
            raise
        finally:
            for s in socks:
                s.close()
            loop.close()


def _announce(ep: Endpoints) -> None:
    print(f"bushu serve: ready {ep}", file=sys.stderr, flush=True)
