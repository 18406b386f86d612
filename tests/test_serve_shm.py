"""Triton's system shared-memory extension on a real ``bushu serve`` (PP-OCR cls and PP-OCRv4 rec), driven by
``tritonclient.http`` / ``tritonclient.grpc`` and ``tritonclient.utils.shared_memory`` as Triton's own examples do:
inputs and outputs in registered regions, status, unregister (also while a request uses the region), bad cases."""

from __future__ import annotations

import concurrent.futures as cf
import http.client
import os
import time

import numpy as np
import onnx
import orjson
import pytest
from onnx import TensorProto, helper

from bushu import engines
from bushu.engines.base import EngineOptions
from bushu.serve.process import ServerProcess

tritonhttp = pytest.importorskip("tritonclient.http")
tritongrpc = pytest.importorskip("tritonclient.grpc")
shm = pytest.importorskip("tritonclient.utils.shared_memory")
from tritonclient.utils import InferenceServerException, serialize_byte_tensor

CLS_OUT = "save_infer_model/scale_0.tmp_1"
REC_OUT = "softmax_11.tmp_0"


def _bytes_echo() -> onnx.ModelProto:
    g = helper.make_graph([helper.make_node("Identity", ["s"], ["t"])], "echo",
                          [helper.make_tensor_value_info("s", TensorProto.STRING, ["b", 2])],
                          [helper.make_tensor_value_info("t", TensorProto.STRING, ["b", 2])])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.fixture(scope="module")
def server(tmp_path_factory, ppocr_cls, ppocr_rec):
    repo = tmp_path_factory.mktemp("shmrepo")
    for name, src in (("cls", ppocr_cls), ("rec", ppocr_rec)):
        (repo / name / "1").mkdir(parents=True)
        (repo / name / "1" / "model.onnx").symlink_to(src)
    (repo / "echo" / "1").mkdir(parents=True)
    onnx.save(_bytes_echo(), repo / "echo" / "1" / "model.onnx")
    with ServerProcess(repo, "--threads", "1") as srv:
        yield srv


@pytest.fixture
def regions():
    """Regions made with tritonclient's utilities; destroyed (unlinked) after the test."""
    made = []

    def make(byte_size: int):
        tag = f"bushu_test_{os.getpid()}_{len(made)}"
        h = shm.create_shared_memory_region(tag, "/" + tag, byte_size)
        made.append(h)
        return tag, h

    yield make
    for h in made:
        shm.destroy_shared_memory_region(h)


def _local(path):
    return engines.open_session(str(path), "ort", EngineOptions(threads=1))


def test_http_inputs_and_outputs_in_system_shared_memory(server, regions, ppocr_cls):
    client = tritonhttp.InferenceServerClient(server.http)
    assert "system_shared_memory" in client.get_server_metadata()["extensions"]
    x = np.random.default_rng(0).random((8, 3, 48, 192), dtype=np.float32)
    want = _local(ppocr_cls).run({"x": x})[CLS_OUT]
    (ni, hi), (no, ho) = regions(x.nbytes + 64), regions(want.nbytes)
    shm.set_shared_memory_region(hi, [x], offset=64)
    client.unregister_system_shared_memory()
    client.register_system_shared_memory(ni, "/" + ni, x.nbytes, offset=64)  # a region at an offset of its key
    client.register_system_shared_memory(no, "/" + no, want.nbytes)
    status = client.get_system_shared_memory_status()
    assert {r["name"]: (r["key"], r["offset"], r["byte_size"]) for r in status} == {
        ni: ("/" + ni, 64, x.nbytes), no: ("/" + no, 0, want.nbytes)}
    assert client.get_system_shared_memory_status(no) == [{"name": no, "key": "/" + no, "offset": 0,
                                                          "byte_size": want.nbytes}]
    inp = tritonhttp.InferInput("x", list(x.shape), "FP32")
    inp.set_shared_memory(ni, x.nbytes)
    out = tritonhttp.InferRequestedOutput(CLS_OUT, binary_data=True)
    out.set_shared_memory(no, want.nbytes)
    res = client.infer("cls", [inp], outputs=[out])
    o = res.get_output(CLS_OUT)
    assert o["shape"] == list(want.shape) and "data" not in o and "parameters" not in o  # as Triton answers
    got = shm.get_contents_as_numpy(ho, np.float32, o["shape"])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # an input from shared memory with the output sent back in the body
    res = client.infer("cls", [inp], outputs=[tritonhttp.InferRequestedOutput(CLS_OUT)])
    np.testing.assert_allclose(res.as_numpy(CLS_OUT), want, rtol=1e-5, atol=1e-6)
    client.unregister_system_shared_memory(ni)
    client.unregister_system_shared_memory(ni)  # not registered any more: not an error (Triton's behaviour)
    assert [r["name"] for r in client.get_system_shared_memory_status()] == [no]
    with pytest.raises(InferenceServerException, match="no system shared memory region"):
        client.infer("cls", [inp])
    client.unregister_system_shared_memory()
    assert client.get_system_shared_memory_status() == []


def test_grpc_and_bytes_in_system_shared_memory(server, regions, ppocr_rec):
    client = tritongrpc.InferenceServerClient(server.grpc)
    assert "system_shared_memory" in client.get_server_metadata(as_json=True)["extensions"]
    x = np.random.default_rng(1).random((2, 3, 48, 320), dtype=np.float32)
    want = _local(ppocr_rec).run({"x": x})[REC_OUT]
    (ni, hi), (no, ho) = regions(x.nbytes), regions(want.nbytes)
    shm.set_shared_memory_region(hi, [x])
    client.register_system_shared_memory(ni, "/" + ni, x.nbytes)
    client.register_system_shared_memory(no, "/" + no, want.nbytes)
    status = client.get_system_shared_memory_status(as_json=True)["regions"]
    assert status[ni]["key"] == "/" + ni and int(status[no]["byte_size"]) == want.nbytes
    inp = tritongrpc.InferInput("x", list(x.shape), "FP32")
    inp.set_shared_memory(ni, x.nbytes)
    out = tritongrpc.InferRequestedOutput(REC_OUT)
    out.set_shared_memory(no, want.nbytes)
    res = client.infer("rec", [inp], outputs=[out])
    o = res.get_output(REC_OUT)
    np.testing.assert_allclose(shm.get_contents_as_numpy(ho, np.float32, list(o.shape)), want, rtol=1e-5, atol=1e-6)
    # BYTES through shared memory (length-prefixed elements), input and output
    s = np.array([[b"ab", b""], [b"\xc3\xbc", b"x" * 40]], dtype=object)
    raw = serialize_byte_tensor(s)  # an object array holding the serialized bytes, as set_shared_memory_region takes
    n = len(raw.item())
    (bi, hbi), (bo, hbo) = regions(n), regions(n)
    shm.set_shared_memory_region(hbi, [raw])
    client.register_system_shared_memory(bi, "/" + bi, n)
    client.register_system_shared_memory(bo, "/" + bo, n)
    inp = tritongrpc.InferInput("s", [2, 2], "BYTES")
    inp.set_shared_memory(bi, n)
    out = tritongrpc.InferRequestedOutput("t")
    out.set_shared_memory(bo, n)
    client.infer("echo", [inp], outputs=[out])
    np.testing.assert_array_equal(shm.get_contents_as_numpy(hbo, np.object_, [2, 2]), s)
    client.unregister_system_shared_memory()


def _post(server, path, body=b"", method="POST"):
    c = http.client.HTTPConnection(*server.http.split(":"))
    c.request(method, path, body)
    r = c.getresponse()
    return r.status, r.read()


def test_bad_regions_answer_400_and_the_server_keeps_serving(server, regions, tmp_path):
    name, _ = regions(4096)
    reg = f"/v2/systemsharedmemory/region/{name}/register"
    bad = [
        ({"key": "/no_such_region_bushu", "byte_size": 16}, "can't open"),
        ({"key": "/../etc/passwd", "byte_size": 16}, "POSIX shared-memory name"),
        ({"key": "/a/b", "byte_size": 16}, "POSIX shared-memory name"),
        ({"key": "/" + name, "byte_size": 4096, "offset": 1}, "past the end"),
        ({"key": "/" + name, "byte_size": 0}, "over 0"),
        ({"key": "/" + name, "byte_size": -1}, "non-negative"),
        ({"byte_size": 16}, "'key'"),
    ]
    for body, why in bad:
        status, raw = _post(server, reg, orjson.dumps(body))
        assert status == 400 and why in orjson.loads(raw)["error"], (body, raw)
    link = f"bushu_test_link_{os.getpid()}"  # a symlink under /dev/shm is not followed
    os.symlink("/etc/hostname", f"/dev/shm/{link}")
    try:
        status, raw = _post(server, reg, orjson.dumps({"key": "/" + link, "byte_size": 1}))
        assert status == 400, raw
    finally:
        os.unlink(f"/dev/shm/{link}")
    assert _post(server, reg, b"{not json")[0] == 400
    assert _post(server, reg, orjson.dumps({"key": "/" + name, "byte_size": 4096}))[0] == 200
    status, raw = _post(server, reg, orjson.dumps({"key": "/" + name, "byte_size": 16}))
    assert status == 400 and "already registered" in orjson.loads(raw)["error"]
    other = f"{name}_again"  # the same key under a second name: its own mapping of the same memory
    assert _post(server, f"/v2/systemsharedmemory/region/{other}/register",
                 orjson.dumps({"key": "/" + name, "byte_size": 1024, "offset": 1024}))[0] == 200
    assert _post(server, f"/v2/systemsharedmemory/region/{other}/status", method="GET")[0] == 200
    assert _post(server, "/v2/systemsharedmemory/region/nope/status", method="GET")[0] == 404
    # tensors: sizes and offsets that don't fit the region or the tensor
    x = np.zeros((1, 3, 48, 192), np.float32)  # 110,592 bytes: more than the 4096-byte region
    for params, why in (({"shared_memory_byte_size": x.nbytes}, "past the end"),
                        ({"shared_memory_byte_size": 4000, "shared_memory_offset": 200}, "past the end"),
                        ({"shared_memory_byte_size": 64}, "needs 110592 bytes"),
                        ({"shared_memory_byte_size": 64, "shared_memory_region": "nope"}, "no system shared memory")):
        req = {"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32",
                           "parameters": {"shared_memory_region": name, **params}}]}
        status, raw = _post(server, "/v2/models/cls/infer", orjson.dumps(req))
        assert status == 400 and why in orjson.loads(raw)["error"], (params, raw)
    small = {"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32", "data": [0.0] * x.size}],
             "outputs": [{"name": CLS_OUT, "parameters": {"shared_memory_region": name, "shared_memory_byte_size": 4}}]}
    status, raw = _post(server, "/v2/models/cls/infer", orjson.dumps(small))
    assert status == 400 and "over its shared_memory_byte_size" in orjson.loads(raw)["error"]
    small["outputs"][0]["parameters"]["classification"] = 1
    assert _post(server, "/v2/models/cls/infer", orjson.dumps(small))[0] == 400
    # a region truncated behind the server's back is refused, not read past its end
    os.truncate(f"/dev/shm/{name}", 100)
    req = {"inputs": [{"name": "x", "shape": [1, 1, 1, 64], "datatype": "FP32",
                       "parameters": {"shared_memory_region": name, "shared_memory_byte_size": 256}}]}
    status, raw = _post(server, "/v2/models/cls/infer", orjson.dumps(req))
    assert status == 400 and "shrank" in orjson.loads(raw)["error"]
    # CUDA shared memory: not supported
    status, raw = _post(server, "/v2/cudasharedmemory/region/g/register", orjson.dumps({"byte_size": 1}))
    assert status == 400 and "CUDA" in orjson.loads(raw)["error"]
    with pytest.raises(InferenceServerException, match="CUDA"):
        tritongrpc.InferenceServerClient(server.grpc).get_cuda_shared_memory_status()
    _post(server, "/v2/systemsharedmemory/unregister")
    assert _post(server, "/v2/health/live", method="GET")[0] == 200


def test_unregister_while_a_request_reads_the_region(server, regions, ppocr_rec):
    """A slow rec request (batch 8, wide) reads its input from a region that is unregistered while it runs: it
    still answers right (into an output region), and the server goes on."""
    x = np.random.default_rng(2).random((8, 3, 48, 960), dtype=np.float32)
    want = _local(ppocr_rec).run({"x": x})[REC_OUT]
    (name, h), (oname, oh) = regions(x.nbytes), regions(want.nbytes)
    shm.set_shared_memory_region(h, [x])
    for n, size in ((name, x.nbytes), (oname, want.nbytes)):
        assert _post(server, f"/v2/systemsharedmemory/region/{n}/register",
                     orjson.dumps({"key": "/" + n, "byte_size": size}))[0] == 200
    req = orjson.dumps({"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32", "parameters": {
        "shared_memory_region": name, "shared_memory_byte_size": x.nbytes}}], "outputs": [{"name": REC_OUT, "parameters": {
            "shared_memory_region": oname, "shared_memory_byte_size": want.nbytes}}]})
    with cf.ThreadPoolExecutor(1) as pool:  # plain sockets (tritonclient.http is gevent-based: no threads)
        fut = pool.submit(_post, server, "/v2/models/rec/infer", req)
        time.sleep(0.3)
        assert _post(server, f"/v2/systemsharedmemory/region/{name}/unregister")[0] == 200
        assert not fut.done()  # the region went while the request was using it
        status, raw = fut.result()
    assert status == 200, raw
    assert orjson.loads(raw)["outputs"][0]["shape"] == list(want.shape)
    np.testing.assert_allclose(shm.get_contents_as_numpy(oh, np.float32, want.shape), want, rtol=1e-4, atol=1e-5)
    _post(server, "/v2/systemsharedmemory/unregister")
    assert _post(server, "/v2/systemsharedmemory/status", method="GET") == (200, b"[]")
    assert _post(server, "/v2/health/live", method="GET")[0] == 200


def test_only_loopback_clients_may_use_shared_memory_unless_allowed():
    from bushu.errors import BushuError
    from bushu.serve.protocol import ProtocolError
    from bushu.serve.server import ServeOptions, check_options
    from bushu.serve.shm import SharedMemory

    local = SharedMemory()
    for host in ("127.0.0.1", "::1", "127.3.4.5"):
        local.check_client(host)
    for host in ("10.0.0.2", "192.168.1.9", "", None):
        with pytest.raises(ProtocolError) as e:
            local.check_client(host)
        assert e.value.status == 403 and "--allow-shared-memory" in str(e.value)
    remote = SharedMemory(allow_remote=True, token="s3cret")
    with pytest.raises(ProtocolError) as e:
        remote.check_client("10.0.0.2", "Bearer wrong")
    assert e.value.status == 401
    remote.check_client("10.0.0.2", "Bearer s3cret")
    with pytest.raises(BushuError, match="--token"):  # beyond loopback it needs the token, as model control does
        check_options(ServeOptions(host="0.0.0.0", shared_memory_remote=True))
    check_options(ServeOptions(host="0.0.0.0", shared_memory_remote=True, token="s3cret"))


def test_a_replica_mirrors_the_registry_it_is_sent(regions, monkeypatch):
    """--ray: a replica maps what the ingress's snapshot lists, once per change; a name registered again (a new
    serial) is mapped again; a region on another machine is refused with the reason."""
    from bushu.serve import shm as shm_mod
    from bushu.serve.protocol import ProtocolError

    (a, ha), (b, _) = regions(64), regions(64)
    ingress, replica = shm_mod.SharedMemory(), shm_mod.SharedMemory()
    ingress.register(a, "/" + a, 0, 64)
    ingress.register(b, "/" + b, 32, 32)
    snap = ingress.snapshot()
    assert snap is ingress.snapshot()  # cached until the registry changes
    replica.mirror(snap)
    assert sorted(replica.status(), key=lambda r: r["name"]) == sorted(ingress.status(), key=lambda r: r["name"])
    shm.set_shared_memory_region(ha, [np.arange(16, dtype=np.float32)])
    np.testing.assert_array_equal(replica.input("x", "FP32", (16,), {"shared_memory_region": a,
                                                                      "shared_memory_byte_size": 64}), np.arange(16))
    mapped = replica.regions[a]
    ingress.unregister(b)
    ingress.unregister(a)
    ingress.register(a, "/" + a, 0, 32)  # the same name again, another size
    replica.mirror(ingress.snapshot())
    assert [r["byte_size"] for r in replica.status()] == [32] and replica.regions[a] is not mapped
    same = replica.regions[a]
    replica.mirror(ingress.snapshot())  # unchanged: nothing is mapped again
    assert replica.regions[a] is same
    far = shm_mod.SharedMemory()
    monkeypatch.setattr(shm_mod, "machine_id", lambda: "elsewhere/0")
    far.mirror(ingress.snapshot())
    with pytest.raises(ProtocolError, match="another machine"):
        far.input("x", "FP32", (8,), {"shared_memory_region": a, "shared_memory_byte_size": 32})
    for r in (ingress, replica, far):
        r.close()
