"""``bushu serve --ray`` on a local Ray instance with one replica: tritonclient.http and tritonclient.grpc get the
same answers as ONNX Runtime in-process, errors keep their status codes, and /metrics counts what was served."""

from __future__ import annotations

import re
import socket
import time
import urllib.request

import numpy as np
import pytest

from bushu import engines
from bushu.serve.process import ServerProcess

pytest.importorskip("ray.serve", reason="ray[serve] is not installed (pip install 'bushu[ray]')")
tritonhttp = pytest.importorskip("tritonclient.http")
tritongrpc = pytest.importorskip("tritonclient.grpc")

CLS_OUT = "save_infer_model/scale_0.tmp_1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_server(tmp_path_factory, ppocr_cls):
    repo = tmp_path_factory.mktemp("ray-repo")
    (repo / "cls" / "1").mkdir(parents=True)
    (repo / "cls" / "1" / "model.onnx").symlink_to(ppocr_cls)
    port = _free_port()
    with ServerProcess(repo, "--ray", "--replicas", "1", "--http-port", str(port), "--threads", "1",
                       env={"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}, timeout_s=150) as srv:
        yield srv


def _infer_like_in_process(module, client, model_path, batch: int, seed: int):
    """Infer a random batch through ``client`` (tritonclient.http or .grpc); check it against ONNX Runtime."""
    x = np.random.default_rng(seed).random((batch, 3, 48, 192), dtype=np.float32)
    t = module.InferInput("x", list(x.shape), "FP32")
    t.set_data_from_numpy(x)
    got = client.infer("cls", [t]).as_numpy(CLS_OUT)
    want = engines.open_session(str(model_path), "ort").run({"x": x})[CLS_OUT]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    return t


def test_ray_serve_answers_like_in_process(ray_server, ppocr_cls):
    client = tritonhttp.InferenceServerClient(ray_server.http, network_timeout=60)
    assert client.is_server_live() and client.is_server_ready()
    md = client.get_model_metadata("cls")
    assert md["inputs"][0]["shape"] == [-1, 3, -1, -1]
    _infer_like_in_process(tritonhttp, client, ppocr_cls, 2, 0)
    bad = tritonhttp.InferInput("x", [1, 3, 48], "FP32")
    bad.set_data_from_numpy(np.zeros((1, 3, 48), np.float32))
    with pytest.raises(tritonhttp.InferenceServerException) as e:
        client.infer("cls", [bad])
    assert e.value.status() == "400" and "shape" in e.value.message()
    assert client.get_inference_statistics("cls")["model_stats"][0]["inference_count"] == 2


def test_ray_serve_grpc_and_metrics(ray_server, ppocr_cls):
    client = tritongrpc.InferenceServerClient(ray_server.grpc)
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("cls")
    assert client.get_model_metadata("cls", as_json=True)["inputs"][0]["shape"] == ["-1", "3", "-1", "-1"]
    t = _infer_like_in_process(tritongrpc, client, ppocr_cls, 3, 1)
    with pytest.raises(tritongrpc.InferenceServerException) as e:
        client.infer("nope", [t])
    assert e.value.status() == "StatusCode.NOT_FOUND"
    bad = tritongrpc.InferInput("x", [1, 3, 48], "FP32")
    bad.set_data_from_numpy(np.zeros((1, 3, 48), np.float32))
    with pytest.raises(tritongrpc.InferenceServerException) as e:
        client.infer("cls", [bad])
    assert e.value.status() == "StatusCode.INVALID_ARGUMENT" and "shape" in e.value.message()
    stats = client.get_inference_statistics("cls", as_json=True)["model_stats"][0]
    # the HTTP test's batch of 2 (when it ran first) and this batch of 3, on the one replica
    assert int(stats["inference_count"]) in (3, 5)
    want_count = int(stats["inference_count"])
    text, t_end = "", time.monotonic() + 10  # replicas report every second
    while time.monotonic() < t_end:
        text = urllib.request.urlopen(ray_server.metrics, timeout=10).read().decode()
        m = re.search(r'^nv_inference_count\{model="cls",version="1"\} (\d+)$', text, re.M)
        if m and int(m.group(1)) == want_count:
            break
        time.sleep(0.5)
    else:
        raise AssertionError(f"/metrics never counted {want_count} inferences:\n{text[:2000]}")
    assert re.search(r'^nv_inference_request_failure\{model="cls",version="1"\} [1-9]', text, re.M)
    assert 'bushu_batch_size_bucket{model="cls",version="1",le="+Inf"}' in text


@pytest.mark.parametrize("option", [{"poll_s": 1.0}, {"allow_model_control": True}, {"http_port": 0}])
def test_ray_refuses_what_it_does_not_do(option, ppocr_cls):
    import bushu
    from bushu.errors import BushuError

    with pytest.raises(BushuError, match="--ray"):
        bushu.serve(ppocr_cls, ray=True, **option)


def test_metrics_hub_sums_replicas_and_drops_silent_queues(monkeypatch):
    from bushu.serve import ray_serve
    from bushu.serve.metrics import Row
    from bushu.serve.model import Timing
    from bushu.serve.stats import ModelStats

    a, b = ModelStats(), ModelStats()
    a.execution(2, Timing(1000, 2000, 3000), 1)
    a.request(True, 9000, 500)
    b.execution(8, Timing(1000, 2000, 3000), 8)
    for _ in range(8):
        b.request(False, 4000, 1000)
    hub = ray_serve.MetricsHub()
    hub.report("r1", [Row("cls", "1", a, 3)])
    hub.report("r2", [Row("cls", "1", b, 4)])

    def value(text, name, labels='model="cls",version="1"'):
        return next(float(ln.split()[-1]) for ln in text.splitlines() if ln.startswith(f"{name}{{{labels}}}"))

    text = hub.exposition().decode()
    assert value(text, "nv_inference_request_success") == 1 and value(text, "nv_inference_request_failure") == 8
    assert value(text, "nv_inference_count") == 10 and value(text, "nv_inference_exec_count") == 2
    assert value(text, "nv_inference_request_duration_us") == (9000 + 8 * 4000) // 1000
    assert value(text, "nv_inference_pending_request_count") == 7
    assert value(text, "bushu_batch_size_bucket", 'model="cls",version="1",le="4"') == 1
    assert value(text, "bushu_batch_size_sum") == 10
    t0 = ray_serve.time.monotonic()
    monkeypatch.setattr(ray_serve.time, "monotonic", lambda: t0 + 2 * hub.STALE_S)
    hub.report("r1", [Row("cls", "1", a, 3)])  # r2 has gone silent: its counts stay, its queue doesn't
    text = hub.exposition().decode()
    assert value(text, "nv_inference_count") == 10 and value(text, "nv_inference_pending_request_count") == 3


def test_ray_system_shared_memory(ray_server, ppocr_cls):
    """Triton's system shared memory under --ray, with tritonclient's utilities: regions registered at the ingress
    (HTTP or gRPC) are mapped by the replica; inputs and outputs in them; unregister is seen by the next request."""
    shm = pytest.importorskip("tritonclient.utils.shared_memory")
    x = np.random.default_rng(2).random((4, 3, 48, 192), dtype=np.float32)
    want = engines.open_session(str(ppocr_cls), "ort").run({"x": x})[CLS_OUT]
    tag = f"bushu_ray_{id(x)}"
    hi = shm.create_shared_memory_region(f"{tag}_in", f"/{tag}_in", x.nbytes)
    ho = shm.create_shared_memory_region(f"{tag}_out", f"/{tag}_out", want.nbytes)
    try:
        shm.set_shared_memory_region(hi, [x])
        http = tritonhttp.InferenceServerClient(ray_server.http, network_timeout=60)
        grpc = tritongrpc.InferenceServerClient(ray_server.grpc)
        assert "system_shared_memory" in http.get_server_metadata()["extensions"]
        http.register_system_shared_memory(f"{tag}_in", f"/{tag}_in", x.nbytes)
        grpc.register_system_shared_memory(f"{tag}_out", f"/{tag}_out", want.nbytes)
        assert {r["name"] for r in http.get_system_shared_memory_status()} == {f"{tag}_in", f"{tag}_out"}
        inputs = {}
        for module, client in ((tritonhttp, http), (tritongrpc, grpc)):
            inp = inputs[module] = module.InferInput("x", list(x.shape), "FP32")
            inp.set_shared_memory(f"{tag}_in", x.nbytes)
            out = module.InferRequestedOutput(CLS_OUT)
            out.set_shared_memory(f"{tag}_out", want.nbytes)
            shm.set_shared_memory_region(ho, [np.zeros_like(want)])
            client.infer("cls", [inp], outputs=[out])
            got = shm.get_contents_as_numpy(ho, np.float32, list(want.shape))
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        grpc.unregister_system_shared_memory(f"{tag}_in")
        assert [r["name"] for r in http.get_system_shared_memory_status()] == [f"{tag}_out"]
        with pytest.raises(tritonhttp.InferenceServerException, match="no system shared memory region"):
            http.infer("cls", [inputs[tritonhttp]])
    finally:
        try:
            tritonhttp.InferenceServerClient(ray_server.http).unregister_system_shared_memory()
        finally:
            shm.destroy_shared_memory_region(hi)
            shm.destroy_shared_memory_region(ho)
