"""Benchmark ``bushu serve`` against in-process ONNX Runtime, LitServe and a plain FastAPI + ONNX Runtime app.

    apt-get install wrk   # the load generator (C, one thread); without it a Python client is used instead
    flock -x /tmp/bushu-quiet.lock .venv/bin/python bench/bench_serve.py [--seconds 3] [--rounds 5]

Everything is measured in one run (absolute numbers drift up to 2x from minute to minute on a shared machine; the
ratios within a run are what to compare). Load comes from another process over loopback -- wrk when installed, its
CPU use measured and reported -- with pre-encoded request bodies on keep-alive connections, so the client's cost is
the same for every server. Each comparison alternates its sides round by round; ratios are medians of per-round
ratios, with their interquartile range. Two engine configurations, each on both sides of a comparison: 1 instance x
2 intra-op threads (bushu's default) and 2 instances x 1 thread (two sessions in-process):

1. throughput at saturation, batch 8, served (binary tensor data, 3 requests in flight) vs in-process, on PP-OCRv4
   rec and the MobileNetV3-small-like model; and the same with the input and output tensors in system shared memory
   (Triton's extension, regions registered once, as perf_analyzer ``--shared-memory system`` does);
2. p50 latency overhead at low load (one client, batch 1, binary) over in-process, on PP-OCR cls, next to the HTTP
   round trip alone (``GET /v2/health/live``);
3. dynamic batching (2 ms queue delay; no delay; max batch 4 with no delay) vs none, 8 concurrent batch-1 clients,
   on PP-OCR cls and MobileNetV3-small-like, next to the engine's own batch-4 and batch-8 gains in-process, and
   each side at its best configuration;
4. the same 8-client load on LitServe (its batching on: max 8, 5 ms window) and on FastAPI + ONNX Runtime, both
   with KServe-shaped JSON as such apps take it, against bushu's defaults.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import contextlib
import http.client
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import orjson

ROOT = Path(__file__).resolve().parent.parent
CLS_OUT = "save_infer_model/scale_0.tmp_1"
NCNN_MARKER = "<!-- bench_ncnn_threads.py -->"  # where bench_ncnn_threads.py's section of --out starts


# ---------------------------------------------------------------- load generators (each in its own process)

# wrk (C, event-driven, one thread) is the load generator when installed: `apt-get install wrk` (Debian/Ubuntu) or
# `brew install wrk`. Its CPU use is measured (resource.getrusage of the child) and reported. Without wrk a Python
# client in another process is the fallback: it takes a good part of a core that the server wants on a small
# machine, so its results understate the server (the table says which generator ran).
WRK = shutil.which("wrk")
_WRK_LUA = r"""
wrk.method = os.getenv("BENCH_METHOD")
local path = os.getenv("BENCH_BODY")
if path ~= "" then local f = assert(io.open(path, "rb")); wrk.body = f:read("*a"); f:close() end
for k, v in string.gmatch(os.getenv("BENCH_HEADERS"), "([^\n:]+): ([^\n]*)") do wrk.headers[k] = v end
done = function(s, lat, req)
  local e = s.errors
  io.write(string.format('\nBENCH {"requests": %d, "duration_us": %d, "errors": %d, "p50_us": %d, "p99_us": %d}\n',
    s.requests, s.duration, e.connect + e.read + e.write + e.status + e.timeout,
    lat:percentile(50), lat:percentile(99)))
end
"""


def load_wrk(port: int, path: str, body: bytes, headers: dict, concurrency: int, seconds: float) -> dict:
    """``wrk`` with ``concurrency`` keep-alive connections on one thread sending ``body`` for ``seconds``."""
    with tempfile.TemporaryDirectory() as d:
        lua, data = Path(d) / "load.lua", Path(d) / "body"
        lua.write_text(_WRK_LUA)
        data.write_bytes(body)
        env = {**os.environ, "BENCH_METHOD": "POST" if body else "GET", "BENCH_BODY": str(data) if body else "",
               "BENCH_HEADERS": "\n".join(f"{k}: {v}" for k, v in headers.items())}
        r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        out = subprocess.run([WRK, "-t1", f"-c{concurrency}", f"-d{max(1, round(seconds))}s", "--timeout", "60s",
                              "-s", str(lua), f"http://127.0.0.1:{port}{path}"], env=env, capture_output=True,
                             text=True, check=True).stdout
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    r = orjson.loads(next(line for line in out.splitlines() if line.startswith("BENCH "))[6:])
    wall = r["duration_us"] / 1e6
    cpu = (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime)
    ok = r["requests"] - r["errors"]
    return {"requests": ok, "errors": r["errors"], "wall_s": wall, "rps": ok / wall, "p50_ms": r["p50_us"] / 1e3,
            "p99_ms": r["p99_us"] / 1e3, "client_cpu": cpu / wall}


def load(port: int, path: str, body: bytes, headers: dict, concurrency: int, seconds: float) -> dict:
    """The fallback: ``concurrency`` Python keep-alive connections (threads) sending ``body`` back to back for
    ``seconds``; latencies in ms. Runs in a worker process."""
    stop = time.monotonic() + seconds
    lat: list[list[float]] = [[] for _ in range(concurrency)]
    errors = [0] * concurrency

    def worker(i):
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        c.connect()
        c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while time.monotonic() < stop:
            t0 = time.perf_counter()
            c.request("POST" if body else "GET", path, body or None, headers)
            r = c.getresponse()
            r.read()
            if r.status != 200:
                errors[i] += 1
                continue
            lat[i].append((time.perf_counter() - t0) * 1e3)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    c0 = time.process_time()
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - t0
    all_lat = np.array([x for ls in lat for x in ls])
    return {"requests": int(all_lat.size), "errors": sum(errors), "wall_s": wall, "rps": all_lat.size / wall,
            "p50_ms": float(np.median(all_lat)) if all_lat.size else float("nan"),
            "p99_ms": float(np.quantile(all_lat, 0.99)) if all_lat.size else float("nan"),
            "client_cpu": (time.process_time() - c0) / wall}


def _load_elsewhere(pool, *args) -> dict:
    r = load_wrk(*args) if WRK else pool.submit(load, *args).result()
    print(f"  {args[1]} x{args[4]}: {r}", file=sys.stderr, flush=True)
    if not r["requests"]:
        raise RuntimeError(f"no request to {args[1]} succeeded ({r['errors']} errors)")
    time.sleep(0.5)  # let the server's queue empty before the next measurement
    return r


# ---------------------------------------------------------------- request bodies

def binary_body(name: str, x: np.ndarray) -> tuple[bytes, dict]:
    header = orjson.dumps({"inputs": [{"name": name, "shape": list(x.shape), "datatype": "FP32",
                                       "parameters": {"binary_data_size": x.nbytes}}],
                           "parameters": {"binary_data_output": True}})
    return header + x.tobytes(), {"Inference-Header-Content-Length": str(len(header)),
                                  "Content-Type": "application/octet-stream"}


class ShmRegions:
    """The input ``x`` and room for the outputs in system shared memory, registered with the server at ``port``
    (Triton's extension, as perf_analyzer's ``--shared-memory system`` does once before its load): the request body
    is then a small JSON naming the regions. Outputs of concurrent requests go to the same region (the server writes
    them on its event loop, one at a time; the bench doesn't read them)."""

    def __init__(self, port: int, name: str, x: np.ndarray, outputs: dict[str, np.ndarray]):
        from multiprocessing import shared_memory

        self.port, self.made, tag = port, [], f"bushu_bench_{os.getpid()}_{port}"
        inputs = [{"name": name, "shape": list(x.shape), "datatype": "FP32",
                   "parameters": self._region(f"{tag}_in", x.nbytes, shared_memory, x)}]
        outs = [{"name": o, "parameters": self._region(f"{tag}_out{i}", a.nbytes, shared_memory)}
                for i, (o, a) in enumerate(outputs.items())]
        self.body = orjson.dumps({"inputs": inputs, "outputs": outs})
        self.headers = {"Content-Type": "application/json"}

    def _region(self, region: str, size: int, shared_memory, data: np.ndarray | None = None) -> dict:
        seg = shared_memory.SharedMemory(region, create=True, size=size)
        self.made.append((region, seg))
        if data is not None:
            np.ndarray(data.shape, data.dtype, buffer=seg.buf)[...] = data
        self._post(f"/v2/systemsharedmemory/region/{region}/register",
                   orjson.dumps({"key": "/" + region, "offset": 0, "byte_size": size}))
        return {"shared_memory_region": region, "shared_memory_byte_size": size}

    def _post(self, path: str, body: bytes = b"") -> None:
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        c.request("POST", path, body)
        r = c.getresponse()
        if r.status != 200:
            raise RuntimeError(f"{path}: {r.status} {r.read()!r}")
        r.read()
        c.close()

    def close(self) -> None:
        self._post("/v2/systemsharedmemory/unregister")
        for _, seg in self.made:
            seg.close()
            seg.unlink()


def json_body(name: str, x: np.ndarray) -> tuple[bytes, dict]:
    return orjson.dumps({"inputs": [{"name": name, "shape": list(x.shape), "datatype": "FP32",
                                     "data": x.reshape(-1).tolist()}]}), {"Content-Type": "application/json"}


# ---------------------------------------------------------------- the competitors (run as child processes)

def run_fastapi(model: str, port: int) -> None:
    """A plain FastAPI + ONNX Runtime app taking KServe-shaped JSON, as one would write it."""
    import onnxruntime as ort
    import uvicorn
    from fastapi import FastAPI, Request

    sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    in_name, out_name = sess.get_inputs()[0].name, sess.get_outputs()[0].name
    app = FastAPI()

    async def infer(request):
        t = (await request.json())["inputs"][0]
        x = np.asarray(t["data"], dtype=np.float32).reshape(t["shape"])
        from starlette.concurrency import run_in_threadpool

        y = (await run_in_threadpool(sess.run, [out_name], {in_name: x}))[0]
        return {"model_name": "m", "outputs": [{"name": out_name, "datatype": "FP32", "shape": list(y.shape),
                                                 "data": y.reshape(-1).tolist()}]}

    infer.__annotations__["request"] = Request  # a real class, not the string this module's annotations would be
    app.post("/v2/models/m/infer")(infer)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def _lit_api_class():
    """LitServe pickles its API into worker processes, so the class must be importable from this module."""
    import litserve as ls

    global LitApi

    class LitApi(ls.LitAPI):
        def setup(self, device):
            import onnxruntime as ort

            self.sess = ort.InferenceSession(os.environ["BENCH_MODEL"], providers=["CPUExecutionProvider"])
            self.in_name = self.sess.get_inputs()[0].name

        def decode_request(self, request):
            t = request["inputs"][0]
            return np.asarray(t["data"], dtype=np.float32).reshape(t["shape"])

        def batch(self, inputs):
            return np.concatenate(inputs)

        def predict(self, x):
            return self.sess.run(None, {self.in_name: x})[0]

        def unbatch(self, output):
            return [output[i:i + 1] for i in range(len(output))]

        def encode_response(self, y):
            return {"outputs": [{"name": "y", "datatype": "FP32", "shape": list(y.shape), "data": y.reshape(-1).tolist()}]}

    LitApi.__qualname__ = "LitApi"
    return LitApi


if os.environ.get("BENCH_MODEL"):  # in LitServe's server and worker processes
    _lit_api_class()


def run_litserve(model: str, port: int) -> None:
    """LitServe with its dynamic batching (max 8, 5 ms window), KServe-shaped JSON in."""
    import litserve as ls

    server = ls.LitServer(LitApi(max_batch_size=8, batch_timeout=0.005, api_path="/v2/models/m/infer"),
                          accelerator="cpu", workers_per_device=1)
    server.run(port=port, generate_client_file=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, proc: subprocess.Popen, timeout_s: float = 120) -> None:
    t_end = time.monotonic() + timeout_s
    while time.monotonic() < t_end:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("server did not start")


class Child:
    """``python bench_serve.py --child KIND MODEL PORT`` as a context manager."""

    def __init__(self, kind: str, model: str):
        self.port = _free_port()
        self.proc = subprocess.Popen([sys.executable, __file__, "--child", kind, model, str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     env={**os.environ, "BENCH_MODEL": model}, start_new_session=True)

    def __enter__(self):
        _wait_port(self.port, self.proc)
        time.sleep(2.0)  # LitServe's workers come up after its port opens
        return self

    def __exit__(self, *exc):
        # the whole process group: LitServe's workers outlive a terminated parent
        import signal

        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        time.sleep(1.0)
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # any worker that ignored SIGTERM
        except ProcessLookupError:
            pass


# ---------------------------------------------------------------- the run

class InProcess:
    """ONNX Runtime in this process, default session options except that idle threads don't spin: a spinning
    session here would steal the cores from the server while the served side is measured (measured: spinning
    doesn't make these models faster here). ``sessions`` > 1 runs that many sessions at once, one Python thread
    each (the in-process counterpart of a server with that many instances)."""

    def __init__(self, model: str, threads: int | None = None, sessions: int = 1, engine: str = "ort"):
        from bushu import engines

        self.sessions = [engines.open_session(model, engine, spin=False, threads=threads) for _ in range(sessions)]
        self.name = self.sessions[0].inputs[0].name

    def __call__(self, x: np.ndarray, seconds: float) -> dict:
        """``items_per_s`` (items run over the wall time, as the served side's requests per second are) and
        ``p50_ms`` (one session's median call)."""
        from bushu.timing import measure

        if len(self.sessions) == 1:
            lat = measure(lambda: self.sessions[0].run({self.name: x}), warmup_s=0.3, budget_s=seconds)
            return {"items_per_s": x.shape[0] * len(lat.samples_ms) / (sum(lat.samples_ms) / 1e3),
                    "p50_ms": lat.median_ms}
        for s in self.sessions:
            s.run({self.name: x})
        counts = [0] * len(self.sessions)
        stop = time.perf_counter() + seconds

        def work(i):
            while time.perf_counter() < stop:
                self.sessions[i].run({self.name: x})
                counts[i] += 1

        threads = [threading.Thread(target=work, args=(i,)) for i in range(len(self.sessions))]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return {"items_per_s": x.shape[0] * sum(counts) / (time.perf_counter() - t0), "p50_ms": float("nan")}


def alternate(rounds: int, *measurements):
    """Run the measurements in turn, ``rounds`` times (a, b, a, b, ...), so that a shared machine's drift hits
    both alike; returns each one's results, a list per measurement."""
    out = [[] for _ in measurements]
    for _ in range(rounds):
        for i, m in enumerate(measurements):
            out[i].append(m())
    return out


def med(results: list[dict], key: str) -> float:
    return float(np.median([r[key] for r in results]))


def per_round(a: list[dict], ka: str, b: list[dict], kb: str, op=lambda x, y: y / x) -> np.ndarray:
    """``op(a, b)`` round by round (the sides ran next to each other, so drift cancels)."""
    return np.array([op(x[ka], y[kb]) for x, y in zip(a, b)])


def spread(v: np.ndarray, fmt: str = "{:.2f}") -> str:
    """The median and interquartile range of per-round values."""
    q1, q2, q3 = np.quantile(v, [0.25, 0.5, 0.75])
    return f"{fmt.format(q2)} (IQR {fmt.format(q1)}–{fmt.format(q3)})"


def make_repo(tmp: Path, models: dict[str, str], engine: str | None = None) -> Path:
    """The bench's repository: each model under several configurations (suffixes); ``engine`` set in each model's
    bushu section (``bushu.toml``) when given."""
    repo = tmp / ("repo" if engine is None else f"repo-{engine}")
    for name, src in models.items():
        for suffix, cfg in (("", "max_batch_size: 8\ndynamic_batching { max_queue_delay_microseconds: 2000 }\n"),
                            ("_nodelay", "max_batch_size: 8\ndynamic_batching { }\n"),
                            # half the clients per batch: one batch runs while the other half's requests come back
                            ("_half", "max_batch_size: 4\ndynamic_batching { }\n"),
                            ("_nobatch", "max_batch_size: 8\n"),  # no dynamic_batching: every request alone
                            # the same two for clients passing tensors in system shared memory
                            ("_shm", "max_batch_size: 8\ndynamic_batching { max_queue_delay_microseconds: 2000 }\n"),
                            ("_shm_nobatch", "max_batch_size: 8\n")):
            (repo / f"{name}{suffix}" / "1").mkdir(parents=True)
            (repo / f"{name}{suffix}" / "1" / "model.onnx").symlink_to(src)
            (repo / f"{name}{suffix}" / "config.pbtxt").write_text(cfg)
            if engine is not None:
                (repo / f"{name}{suffix}" / "bushu.toml").write_text(f'[bushu]\nengine = "{engine}"\n')
    return repo


# the two engine configurations a 2-core machine allows: 1 instance x 2 intra-op threads (bushu's default), or
# 2 instances x 1 thread; every comparison runs both sides in the same one
CONFIGS = {"1×2": (1, None), "2×1": (2, 1)}


def _rps(r: list[dict]) -> str:
    return f"{med(r, 'rps'):.0f} req/s (p99 {med(r, 'p99_ms'):.1f} ms)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=3.0, help="duration of one measurement")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds per comparison (medians reported)")
    ap.add_argument("--out", default=str(ROOT / "docs" / "dev" / "serve-bench.md"))
    ap.add_argument("--parts", default="throughput,latency,batching,openvino,rivals",
                    help="which comparisons to run (comma-separated; default: all)")
    ap.add_argument("--child", nargs=3, metavar=("KIND", "MODEL", "PORT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        kind, model, port = args.child
        return (run_fastapi if kind == "fastapi" else run_litserve)(model, int(port))

    import bushu.zoo as zoo
    import bushu.zoo_torch as zt
    from bushu.serve.process import ServerProcess
    from bushu.timing import machine

    rng = np.random.default_rng(0)
    models = {"rec": str(zoo.path("ppocr-rec")), "cls": str(zoo.path("ppocr-cls")),
              "mnv3": str(zt.onnx_path("mobilenetv3-small-like"))}
    inputs = {"rec": ("x", (3, 48, 320)), "cls": ("x", (3, 48, 192)), "mnv3": ("input", (3, 224, 224))}

    def x_of(m, b):
        return rng.random((b, *inputs[m][1]), dtype=np.float32)

    rows, S, R = [], args.seconds, args.rounds
    parts = set(args.parts.split(","))
    client_cpu: list[float] = []
    pool = None if WRK else cf.ProcessPoolExecutor(1)  # the fallback load generator: another process
    if pool:
        pool.submit(time.sleep, 0).result()
    local = {(m, c): InProcess(p, threads, sessions) for m, p in models.items()
             for c, (sessions, threads) in CONFIGS.items()}

    def served(port, path, body, hdr, clients, seconds=None):
        def run():
            r = _load_elsewhere(pool, port, path, body, hdr, clients, seconds or S)
            client_cpu.append(r["client_cpu"])
            return r
        return run

    def row(what, m, base, mine, ratio, target, errors):
        rows.append((what, m, base, mine, ratio, target, errors))

    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as servers:
        repo = make_repo(Path(tmp), models)
        port, metrics = {}, {}
        for c, (instances, threads) in CONFIGS.items():  # both up at once; an idle one sleeps (no spinning)
            extra = ["--instances", str(instances)] + (["--threads", str(threads)] if threads else [])
            srv = servers.enter_context(ServerProcess(repo, "--grpc-port", "-1", "--max-queue-size", "1024", *extra))
            port[c], metrics[c] = int(srv.http.split(":")[1]), srv.metrics
        # 1. saturation throughput at batch 8: served (3 requests in flight) vs in-process, same engine configuration;
        # the served side both with the tensors in the body (binary) and in system shared memory (Triton's extension:
        # a small JSON naming the regions crosses the socket), all three alternating
        for m in ("rec", "mnv3") if "throughput" in parts else ():
            # a rec batch takes ~150 ms: at least 5 s per measurement, so that one request more or less is < 3 %
            sm = max(S, 5.0) if m == "rec" else S
            x = x_of(m, 8)
            body, hdr = binary_body(inputs[m][0], x)
            outputs = local[m, "1×2"].sessions[0].run({inputs[m][0]: x})
            for c in CONFIGS:
                regions = ShmRegions(port[c], inputs[m][0], x, outputs)
                try:
                    ins, outs, shm_outs = alternate(
                        R, lambda: local[m, c](x, sm),
                        served(port[c], f"/v2/models/{m}_nobatch/infer", body, hdr, 3, sm),
                        served(port[c], f"/v2/models/{m}_nobatch/infer", regions.body, regions.headers, 3, sm))
                finally:
                    regions.close()
                for how, res in (("", outs), (", input and output in system shared memory", shm_outs)):
                    ratio = per_round(ins, "items_per_s", res, "rps", lambda i, o: 8 * o / i)
                    row(f"throughput, batch 8, {c}{how}", m, f"{med(ins, 'items_per_s'):.1f} items/s in-process",
                        f"{8 * med(res, 'rps'):.1f} items/s served", spread(ratio),
                        "≥ 0.9" + (" ✓" if np.median(ratio) >= 0.9 else " ✗"), sum(r["errors"] for r in res))
        # 2. p50 overhead at low load: one client, one request at a time, next to the HTTP round trip alone
        x = x_of("cls", 1)
        body, hdr = binary_body("x", x)
        for c in CONFIGS if "latency" in parts else ():
            single = _one(local["cls", c])
            ins, outs, live = alternate(R, lambda: single(x, S),
                                        served(port[c], "/v2/models/cls_nobatch/infer", body, hdr, 1),
                                        served(port[c], "/v2/health/live", b"", {}, 1))
            extra = per_round(ins, "p50_ms", outs, "p50_ms", lambda i, o: o - i)
            threads = "2 intra-op threads" if c == "1×2" else "1 intra-op thread"
            row(f"p50 latency, batch 1, 1 client, {threads} on both sides", "cls",
                f"{med(ins, 'p50_ms'):.3f} ms in-process", f"{med(outs, 'p50_ms'):.3f} ms served",
                spread(extra, "{:+.3f}") + " ms", "≤ +1 ms" + (" ✓" if np.median(extra) <= 1 else " ✗"),
                sum(r["errors"] for r in outs))
            if c == "1×2":
                row("p50 latency, GET /v2/health/live, 1 client (the HTTP round trip alone)", "", "",
                    f"{med(live, 'p50_ms'):.3f} ms", "", "", sum(r["errors"] for r in live))
        # 3. dynamic batching vs none, 8 clients at batch 1, next to the engine's own batching gain in-process
        best = {}
        for m in ("cls", "mnv3") if "batching" in parts or "rivals" in parts else ():
            x1, x4, x8 = x_of(m, 1), x_of(m, 4), x_of(m, 8)
            body, hdr = binary_body(inputs[m][0], x1)
            ceiling = {}
            for c in CONFIGS if "batching" in parts else ():
                one, four, eight = alternate(R, lambda: local[m, c](x1, S), lambda: local[m, c](x4, S),
                                             lambda: local[m, c](x8, S))
                ceiling[c] = (one, four, eight)
                for n, res in ((4, four), (8, eight)):
                    row(f"in-process items/s, batch {n} vs batch 1, {c} (the engine's own batching gain)", m,
                        f"{med(one, 'items_per_s'):.0f} items/s at 1", f"{med(res, 'items_per_s'):.0f} items/s at {n}",
                        spread(per_round(one, "items_per_s", res, "items_per_s")) + "×", "", 0)
            runs = {}
            for c in CONFIGS if "batching" in parts else ["1×2"]:
                variants = {"none": "_nobatch", "2 ms queue delay": "", "no queue delay": "_nodelay",
                            "max batch 4, no queue delay": "_half"}
                # at bushu's default 1×2 also with the tensors in system shared memory (every client naming the
                # same regions), so that what batching gains is seen without the loopback copies
                in_shm = {"none": "_shm_nobatch", "2 ms queue delay": "_shm"} if c == "1×2" and "batching" in parts \
                    else {}
                regions = ShmRegions(port[c], inputs[m][0], x1, local[m, c].sessions[0].run({inputs[m][0]: x1})) \
                    if in_shm else None
                try:
                    before = executions(metrics[c])
                    got = alternate(R, *(served(port[c], f"/v2/models/{m}{v}/infer", body, hdr, 8)
                                         for v in variants.values()),
                                    *(served(port[c], f"/v2/models/{m}{v}/infer", regions.body, regions.headers, 8)
                                      for v in in_shm.values()))
                    after = executions(metrics[c])
                finally:
                    if regions:
                        regions.close()
                runs.update({(c, k): r for k, r in zip(variants, got)})
                shm_runs = dict(zip(in_shm, got[len(variants):]))

                def mean_batch(v):  # the mean executed batch over the run, from the server's counters (/metrics)
                    n, e = (after.get(m + v, (0, 0))[i] - before.get(m + v, (0, 0))[i] for i in (0, 1))
                    return f", mean batch {n / max(e, 1):.1f}"

                for k, v in list(variants.items())[1:]:
                    gain = per_round(runs[c, "none"], "rps", runs[c, k], "rps")
                    row(f"8 clients, batch 1, {c}: dynamic batching ({k}) vs none", m, _rps(runs[c, "none"]),
                        _rps(runs[c, k]) + mean_batch(v), spread(gain) + "×",
                        "≥ 1.5×" + (" ✓" if np.median(gain) >= 1.5 else " ✗"),
                        sum(r["errors"] for r in runs[c, "none"] + runs[c, k]))
                for k in list(in_shm)[1:]:
                    gain = per_round(shm_runs["none"], "rps", shm_runs[k], "rps")
                    row(f"8 clients, batch 1, {c}, tensors in system shared memory: dynamic batching ({k}) vs none",
                        m, _rps(shm_runs["none"]), _rps(shm_runs[k]) + mean_batch(in_shm[k]), spread(gain) + "×",
                        "≥ 1.5×" + (" ✓" if np.median(gain) >= 1.5 else " ✗"),
                        sum(r["errors"] for r in shm_runs["none"] + shm_runs[k]))
            if "batching" not in parts:
                best[m] = runs["1×2", "no queue delay"]
                continue
            # each side at its best configuration, as a user would deploy it
            bn = max((k for k in runs if k[1] == "none"), key=lambda k: med(runs[k], "rps"))
            bb = max((k for k in runs if k[1] != "none"), key=lambda k: med(runs[k], "rps"))
            gain = med(runs[bb], "rps") / med(runs[bn], "rps")
            row(f"8 clients, batch 1: best batched ({bb[0]}, {bb[1]}) vs best unbatched ({bn[0]})", m,
                _rps(runs[bn]), _rps(runs[bb]), f"{gain:.2f}×", "≥ 1.5×" + (" ✓" if gain >= 1.5 else " ✗"),
                sum(r["errors"] for r in runs[bn] + runs[bb]))
            cn = max(med(ceiling[c][0], "items_per_s") for c in CONFIGS)
            cb = max(med(ceiling[c][i], "items_per_s") for c in CONFIGS for i in (1, 2))
            row("in-process ceiling: best items/s at batch 4 or 8 vs best at batch 1 (any configuration)", m,
                f"{cn:.0f} items/s", f"{cb:.0f} items/s", f"{cb / cn:.2f}×", "", 0)
            best[m] = runs["1×2", "no queue delay"]  # bushu serve's defaults
        # 3b. the same with the models on OpenVINO (engine in the bushu section; one instance, the engine's threads):
        # OpenVINO, unlike ONNX Runtime here, gains from batches in-process
        if "openvino" in parts:
            ov_repo = make_repo(Path(tmp), {m: models[m] for m in ("cls", "mnv3")}, engine="openvino")
            ov = servers.enter_context(ServerProcess(ov_repo, "--grpc-port", "-1", "--max-queue-size", "1024"))
            ov_port, ov_metrics = int(ov.http.split(":")[1]), ov.metrics
        for m in ("cls", "mnv3") if "openvino" in parts else ():
            x1, x8 = x_of(m, 1), x_of(m, 8)
            body, hdr = binary_body(inputs[m][0], x1)
            inproc = InProcess(models[m], engine="openvino")
            one, eight = alternate(R, lambda: inproc(x1, S), lambda: inproc(x8, S))
            row("OpenVINO in-process items/s, batch 8 vs batch 1 (the engine's own batching gain)", m,
                f"{med(one, 'items_per_s'):.0f} items/s at 1", f"{med(eight, 'items_per_s'):.0f} items/s at 8",
                spread(per_round(one, "items_per_s", eight, "items_per_s")) + "×", "", 0)
            variants = {"none": "_nobatch", "2 ms queue delay": "", "no queue delay": "_nodelay"}
            before = executions(ov_metrics)
            got = alternate(R, *(served(ov_port, f"/v2/models/{m}{v}/infer", body, hdr, 8) for v in variants.values()))
            after = executions(ov_metrics)
            runs = dict(zip(variants, got))
            for k, v in list(variants.items())[1:]:
                n, e = (after.get(m + v, (0, 0))[i] - before.get(m + v, (0, 0))[i] for i in (0, 1))
                gain = per_round(runs["none"], "rps", runs[k], "rps")
                row(f"8 clients, batch 1, OpenVINO (1 instance): dynamic batching ({k}) vs none", m,
                    _rps(runs["none"]), _rps(runs[k]) + f", mean batch {n / max(e, 1):.1f}", spread(gain) + "×",
                    "≥ 1.5×" + (" ✓" if np.median(gain) >= 1.5 else " ✗"),
                    sum(r["errors"] for r in runs["none"] + runs[k]))
        # 4. the same 8-client load on LitServe and FastAPI + ORT (bushu as it starts: 1×2, batching, no delay)
        for kind in ("litserve", "fastapi") if "rivals" in parts else ():
            for m in ("cls", "mnv3"):
                body, hdr = json_body(inputs[m][0], x_of(m, 1))
                with Child(kind, models[m]) as child:
                    (res,) = alternate(R, served(child.port, "/v2/models/m/infer", body, hdr, 8))
                rps, p99 = med(res, "rps"), med(res, "p99_ms")
                mine_rps, mine_p99 = med(best[m], "rps"), med(best[m], "p99_ms")
                ok = mine_rps > rps and mine_p99 < p99
                row(f"8 clients, batch 1: bushu vs {kind}", m, f"{rps:.0f} req/s (p99 {p99:.1f} ms)",
                    f"{mine_rps:.0f} req/s (p99 {mine_p99:.1f} ms)", f"{mine_rps / rps:.2f}× req/s",
                    "bushu ahead on req/s and p99" + (" ✓" if ok else " ✗"), sum(r["errors"] for r in res))
    if pool:
        pool.shutdown()
    gen = (f"wrk ({subprocess.run([WRK, '-v'], capture_output=True, text=True).stdout.split()[1]}, 1 thread)"
           if WRK else "a Python client (wrk not installed)")
    cpu = np.quantile(client_cpu, [0.5, 1.0])
    write(args.out, rows, machine(), S, R, f"{gen}, using {cpu[0]:.0%} of one core (median; at most {cpu[1]:.0%})")


def executions(metrics_url: str) -> dict[str, tuple[float, float]]:
    """Per model: (items inferred, executions) so far, from the server's /metrics (Triton's counters)."""
    import urllib.request

    text = urllib.request.urlopen(metrics_url, timeout=30).read().decode()
    out: dict[str, list[float]] = {}
    for line in text.splitlines():
        for i, name in enumerate(("nv_inference_count{", "nv_inference_exec_count{")):
            if line.startswith(name):
                model = line.split('model="', 1)[1].split('"', 1)[0]
                out.setdefault(model, [0.0, 0.0])[i] += float(line.rsplit(" ", 1)[1])
    return {k: (v[0], v[1]) for k, v in out.items()}


def _one(p: InProcess) -> InProcess:
    """``p``'s first session alone (a latency is one session's)."""
    q = InProcess.__new__(InProcess)
    q.sessions, q.name = p.sessions[:1], p.name
    return q


def write(out: str, rows, mach, seconds: float, rounds: int, generator: str) -> None:
    lines = ["# bushu serve benchmark", "",
             f"Command: `flock -x /tmp/bushu-quiet.lock .venv/bin/python bench/bench_serve.py --seconds {seconds:g} "
             f"--rounds {rounds}` (all rows from one run; load from a separate process on loopback: {generator}; "
             f"pre-encoded bodies, keep-alive; each comparison alternates its sides {rounds} times, {seconds:g} s "
             "each; ratios are medians of the per-round ratios, with their interquartile range).", "",
             f"Machine: {mach}", "",
             "| measurement | model | baseline | bushu serve | ratio | target | errors |",
             "|---|---|---|---|---|---|---|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    lines += ["", "Models: `rec` PP-OCRv4 rec 3×48×320, `cls` PP-OCR cls 3×48×192, `mnv3` bushu.zoo_torch "
              "MobileNetV3-small-like 3×224×224. `1×2`: one model instance with 2 intra-op threads (bushu's default); "
              "`2×1`: 2 instances with 1 thread each; in-process runs the same (2×1: two sessions, one Python thread "
              "each). In-process items/s are items over wall time, as served requests/s are. bushu is sent the "
              "binary tensor extension; LitServe and FastAPI get KServe-shaped JSON (the way such apps are "
              "written). Dynamic batching: max_batch_size 8, max_queue_delay 2 ms (or 0, Triton's default; or "
              "max_batch_size 4 with no delay); 'none' is the same model without dynamic_batching; LitServe and "
              "FastAPI are compared with bushu's defaults (1×2, dynamic batching with no queue delay). Latencies are medians and quantiles of "
              "per-request wall time at the client.", "",
              "Rows \"input and output in system shared memory\": the same load with the client's input tensor and the "
              "output in system shared memory regions registered once before the load (Triton's extension, as "
              "perf_analyzer's `--shared-memory system` uses it); each request is then a small JSON naming the regions. "
              "\"mean batch\" is the server's own `nv_inference_count / nv_inference_exec_count` over that variant's "
              "runs, read from `/metrics`."]
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    # bench_ncnn_threads.py's section (from its marker on) stays
    kept = Path(out).read_text().partition(NCNN_MARKER) if Path(out).exists() else ("", "", "")
    tail = ["", kept[1] + kept[2].rstrip("\n")] if kept[1] else []
    tmp = Path(out).with_suffix(".tmp")
    tmp.write_text("\n".join(lines + tail) + "\n")
    os.replace(tmp, out)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
