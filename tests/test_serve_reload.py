"""Hot reload under load (--poll), the repository API behind --allow-model-control and a bearer token, and
SIGTERM draining in-flight requests -- on a real server with PP-OCR models."""

from __future__ import annotations

import concurrent.futures as cf
import http.client as httpclient
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import orjson
import pytest

from bushu.serve.process import ServerProcess

CLS_OUT = "save_infer_model/scale_0.tmp_1"
TOKEN = "s3cret-for-tests"


def _body(shape):
    x = np.random.default_rng(0).random(shape, dtype=np.float32)
    header = orjson.dumps({"inputs": [{"name": "x", "shape": list(shape), "datatype": "FP32",
                                       "parameters": {"binary_data_size": x.nbytes}}]})
    return header + x.tobytes(), {"Inference-Header-Content-Length": str(len(header))}


def _post(addr, path, body=b"", headers=None, conn=None):
    c = conn or httpclient.HTTPConnection(*addr.split(":"), timeout=60)
    c.request("POST", path, body, headers or {})
    r = c.getresponse()
    return r.status, r.read(), {k.lower(): v for k, v in r.getheaders()}


@pytest.fixture(scope="module")
def repo(tmp_path_factory, ppocr_cls, ppocr_rec):
    repo = tmp_path_factory.mktemp("reload-repo")
    (repo / "m" / "1").mkdir(parents=True)
    shutil.copy(ppocr_cls, repo / "m" / "1" / "model.onnx")
    (repo / "rec" / "1").mkdir(parents=True)
    (repo / "rec" / "1" / "model.onnx").symlink_to(ppocr_rec)
    return repo


@pytest.fixture(scope="module")
def server(repo):
    with ServerProcess(repo, "--poll", "0.3", "--allow-model-control", "--token", TOKEN, "--threads", "1") as srv:
        yield srv


def test_new_version_is_picked_up_under_load_without_failures(server, repo, ppocr_cls):
    body, headers = _body((1, 3, 48, 192))
    stop = threading.Event()
    seen: list[tuple[int, str]] = []

    def client():
        conn = httpclient.HTTPConnection(*server.http.split(":"), timeout=60)
        while not stop.is_set():
            status, raw, h = _post(server.http, "/v2/models/m/infer", body, headers, conn)
            n = int(h.get("inference-header-content-length", len(raw)))
            seen.append((status, orjson.loads(raw[:n]).get("model_version", "")))

    threads = [threading.Thread(target=client) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    tmp = repo / ".incoming.onnx"  # copy then rename into place, as a deployment tool would
    shutil.copy(ppocr_cls, tmp)
    (repo / "m" / "2").mkdir()
    os.replace(tmp, repo / "m" / "2" / "model.onnx")
    t_end = time.monotonic() + 30
    while time.monotonic() < t_end and not any(v == "2" for _, v in seen[-5:]):
        time.sleep(0.1)
    time.sleep(0.3)
    stop.set()
    for t in threads:
        t.join()
    statuses = {s for s, _ in seen}
    versions = [v for _, v in seen]
    assert statuses == {200}, statuses
    assert versions[0] == "1" and versions[-1] == "2" and versions.count("1") > 3
    c = httpclient.HTTPConnection(*server.http.split(":"))
    c.request("GET", "/v2/models/m")
    assert orjson.loads(c.getresponse().read())["versions"] == ["2"]  # latest-1 policy: version 1 retired


def test_repository_api_needs_the_token_and_unload_load_work(server):
    addr = server.http
    assert _post(addr, "/v2/repository/models/rec/unload")[0] == 401
    assert _post(addr, "/v2/repository/models/rec/unload", headers={"Authorization": "Bearer wrong"})[0] == 401
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert _post(addr, "/v2/repository/models/rec/unload", headers=auth)[0] == 200
    body, headers = _body((1, 3, 48, 320))
    status, raw, _ = _post(addr, "/v2/models/rec/infer", body, headers)
    assert status == 404 and "unloaded" in orjson.loads(raw)["error"]
    index = orjson.loads(_post(addr, "/v2/repository/index")[1])
    assert {"name": "rec", "version": "", "state": "UNAVAILABLE", "reason": "unloaded"} in index
    time.sleep(1.0)  # polling must not bring back a model unloaded through the API
    assert _post(addr, "/v2/models/rec/infer", body, headers)[0] == 404
    assert _post(addr, "/v2/repository/models/rec/load", headers=auth)[0] == 200
    assert _post(addr, "/v2/models/rec/infer", body, headers)[0] == 200
    status, raw, _ = _post(addr, "/v2/repository/models/nope/load", headers=auth)
    assert status == 400 and "unknown model" in orjson.loads(raw)["error"]


def test_model_control_beyond_loopback_needs_a_token(ppocr_cls):
    r = subprocess.run([sys.executable, "-m", "bushu", "serve", str(ppocr_cls), "--host", "0.0.0.0",
                        "--allow-model-control"], capture_output=True, text=True, timeout=60,
                       env={k: v for k, v in os.environ.items() if k != "BUSHU_SERVE_TOKEN"})
    assert r.returncode == 2 and "--token" in r.stderr


def test_sigterm_drains_in_flight_requests(repo):
    body, headers = _body((1, 3, 48, 1600))  # ~0.1 s a run on this machine
    srv = ServerProcess(repo, "--threads", "1", "--grpc-port", "-1").start()
    try:
        with cf.ThreadPoolExecutor(4) as pool:
            futs = [pool.submit(_post, srv.http, "/v2/models/rec/infer", body, headers) for _ in range(4)]
            time.sleep(0.15)
            srv.proc.send_signal(signal.SIGTERM)
            results = [f.result(timeout=60) for f in futs]
        assert [s for s, _, _ in results] == [200] * 4
        srv.proc.wait(30)
        assert srv.proc.returncode is not None
    finally:
        srv.stop()


def test_a_bad_config_stops_start_up_with_exit_2(tmp_path, ppocr_cls):
    (tmp_path / "m" / "1").mkdir(parents=True)
    (tmp_path / "m" / "1" / "model.onnx").symlink_to(ppocr_cls)
    (tmp_path / "m" / "config.pbtxt").write_text('input [ { name: "nope" data_type: TYPE_FP32 dims: [ 3 ] } ]\n')
    r = subprocess.run([sys.executable, "-m", "bushu", "serve", str(tmp_path), "--http-port", "0", "--grpc-port",
                        "-1", "--metrics-port", "-1"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "lists input 'nope'" in r.stderr.splitlines()[-1]
