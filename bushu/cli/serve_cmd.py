from __future__ import annotations

import os

HELP = "serve models over the Open Inference Protocol (KServe v2, HTTP + gRPC) for Triton's clients"
EXAMPLES = """\
  bushu serve model.onnx                                  # http :8000, grpc :8001, metrics :8002 on 127.0.0.1
  bushu serve repo/ --poll 2 --max-queue-delay-us 2000    # Triton layout: repo/<model>/<version>/model.onnx
  bushu serve repo/ --host 0.0.0.0 --allow-model-control --token $SECRET
  bushu serve repo/ --ray --replicas 2                    # Ray Serve deployments behind the same HTTP protocol
"""


def add_arguments(p):
    p.add_argument("model", help="an .onnx file (a one-model repository) or a Triton-layout repository folder")
    g = p.add_argument_group("endpoints")
    g.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, loopback only)")
    g.add_argument("--http-port", type=int, default=8000, help="HTTP/REST port, 0 = any free (default: 8000)")
    g.add_argument("--grpc-port", type=int, default=8001, help="gRPC port, 0 = any free, -1 = off (default: 8001)")
    g.add_argument("--metrics-port", type=int, default=8002,
                   help="Prometheus /metrics port, 0 = any free, -1 = off (default: 8002)")
    g.add_argument("--max-body-mb", type=float, default=64, help="largest request body (default: 64 MB)")
    g.add_argument("--allow-shared-memory", action="store_true",
                   help="system shared memory for clients beyond loopback too (default: loopback clients only)")
    g = p.add_argument_group("repository")
    g.add_argument("--poll", type=float, default=None, metavar="SECONDS",
                   help="reload models whose files change, every SECONDS")
    g.add_argument("--allow-model-control", action="store_true",
                   help="allow POST /v2/repository/models/{m}/load|unload")
    g.add_argument("--token", default=os.environ.get("BUSHU_SERVE_TOKEN"),
                   help="bearer token for load/unload (required beyond loopback; default: $BUSHU_SERVE_TOKEN)")
    g = p.add_argument_group("models (where config.pbtxt / bushu.toml don't say)")
    g.add_argument("--engine", default="ort", help="ort, openvino (default: ort)")
    g.add_argument("--threads", type=int, default=None, help="intra-op threads per model instance")
    g.add_argument("--max-batch-size", type=int, default=8, help="for models that batch (default: 8)")
    g.add_argument("--max-queue-delay-us", type=int, default=0,
                   help="dynamic batching: wait this long for a fuller batch (default: 0)")
    g.add_argument("--instances", type=int, default=1, help="sessions per model running at once (default: 1)")
    g.add_argument("--max-queue-size", type=int, default=256,
                   help="queued requests per model before answering 503 (default: 256)")
    g = p.add_argument_group("Ray Serve")
    g.add_argument("--ray", action="store_true", help="run the models as Ray Serve deployments")
    g.add_argument("--ray-address", default=None, help="an existing Ray cluster (default: start a local one)")
    g.add_argument("--replicas", type=int, default=1, help="replicas per model (default: 1)")
    g.add_argument("--max-replicas", type=int, default=None, help="autoscale up to this many on queue depth")


def _port(v: int) -> int | None:
    return None if v < 0 else v


def run(args):
    from ..serve import serve

    return serve(args.model, host=args.host, http_port=args.http_port, grpc_port=_port(args.grpc_port),
                 metrics_port=_port(args.metrics_port), poll_s=args.poll, allow_model_control=args.allow_model_control,
                 token=args.token, allow_shared_memory=args.allow_shared_memory, max_body_mb=args.max_body_mb, engine=args.engine, threads=args.threads,
                 max_batch_size=args.max_batch_size, max_queue_delay_us=args.max_queue_delay_us,
                 instances=args.instances, max_queue_size=args.max_queue_size, ray=args.ray,
                 ray_address=args.ray_address, replicas=args.replicas, max_replicas=args.max_replicas)
