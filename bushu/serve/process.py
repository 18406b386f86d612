"""``bushu serve`` in a child process, for tests, benchmarks and notebooks that need a real server.

    with ServerProcess("repo/", "--max-queue-delay-us", "2000") as srv:
        client = tritonclient.http.InferenceServerClient(srv.http)

Ports are picked by the server (port 0) and read back from its ``ready`` line, so parallel runs never collide.
Leaving the block sends SIGTERM (the server drains in-flight requests) and waits for the process to end.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time

from ..errors import BushuError

_READY = re.compile(r"bushu serve: ready http=http://(\S+) grpc=(\S+) metrics=(\S+) models=(\S*)")


class ServerProcess:
    """A running ``bushu serve MODEL ARGS...`` on 127.0.0.1 with free ports. ``http``/``grpc`` are ``host:port``
    (what tritonclient takes), ``metrics`` the metrics URL."""

    def __init__(self, model: str, *args: str, timeout_s: float = 120.0, env: dict | None = None):
        self.model, self.args, self.timeout_s = str(model), list(args), timeout_s
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen | None = None
        self.log: list[str] = []
        self.http = self.grpc = self.metrics = ""
        self.models: list[str] = []

    def start(self) -> ServerProcess:
        cmd = [sys.executable, "-m", "bushu", "serve", self.model, "--http-port", "0", "--grpc-port", "0",
               "--metrics-port", "0", *self.args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=self.env)
        ready = threading.Event()

        def read():  # keep draining the pipe so the server never blocks on a full one
            for line in self.proc.stdout:
                self.log.append(line.rstrip())
                m = _READY.search(line)
                if m:
                    self.http, self.grpc, self.metrics = m.group(1), m.group(2), m.group(3)
                    self.models = m.group(4).split(",") if m.group(4) else []
                    ready.set()

        threading.Thread(target=read, daemon=True).start()
        t_end = time.monotonic() + self.timeout_s
        while not ready.wait(0.05):
            if self.proc.poll() is not None or time.monotonic() > t_end:
                self.stop()
                raise BushuError("bushu serve did not start: " + " | ".join(self.log[-5:]))
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 60.0) -> int | None:
        """Signal the server and wait for it to exit; returns its exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def rss_bytes(self) -> int:
        """The server's resident memory now."""
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
