"""The KServe v2 codec on its own: what tritonclient encodes decodes to the same arrays, and malformed bodies fail
with a ProtocolError (a 400), never another exception."""

from __future__ import annotations

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bushu.serve.protocol import DATATYPES, ProtocolError, decode_request, encode_response, encode_response_parts

tritonhttp = pytest.importorskip("tritonclient.http")
from tritonclient.http._utils import _get_inference_request  # noqa: E402  the exact bytes tritonclient sends

NUMERIC = [k for k in DATATYPES if k != "BYTES"]


def _client_body(arrays: dict[str, np.ndarray], binary: bool):
    inputs = []
    for name, a in arrays.items():
        dt = "BYTES" if a.dtype == object else next(k for k, v in DATATYPES.items() if v == a.dtype)
        t = tritonhttp.InferInput(name, list(a.shape), dt)
        t.set_data_from_numpy(a, binary_data=binary)
        inputs.append(t)
    body, json_size = _get_inference_request(inputs, "req-1", None, 0, False, False, 0, None, None)
    return body if isinstance(body, bytes) else body.encode(), json_size


@pytest.mark.parametrize("binary", [True, False])
@pytest.mark.parametrize("dt", [*NUMERIC, "BYTES"])
def test_every_datatype_roundtrips_from_tritonclient(dt, binary):
    rng = np.random.default_rng(0)
    if dt == "BYTES":
        a = np.array([b"abc", "日本".encode(), b"", b"x" * 300, b"q", b"r"], dtype=object).reshape(2, 3)
    elif dt == "BOOL":
        a = rng.random((2, 3)) > 0.5
    else:
        a = (rng.random((2, 3)) * 100).astype(DATATYPES[dt])
    body, json_size = _client_body({"t": a}, binary)
    req = decode_request(body, json_size)
    got = req.inputs["t"]
    assert got.shape == a.shape and req.id == "req-1"
    assert got.dtype == a.dtype or (dt == "BYTES" and got.dtype == object)
    np.testing.assert_array_equal(got, a)


def _parse_response(body: bytes, json_len: int | None):
    header = orjson.loads(body[:json_len] if json_len else body)
    pos, out = json_len or 0, {}
    for t in header["outputs"]:
        dt = DATATYPES[t["datatype"]]
        if "parameters" in t:
            n = t["parameters"]["binary_data_size"]
            raw = body[pos:pos + n]
            pos += n
            if t["datatype"] == "BYTES":
                from bushu.serve.protocol import deserialize_bytes

                out[t["name"]] = deserialize_bytes(raw, int(np.prod(t["shape"])), t["name"]).reshape(t["shape"])
            else:
                out[t["name"]] = np.frombuffer(raw, dtype=dt).reshape(t["shape"])
        else:
            data = t["data"]
            if t["datatype"] == "BYTES":
                data = [d.encode() for d in data]
            out[t["name"]] = np.array(data, dtype=dt).reshape(t["shape"])
    return out


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(NUMERIC), st.lists(st.integers(0, 4), min_size=0, max_size=3), st.booleans())
def test_encode_then_decode_is_identity(dt, shape, binary):
    a = (np.arange(int(np.prod(shape)) if shape else 1) % 7).astype(DATATYPES[dt]).reshape(shape)
    body, json_len = encode_response("m", "1", "", {"y": a}, {"y": binary})
    assert (json_len is not None) == binary
    np.testing.assert_array_equal(_parse_response(body, json_len)["y"], a)


def test_binary_outputs_are_sent_out_of_their_arrays_not_copied():
    a = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    b = a[1:]  # a view of a batched output, as the batcher splits one
    parts, json_len = encode_response_parts("m", "1", "", {"a": a, "b": b, "c": b}, {"a": True, "b": True, "c": False})
    assert len(parts) == 3 and json_len == len(parts[0])
    assert np.shares_memory(np.frombuffer(parts[1], np.float32), a)
    assert np.shares_memory(np.frombuffer(parts[2], np.float32), b)
    assert b"".join(parts) == encode_response("m", "1", "", {"a": a, "b": b, "c": b}, {"a": True, "b": True, "c": False})[0]
    np.testing.assert_array_equal(_parse_response(b"".join(parts), json_len)["b"], b)


def _binary_body(header: dict, payload: bytes) -> tuple[bytes, int]:
    h = orjson.dumps(header)
    return h + payload, len(h)


BAD = {
    "not json": (b"{nope", None),
    "not an object": (b"[1, 2]", None),
    "no inputs": (b'{"outputs": []}', None),
    "unknown datatype": (b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP8", "data": [1]}]}', None),
    "negative shape": (b'{"inputs": [{"name": "x", "shape": [-1], "datatype": "FP32", "data": [1]}]}', None),
    "too few values": (b'{"inputs": [{"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [1, 2, 3]}]}', None),
    "strings as FP32": (b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": ["a"]}]}', None),
    "no data": (b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32"}]}', None),
    "header longer than body": (b'{"inputs": []}', 999),
    "binary size past end": _binary_body({"inputs": [{"name": "x", "shape": [4], "datatype": "FP32",
                                                      "parameters": {"binary_data_size": 16}}]}, b"\0" * 8),
    "binary size vs shape": _binary_body({"inputs": [{"name": "x", "shape": [3], "datatype": "FP32",
                                                      "parameters": {"binary_data_size": 8}}]}, b"\0" * 8),
    "unclaimed binary bytes": _binary_body({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32",
                                                        "parameters": {"binary_data_size": 4}}]}, b"\0" * 12),
    "BYTES length past end": _binary_body({"inputs": [{"name": "s", "shape": [1], "datatype": "BYTES",
                                                       "parameters": {"binary_data_size": 6}}]}, b"\xff\0\0\0ab"),
    "duplicate input": (b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]},'
                        b'{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]}', None),
}


@pytest.mark.parametrize("case", list(BAD))
def test_malformed_requests_raise_protocol_error(case):
    body, n = BAD[case]
    with pytest.raises(ProtocolError) as e:
        decode_request(body, n)
    assert e.value.status == 400 and str(e.value)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.one_of(st.none(), st.integers(-5, 250)))
def test_arbitrary_bytes_never_raise_anything_but_protocol_error(body, n):
    try:
        decode_request(body, n)
    except ProtocolError:
        pass
