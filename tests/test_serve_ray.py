"""``bushu serve --ray`` on a local Ray instance with one replica: tritonclient.http gets the same answers as
ONNX Runtime in-process, and errors keep their status codes."""

from __future__ import annotations

import socket

import numpy as np
import pytest

from bushu import engines
from bushu.serve.process import ServerProcess

pytest.importorskip("ray.serve", reason="ray[serve] is not installed (pip install 'bushu[ray]')")
tritonhttp = pytest.importorskip("tritonclient.http")

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


def test_ray_serve_answers_like_in_process(ray_server, ppocr_cls):
    client = tritonhttp.InferenceServerClient(ray_server.http, network_timeout=60)
    assert client.is_server_live() and client.is_server_ready()
    md = client.get_model_metadata("cls")
    assert md["inputs"][0]["shape"] == [-1, 3, -1, -1]
    x = np.random.default_rng(0).random((2, 3, 48, 192), dtype=np.float32)
    t = tritonhttp.InferInput("x", list(x.shape), "FP32")
    t.set_data_from_numpy(x)
    got = client.infer("cls", [t]).as_numpy(CLS_OUT)
    want = engines.open_session(str(ppocr_cls), "ort").run({"x": x})[CLS_OUT]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    bad = tritonhttp.InferInput("x", [1, 3, 48], "FP32")
    bad.set_data_from_numpy(np.zeros((1, 3, 48), np.float32))
    with pytest.raises(tritonhttp.InferenceServerException) as e:
        client.infer("cls", [bad])
    assert e.value.status() == "400" and "shape" in e.value.message()
    assert client.get_inference_statistics("cls")["model_stats"][0]["inference_count"] == 2
