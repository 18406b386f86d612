"""``bushu.serve``: an Open Inference Protocol (KServe v2) model server that Triton's own clients drive unchanged.

    import bushu
    bushu.serve("model.onnx")                       # blocks; http://127.0.0.1:8000, gRPC :8001, metrics :8002
    bushu.serve("repo/", poll_s=2, max_queue_delay_us=2000)

Layout: protocol.py (codec) · config.py (Triton's config.pbtxt + bushu.toml) · repository.py (files on disk) ·
model.py (the ``execute(list[request])`` handler) · batcher.py / sequence.py (schedulers) · stats.py / metrics.py ·
manager.py (load/unload/hot reload) · shm.py (system shared memory) · service.py (transport-free operations) ·
app.py (HTTP) · grpc_server.py · server.py (one process, one loop, graceful drain) · ray_serve.py (``--ray``).
"""

from __future__ import annotations

import dataclasses
import os

from ..results import Result
from .config import ModelDefaults
from .server import Endpoints, Server, ServeOptions

__all__ = ["serve", "Server", "ServeOptions", "ModelDefaults", "Endpoints", "ServeResult"]


@dataclasses.dataclass(frozen=True)
class ServeResult(Result):
    """What a server did before it stopped: the requests each model answered."""

    kind = "serve"
    repository: str
    requests: dict[str, dict[str, int]]  # "model/version" -> {"success": n, "fail": n}

    def __str__(self) -> str:
        done = ", ".join(f"{k}: {v['success']} ok, {v['fail']} failed" for k, v in self.requests.items())
        return f"served {self.repository} ({done or 'no requests'})"


def serve(
    model: str | os.PathLike,
    *,
    host: str = "127.0.0.1",
    http_port: int = 8000,
    grpc_port: int | None = 8001,
    metrics_port: int | None = 8002,
    poll_s: float | None = None,
    allow_model_control: bool = False,
    token: str | None = None,
    allow_shared_memory: bool = False,
    max_body_mb: float = 64,
    engine: str = "ort",
    threads: int | None = None,
    max_batch_size: int = 8,
    max_queue_delay_us: int = 0,
    instances: int = 1,
    max_queue_size: int = 256,
    ray: bool = False,
    ray_address: str | None = None,
    replicas: int = 1,
    max_replicas: int | None = None,
    on_ready=None,
) -> ServeResult:
    """Serve ``model`` (an .onnx file or a Triton-layout repository folder) until SIGTERM/SIGINT.

    Ports of 0 pick free ones, ``None`` turns an endpoint off. ``engine``/``threads``/``max_batch_size``/
    ``max_queue_delay_us``/``instances``/``max_queue_size`` apply where a model's config.pbtxt/bushu.toml don't say.
    ``ray=True`` runs the models as Ray Serve deployments instead (``replicas``, autoscaling up to ``max_replicas``
    on queue depth). Clients on loopback may pass tensors through system shared memory (Triton's extension);
    ``allow_shared_memory=True`` lets clients at other addresses do so too. ``on_ready(Endpoints)`` is called once
    the endpoints answer (default: one line on stderr).
    """
    defaults = ModelDefaults(engine=engine, threads=threads, max_batch_size=max_batch_size,
                             max_queue_delay_us=max_queue_delay_us, instances=instances, max_queue_size=max_queue_size)
    options = ServeOptions(host=host, http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port,
                           poll_s=poll_s, model_control=allow_model_control, token=token,
                           shared_memory_remote=allow_shared_memory,
                           max_body_bytes=int(max_body_mb * 2**20), defaults=defaults)
    if ray:
        from .ray_serve import serve_ray

        return serve_ray(str(model), options, address=ray_address, replicas=replicas, max_replicas=max_replicas,
                         on_ready=on_ready)
    server = Server(str(model), options)
    server.run(on_ready)
    counts = {f"{n}/{v}": {"success": lv.stats.durations["success"][0], "fail": lv.stats.durations["fail"][0]}
              for n, e in server.manager.entries.items() for v, lv in e.versions.items()}
    return ServeResult(str(model), counts)
