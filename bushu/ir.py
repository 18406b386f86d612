"""The one door to onnx-ir: load and save ONNX models, checking the file before any work is done.

A model file is untrusted. :func:`load` refuses, with a one-line :class:`~bushu.errors.BushuError`, a missing path,
a file that is not ONNX or is truncated, an opset newer than the installed ``onnx`` knows, a graph with a cycle,
and external data whose ``location`` is absolute or leaves the model's folder. Weights in external data stay
memory-mapped by onnx-ir (never read twice). :func:`save` is atomic and switches to external data above 2 GB.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
from onnx_ir import external_data as _external_data

from .errors import BushuError

__all__ = ["ir", "load", "save", "save_bytes", "to_chunks", "fits_one_proto", "loads", "to_proto", "to_bytes", "check_proto", "PROTOBUF_LIMIT"]

PROTOBUF_LIMIT = 2**31 - 1
# Above this many bytes of weights a model is saved with external data (protobuf's hard limit is 2 GiB).
EXTERNAL_DATA_THRESHOLD = 1_800_000_000


def _iter_graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _iter_graphs(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from _iter_graphs(g)


def _iter_tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    for g in _iter_graphs(model.graph):
        yield from g.initializer
        for si in g.sparse_initializer:
            yield si.values
            yield si.indices
        for node in g.node:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.TENSOR:
                    yield attr.t
                elif attr.type == onnx.AttributeProto.TENSORS:
                    yield from attr.tensors


def _check_external_data(model: onnx.ModelProto, base_dir: Path) -> None:
    root = base_dir.resolve()
    for t in _iter_tensors(model):
        if t.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in t.external_data}
        loc = info.get("location", "")
        if not loc:
            raise BushuError(f"tensor '{t.name}' is marked external but has no location: re-export the model")
        if os.path.isabs(loc) or loc.startswith(("/", "\\")) or (len(loc) > 1 and loc[1] == ":"):
            raise BushuError(
                f"tensor '{t.name}' points to external data at an absolute path '{loc}': refused for safety; "
                "save the data file beside the model and use a relative location"
            )
        target = (root / loc).resolve()
        if root != target and root not in target.parents:
            raise BushuError(
                f"tensor '{t.name}' points to external data '{loc}' outside the model's folder: refused for safety; "
                "move the data file beside the model"
            )
        if not target.is_file():
            raise BushuError(f"external data file '{loc}' of tensor '{t.name}' is missing: put it beside the model")
        offset = int(info.get("offset", 0) or 0)
        length = info.get("length")
        if length is not None and offset + int(length) > target.stat().st_size:
            raise BushuError(
                f"external data file '{loc}' is shorter than tensor '{t.name}' needs (truncated?): re-export the model"
            )


def _check_cycles(graph: onnx.GraphProto, outer: frozenset[str] = frozenset()) -> None:
    """Kahn's algorithm over the nodes; names a node on a cycle (or one that reads a value nobody produces)."""
    available = set(outer) | {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    available |= {si.values.name for si in graph.sparse_initializer}
    producers = {}
    for i, node in enumerate(graph.node):
        for o in node.output:
            producers[o] = i

    def implicit_inputs(node: onnx.NodeProto) -> set[str]:
        names: set[str] = set()
        for attr in node.attribute:
            subs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
            for sub in subs:
                for g in _iter_graphs(sub):
                    for n in g.node:
                        names.update(n.input)
        return names

    deps: list[set[int]] = []
    for node in graph.node:
        needed = set(node.input) | implicit_inputs(node)
        deps.append({producers[n] for n in needed if n in producers and n not in available})
    done: set[int] = set()
    progress = True
    while progress and len(done) < len(graph.node):
        progress = False
        for i in range(len(graph.node)):
            if i not in done and deps[i] <= done:
                done.add(i)
                progress = True
    if len(done) < len(graph.node):
        stuck = next(graph.node[i] for i in range(len(graph.node)) if i not in done)
        raise BushuError(
            f"the graph has a cycle through node '{stuck.name or stuck.op_type}' ({stuck.op_type}): "
            "an ONNX graph must be acyclic; fix the exporter or the edit that produced it"
        )
    for node in graph.node:
        for attr in node.attribute:
            subs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
            inner_outer = frozenset(available | set(producers))
            for sub in subs:
                _check_cycles(sub, inner_outer)


def check_proto(proto: onnx.ModelProto, base_dir: Path | None, source: str = "model") -> None:
    """Refuse a model that can't be trusted or used, before any work is done."""
    if not proto.HasField("graph") or (len(proto.graph.node) == 0 and len(proto.graph.output) == 0):
        raise BushuError(f"{source} has no graph: it is not an ONNX model or it is truncated; re-export it")
    if proto.ir_version <= 0:
        raise BushuError(f"{source} has no IR version: it is not an ONNX model or it is truncated; re-export it")
    known = onnx.defs.onnx_opset_version()
    for imp in proto.opset_import:
        if imp.domain in ("", "ai.onnx") and imp.version > known:
            raise BushuError(
                f"{source} uses opset {imp.version} but the installed onnx {onnx.__version__} knows up to {known}: "
                "upgrade onnx (pip install -U onnx) or export with a lower opset"
            )
    if proto.ir_version > onnx.IR_VERSION:
        raise BushuError(
            f"{source} has IR version {proto.ir_version} but the installed onnx {onnx.__version__} knows up to "
            f"{onnx.IR_VERSION}: upgrade onnx (pip install -U onnx)"
        )
    _check_cycles(proto.graph)
    if base_dir is not None:
        _check_external_data(proto, base_dir)


def _read_proto(path: Path) -> onnx.ModelProto:
    if not path.exists():
        raise BushuError(f"no such file: {path}")
    if path.is_dir():
        candidates = sorted(path.glob("*.onnx"))
        hint = f" (did you mean {candidates[0]}?)" if candidates else ""
        raise BushuError(f"{path} is a folder, not an ONNX file{hint}")
    if path.stat().st_size == 0:
        raise BushuError(f"{path} is empty: re-export or re-download the model")
    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf raises DecodeError, RuntimeError or ValueError depending on the backend
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise BushuError(f"{path} is not a valid ONNX file ({msg}): is it truncated, or another format?") from None


def _zoo_names() -> set[str]:
    from . import zoo

    return set(zoo.MODELS)


def load(path: str | os.PathLike) -> ir.Model:
    """Load an ONNX model into onnx-ir after checking it (see the module docstring for what is refused).

    A zoo model's name (``ppocr-rec``, …: :data:`bushu.zoo.MODELS`) stands for its installed file."""
    path = Path(path)
    if not path.exists() and str(path) in _zoo_names():  # `bushu run ppocr-rec`: a real model from its wheel
        from . import zoo

        path = zoo.path(str(path))
    proto = _read_proto(path)
    check_proto(proto, path.parent, source=str(path))
    try:
        model = ir.serde.deserialize_model(proto)
    except Exception as e:
        raise BushuError(f"{path} could not be read as an ONNX model ({str(e).splitlines()[0]})") from None
    _external_data.set_base_dir(model.graph, str(path.parent.resolve()))
    model.meta["bushu.path"] = str(path.resolve())
    return model


def loads(data: bytes, source: str = "model bytes") -> ir.Model:
    """Load a model from serialized bytes (no external data allowed)."""
    try:
        proto = onnx.load_from_string(data)
    except Exception as e:
        raise BushuError(f"{source} is not a valid ONNX model ({str(e).splitlines()[0]})") from None
    check_proto(proto, None, source)
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in _iter_tensors(proto)):
        raise BushuError(f"{source} refers to external data, which bytes can't carry: load it from its file")
    return ir.serde.deserialize_model(proto)


def weight_bytes(model: ir.Model) -> int:
    """Bytes of all weights: initializers and the tensors of Constant nodes (PP-OCR keeps its weights there)."""
    total = 0
    for g in [model.graph, *model.graph.subgraphs()]:
        for v in g.initializers.values():
            if v.const_value is not None:
                total += v.const_value.nbytes
        for node in g:
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                attr = node.attributes.get("value")
                if attr is not None and attr.type == ir.AttributeType.TENSOR:
                    total += attr.as_tensor().nbytes
    return total


def to_proto(model: ir.Model) -> onnx.ModelProto:
    return ir.serde.serialize_model(model)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        out.append(low | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, size: int) -> bytes:
    """The key and length of a length-delimited protobuf field (wire type 2) of ``size`` bytes."""
    return _varint(number << 3 | 2) + _varint(size)


def _fields_after(msg, number: int) -> bytes:
    """The encoding of ``msg``'s fields numbered above ``number`` (protobuf writes fields in number order, so this
    is the tail of ``msg.SerializeToString()``)."""
    tail = type(msg)()
    for fd, val in msg.ListFields():
        if fd.number <= number:
            continue
        if fd.is_repeated:
            getattr(tail, fd.name).extend(val)
        elif fd.message_type is not None:
            getattr(tail, fd.name).CopyFrom(val)
        else:
            setattr(tail, fd.name, val)
    return tail.SerializeToString()


class _Shape(ir.Tensor):
    """A stand-in for a large tensor while the model is serialized: its name, type, shape and metadata, no data."""

    def __init__(self, tensor):  # noqa: D107 -- ir.Tensor's constructor would want the data
        self._t = tensor

    name = property(lambda self: self._t.name, lambda self, v: setattr(self._t, "name", v))
    dtype = property(lambda self: self._t.dtype)
    shape = property(lambda self: self._t.shape)
    doc_string = property(lambda self: self._t.doc_string)
    metadata_props = property(lambda self: self._t.metadata_props)

    def tobytes(self) -> bytes:
        return b""


_RAW_KINDS = "fiub"  # numpy kinds whose memory is ONNX's raw_data as is (little-endian); others go by tobytes()


def _raw(tensor, name: str) -> bytes | memoryview:
    """A tensor's ``raw_data``, without a copy when it is a C-contiguous little-endian numpy array of its type;
    refused when its size isn't what its type and shape need (a tensor read from a corrupt file)."""
    arr = getattr(tensor, "raw", None)
    if (isinstance(arr, np.ndarray) and arr.flags.c_contiguous and arr.dtype.kind in _RAW_KINDS
            and arr.dtype.byteorder in ("<", "=", "|") and sys.byteorder == "little"
            and arr.dtype == tensor.dtype.numpy()):
        data = memoryview(arr).cast("B")
    else:
        try:
            data = tensor.tobytes()
        except Exception as e:  # onnx-ir can't lay out data that doesn't fit the shape (typed fields)
            raise BushuError(f"tensor '{name}': its data doesn't fit its type and shape ({str(e).splitlines()[0]}): "
                             "the model is corrupt; re-export it") from None
    if len(data) != tensor.nbytes:
        raise BushuError(f"tensor '{name}' holds {len(data)} bytes but its type and shape need {tensor.nbytes}: the "
                         "model is corrupt; re-export it")
    return data


def _to_proto_without(model: ir.Model, min_bytes: int) -> tuple[onnx.ModelProto, dict[str, ir.TensorProtocol]]:
    """:func:`to_proto` with the main graph's initializers over ``min_bytes`` (not external, not strings) written by
    name, type and shape only, no data; and those tensors by name. The model is left as it was."""
    big = {}
    for v in model.graph.initializers.values():
        t = v.const_value
        if (t is not None and not isinstance(t, (ir.ExternalTensor, ir.StringTensor, _Shape))
                and t.nbytes > min_bytes):
            big[v.name] = t
            v.const_value = _Shape(t)
    try:
        return to_proto(model), big
    finally:
        for name, t in big.items():
            model.graph.initializers[name].const_value = t


def to_chunks(model: ir.Model, min_bytes: int = 1024
              ) -> tuple[list[bytes | memoryview], onnx.ModelProto, dict[str, tuple[int, list[int]]]]:
    """``model``'s protobuf encoding as a list of buffers whose concatenation is ``to_proto(model)``'s
    serialization, byte for byte, with the main graph's initializers over ``min_bytes`` taken from their arrays'
    memory instead of being copied into a protobuf and out again (0.1-0.2 s for 45 MB); the proto without those
    initializers (for the checker); their names. A ModelProto's bytes are its fields' encodings in field-number
    order, so the weights' encodings can be placed between the graph's other fields. For one-protobuf models
    the ONNX type and dims of each (by name). A ModelProto's bytes are its fields' encodings in field-number order,
    so the weights' encodings can be placed between the graph's other fields. For one-protobuf models
    (:func:`fits_one_proto`)."""
    proto, big = _to_proto_without(model, min_bytes)
    graph = proto.graph
    entries: list[bytes | memoryview] = []
    small, stripped = [], {}
    for t in graph.initializer:
        if t.name in big:
            data = _raw(big[t.name], t.name)
            stripped[t.name] = (t.data_type, list(t.dims))
            t.ClearField("raw_data")
            head, tail = t.SerializeToString(), b""
            if any(fd.number > 9 for fd, _ in t.ListFields()):  # doc_string, metadata_props: after raw_data (9)
                tail = _fields_after(t, 9)
                head = head[: len(head) - len(tail)]
            raw_field = _field(9, len(data))
            entries += [_field(5, len(head) + len(raw_field) + len(data) + len(tail)), head, raw_field, data, tail]
        else:
            enc = t.SerializeToString()
            entries += [_field(5, len(enc)), enc]
            kept = onnx.TensorProto()
            kept.CopyFrom(t)
            small.append(kept)
    del graph.initializer[:]
    rest = graph.SerializeToString()  # fields 1-2 (nodes, name), then 10+ (inputs, outputs, value_info, ...)
    graph_tail = _fields_after(graph, 5)
    graph_head = rest[: len(rest) - len(graph_tail)]
    graph_size = len(rest) + sum(len(e) for e in entries)
    graph.initializer.extend(small)
    model_head = type(proto)()
    for fd, val in proto.ListFields():
        if fd.number < 7:
            setattr(model_head, fd.name, val)  # ir_version, producer, domain, model_version, doc_string: scalars
    chunks = [model_head.SerializeToString(), _field(7, graph_size), graph_head, *entries, graph_tail,
              _fields_after(proto, 7)]
    return chunks, proto, stripped


def fits_one_proto(model: ir.Model) -> bool:
    """Whether ``model`` serializes as one protobuf: no external data and weights under the external-data threshold
    (protobuf's 2 GB limit)."""
    from .engines.base import has_external_data

    return weight_bytes(model) <= EXTERNAL_DATA_THRESHOLD and not has_external_data(model)


def to_bytes(model: ir.Model) -> bytes:
    """Serialize for an engine that takes bytes; models whose weights exceed protobuf's limit must go by path."""
    if not fits_one_proto(model):
        raise BushuError("the model has external data or is over 2 GB: save it with bushu.save() and pass the path")
    return to_proto(model).SerializeToString()


def source_path(model: ir.Model) -> Path | None:
    """The file a model was loaded from, when it came from :func:`load`."""
    p = model.meta.get("bushu.path")
    return Path(p) if p else None


def save(
    model: ir.Model,
    path: str | os.PathLike,
    *,
    force: bool = False,
    external_data: bool | None = None,
) -> Path:
    """Save atomically: write into a temporary folder beside ``path``, then rename into place.

    ``external_data=None`` switches to a ``<name>.data`` file when the weights exceed ~1.8 GB. A ``path`` equal to
    the file the model was loaded from is refused unless ``force=True``; an existing different file is replaced.
    """
    path = Path(path)
    src = source_path(model)
    if src is not None and path.resolve() == src and not force:
        raise BushuError(f"refusing to overwrite the input {path}: choose another output path or pass --force")
    use_external = external_data if external_data is not None else weight_bytes(model) > EXTERNAL_DATA_THRESHOLD
    data_name = path.name + ".data"

    def write(tmp: Path) -> tuple[str, ...]:
        if use_external:
            ir.save(model, tmp, external_data=data_name)
            return (data_name,)
        ir.save(model, tmp)
        return ()

    return _write_atomically(path, write)


def _write_atomically(path: Path, write) -> Path:
    """``write(tmp)`` writes the model into a temporary folder beside ``path`` and returns the names of the files it
    wrote beside it (external data); those are moved into place first, the model last, so that a reader never sees
    a model without its data or half a file."""
    if path.is_dir():
        raise BushuError(f"{path} is a folder: give a file name such as {path / 'model.onnx'}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmpdir = Path(tempfile.mkdtemp(prefix=".bushu-save-", dir=path.parent))
    try:
        tmp = tmpdir / path.name
        for name in write(tmp):
            os.replace(tmpdir / name, path.parent / name)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    return path


def save_bytes(data: bytes | Sequence[bytes | memoryview], path: str | os.PathLike) -> Path:
    """Write a serialized model (:func:`to_bytes`, or the buffers of :func:`to_chunks`) atomically, like
    :func:`save`. For a caller that also hands the same bytes to the checker or an engine: the model is serialized
    once."""
    def write(tmp: Path) -> tuple[str, ...]:
        with open(tmp, "wb") as f:
            if isinstance(data, (bytes, bytearray, memoryview)):
                f.write(data)
            else:
                f.writelines(data)
        return ()

    return _write_atomically(Path(path), write)


def convert_opset(model: ir.Model, version: int) -> ir.Model:
    """A copy of ``model`` at ONNX opset ``version`` (ONNX's version converter); the model itself is unchanged.

    Per-channel Q/DQ needs opset ≥ 13, the standard fusions need 17/20/23: the quantizer and the fusions call this.
    """
    import onnx.version_converter

    current = model.opset_imports.get("", 1)
    if current == version:
        return model
    proto = to_proto(model)
    try:
        converted = onnx.version_converter.convert_version(proto, version)
    except Exception as e:
        raise BushuError(f"could not convert the model from opset {current} to {version}: {str(e).splitlines()[0]}") from None
    out = ir.serde.deserialize_model(converted)
    out.meta.update({k: v for k, v in model.meta.items() if k != "bushu.path"})
    return out
