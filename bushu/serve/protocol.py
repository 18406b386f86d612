"""The Open Inference Protocol (KServe v2) codec over HTTP: JSON and the binary tensor data extension.

Decoding turns a request body into an :class:`InferRequest` (numpy arrays, zero-copy views of the body for binary
inputs); encoding turns output arrays into a response body. Every malformed request raises :class:`ProtocolError`
(answered 400 with ``{"error": ...}``), never anything else. The wire facts come from Triton's clients:

- binary inputs follow the JSON header in input order; ``Inference-Header-Content-Length`` gives the header's size
  and each input's ``parameters.binary_data_size`` its share of the rest;
- BYTES elements are each prefixed by a 4-byte little-endian length, in binary form;
- outputs go back binary when ``outputs[].parameters.binary_data`` says so, else when ``parameters.binary_data_output``
  does (the default for requests that name no outputs, as ``tritonclient`` sends them), else as JSON ``data``;
- ``outputs[].parameters.classification`` (what ``tritonclient`` sends; the spec's ``class_count`` works too) asks
  for the top-k classes as BYTES ``"score:index"``;
- unknown parameters are ignored.
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Mapping, Sequence

import numpy as np
import orjson

# KServe v2 datatype <-> numpy. BF16 has no numpy type, so it is not served.
DATATYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(bool), "UINT8": np.dtype(np.uint8), "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32), "UINT64": np.dtype(np.uint64), "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16), "INT32": np.dtype(np.int32), "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16), "FP32": np.dtype(np.float32), "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),
}
_BY_NUMPY = {v.str: k for k, v in DATATYPES.items() if k != "BYTES"}
HEADER_LENGTH = "inference-header-content-length"


class ProtocolError(ValueError):
    """A request the protocol can't accept; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def datatype_of(dtype: np.dtype | str) -> str:
    """The KServe v2 datatype of a numpy dtype (``object``, ``str`` and ``bytes`` arrays are BYTES)."""
    dt = np.dtype(dtype)
    if dt.kind in "OSU":
        return "BYTES"
    try:
        return _BY_NUMPY[dt.newbyteorder("=").str]
    except KeyError:
        raise ProtocolError(f"dtype {dt} has no KServe v2 datatype") from None


@dataclasses.dataclass(slots=True)
class RequestedOutput:
    name: str
    binary: bool | None = None  # None: follow the request's binary_data_output
    class_count: int = 0
    shm: memoryview | None = None  # written into this system shared memory instead (shm.py)


@dataclasses.dataclass(slots=True)
class InferRequest:
    """A decoded inference request; ``outputs`` is None when the client asked for every output."""

    inputs: dict[str, np.ndarray]
    outputs: list[RequestedOutput] | None = None
    id: str = ""
    parameters: dict = dataclasses.field(default_factory=dict)

    @property
    def binary_output(self) -> bool:
        return bool(self.parameters.get("binary_data_output", False))


def _shape(value, name: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in value):
        raise ProtocolError(f"input '{name}': shape must be a list of non-negative integers, got {value!r}")
    return tuple(value)


def _count(shape: Sequence[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def deserialize_bytes(buf: memoryview | bytes, count: int, name: str) -> np.ndarray:
    """BYTES elements, each a 4-byte little-endian length and its bytes, into an object array of ``bytes``."""
    out = np.empty(count, dtype=object)
    view = memoryview(buf)
    pos = 0
    for i in range(count):
        if pos + 4 > len(view):
            raise ProtocolError(f"input '{name}': BYTES data ends after {i} of {count} elements")
        (n,) = struct.unpack_from("<I", view, pos)
        pos += 4
        if pos + n > len(view):
            raise ProtocolError(f"input '{name}': BYTES element {i} claims {n} bytes past the end of its data")
        out[i] = bytes(view[pos:pos + n])
        pos += n
    if pos != len(view):
        raise ProtocolError(f"input '{name}': {len(view) - pos} bytes left over after {count} BYTES elements")
    return out


def serialize_bytes(arr: np.ndarray) -> bytes:
    """An object/str/bytes array as length-prefixed BYTES elements (row-major)."""
    parts = []
    for v in arr.reshape(-1):
        b = v if isinstance(v, bytes) else str(v).encode()
        parts.append(struct.pack("<I", len(b)))
        parts.append(b)
    return b"".join(parts)


def _json_array(data, datatype: str, shape: tuple[int, ...], name: str) -> np.ndarray:
    if not isinstance(data, list):
        data = [data]
    try:
        if datatype == "BYTES":
            flat = np.asarray(data, dtype=object).reshape(-1)
            arr = np.array([v.encode() if isinstance(v, str) else v for v in flat], dtype=object)
            if not all(isinstance(v, bytes) for v in arr):
                raise ValueError("BYTES data must be strings")
        else:
            arr = np.asarray(data, dtype=DATATYPES[datatype]).reshape(-1)
    except (ValueError, TypeError, OverflowError) as e:
        raise ProtocolError(f"input '{name}': data is not {datatype}: {e}") from None
    if arr.size != _count(shape):
        raise ProtocolError(f"input '{name}': {arr.size} values in data but shape {list(shape)} needs {_count(shape)}")
    return arr.reshape(shape)


def _parameters(obj, where: str) -> dict:
    p = obj.get("parameters") or {}
    if not isinstance(p, dict):
        raise ProtocolError(f"{where}: parameters must be an object")
    return p


def decode_request(body: bytes, header_length: int | None = None, shm=None) -> InferRequest:
    """Decode an HTTP infer request body (JSON, optionally followed by binary tensor data). ``shm`` (a
    :class:`~bushu.serve.shm.SharedMemory`) resolves tensors that name a system shared-memory region."""
    if header_length is None:
        header, binary = body, memoryview(b"")
    else:
        if header_length < 0 or header_length > len(body):
            raise ProtocolError(f"Inference-Header-Content-Length {header_length} is outside the {len(body)}-byte body")
        header, binary = body[:header_length], memoryview(body)[header_length:]
    try:
        req = orjson.loads(header)
    except orjson.JSONDecodeError as e:
        raise ProtocolError(f"malformed JSON in the request: {e}") from None
    if not isinstance(req, dict) or not isinstance(req.get("inputs"), list):
        raise ProtocolError("the request must be a JSON object with an 'inputs' list")
    inputs: dict[str, np.ndarray] = {}
    pos = 0
    for t in req["inputs"]:
        if not isinstance(t, dict) or not isinstance(t.get("name"), str):
            raise ProtocolError("each input must be an object with a 'name'")
        name = t["name"]
        datatype = t.get("datatype")
        if datatype not in DATATYPES:
            raise ProtocolError(f"input '{name}': unknown datatype {datatype!r}: use one of {', '.join(DATATYPES)}")
        shape = _shape(t.get("shape"), name)
        params = _parameters(t, f"input '{name}'")
        size = params.get("binary_data_size")
        if "shared_memory_region" in params:
            arr = need_shm(shm).input(name, datatype, shape, params)
        elif size is not None:
            if not isinstance(size, int) or size < 0 or pos + size > len(binary):
                raise ProtocolError(f"input '{name}': binary_data_size {size!r} runs past the {len(binary)} bytes of "
                                    f"binary data ({pos} already used)")
            chunk = binary[pos:pos + size]
            pos += size
            if datatype == "BYTES":
                arr = deserialize_bytes(chunk, _count(shape), name).reshape(shape)
            else:
                want = _count(shape) * DATATYPES[datatype].itemsize
                if size != want:
                    raise ProtocolError(f"input '{name}': binary_data_size is {size} but {datatype}{list(shape)} "
                                        f"needs {want} bytes")
                arr = np.frombuffer(chunk, dtype=DATATYPES[datatype]).reshape(shape)
        elif "data" in t:
            arr = _json_array(t["data"], datatype, shape, name)
        else:
            raise ProtocolError(f"input '{name}' has neither 'data' nor parameters.binary_data_size")
        if name in inputs:
            raise ProtocolError(f"input '{name}' appears twice")
        inputs[name] = arr
    if pos != len(binary):
        raise ProtocolError(f"{len(binary) - pos} bytes of binary data follow the inputs that no input claims "
                            "(check binary_data_size and Inference-Header-Content-Length)")
    outputs = None
    if req.get("outputs") is not None:
        if not isinstance(req["outputs"], list):
            raise ProtocolError("'outputs' must be a list")
        outputs = []
        for o in req["outputs"]:
            if not isinstance(o, dict) or not isinstance(o.get("name"), str):
                raise ProtocolError("each requested output must be an object with a 'name'")
            p = _parameters(o, f"output '{o['name']}'")
            binary_flag = p.get("binary_data")
            class_count = p.get("classification", p.get("class_count", 0))  # tritonclient sends "classification"
            if not isinstance(class_count, int) or class_count < 0:
                raise ProtocolError(f"output '{o['name']}': class_count must be a non-negative integer")
            target = requested_shm(shm, o["name"], p, class_count)
            outputs.append(RequestedOutput(o["name"], None if binary_flag is None else bool(binary_flag), class_count,
                                           target))
    rid = req.get("id", "")
    return InferRequest(inputs, outputs, rid if isinstance(rid, str) else str(rid), _parameters(req, "request"))


def need_shm(shm):
    if shm is None:
        raise ProtocolError("system shared memory is not enabled on this server: send the tensors in the request")
    return shm


def requested_shm(shm, name: str, params: Mapping, class_count: int) -> memoryview | None:
    """Where a requested output goes when its parameters name a shared-memory region (else None)."""
    if "shared_memory_region" not in params:
        return None
    if class_count:
        raise ProtocolError(f"output '{name}': shared memory can't be set on a classification output")
    return need_shm(shm).output(name, params)


def classify(arr: np.ndarray, k: int, batched: bool) -> np.ndarray:
    """Triton's classification extension: the top ``k`` scores of each item as BYTES ``"score:index"``."""
    scores = arr.reshape(arr.shape[0], -1) if batched else arr.reshape(1, -1)
    k = min(k, scores.shape[1])
    idx = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    out = np.array([[f"{scores[r, i]:f}:{i}".encode() for i in row] for r, row in enumerate(idx)], dtype=object)
    return out if batched else out.reshape(k)


def _json_data(arr: np.ndarray):
    if arr.dtype == object or arr.dtype.kind in "SU":
        return [v.decode(errors="replace") if isinstance(v, bytes) else str(v) for v in arr.reshape(-1)]
    if arr.dtype == np.float16:
        return arr.reshape(-1).astype(np.float32)
    return np.ascontiguousarray(arr.reshape(-1))


def encode_response_parts(model: str, version: str, request_id: str, outputs: Mapping[str, np.ndarray],
                          binary: Mapping[str, bool], parameters: Mapping | None = None,
                          in_shm: frozenset = frozenset()) -> tuple[list, int | None]:
    """The response body as a list of buffers to send one after the other -- the JSON header, then each binary
    output as a byte view of its array (not copied) -- and, when any output is binary, the JSON header's length
    (for ``Inference-Header-Content-Length``). ``binary`` says per output whether it goes as binary data; outputs in
    ``in_shm`` were written to shared memory and go with their datatype and shape only (as Triton answers)."""
    tensors, chunks = [], []
    for name, arr in outputs.items():
        t = {"name": name, "datatype": datatype_of(arr.dtype), "shape": list(arr.shape)}
        if name in in_shm:
            pass
        elif binary.get(name):
            raw = serialize_bytes(arr) if t["datatype"] == "BYTES" else \
                memoryview(np.ascontiguousarray(arr).reshape(-1)).cast("B")
            t["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            t["data"] = _json_data(arr)
        tensors.append(t)
    resp = {"model_name": model, "model_version": version, "outputs": tensors}
    if request_id:
        resp["id"] = request_id
    if parameters:
        resp["parameters"] = dict(parameters)
    header = orjson.dumps(resp, option=orjson.OPT_SERIALIZE_NUMPY)
    return [header, *chunks], len(header) if chunks else None


def encode_response(model: str, version: str, request_id: str, outputs: Mapping[str, np.ndarray],
                    binary: Mapping[str, bool], parameters: Mapping | None = None) -> tuple[bytes, int | None]:
    """:func:`encode_response_parts` joined into one ``bytes``."""
    parts, json_len = encode_response_parts(model, version, request_id, outputs, binary, parameters)
    return b"".join(parts), json_len


def error_body(message: str) -> bytes:
    return orjson.dumps({"error": message})
