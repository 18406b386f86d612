"""ONNX → ncnn through pnnx (``model.ncnn.param`` + ``model.ncnn.bin``).

pnnx fixes every input shape it is given: a model converted with only ``inputshape=`` silently computes wrong
numbers at other shapes. So both ``inputshape=`` and ``inputshape2=`` (dynamic dims doubled) are passed, which
keeps the dynamic dims dynamic. Weights stay FP32 (``fp16=0``) so the result can be checked against ONNX Runtime.
Ops ncnn has no layer for are left in the param file under their torch names (``Tensor.to``, ``torch.where``) or
as unknown layers; they are reported as unsupported.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..engines.base import TensorSpec
from ..errors import require
from ..inputs import resolve_shape
from .common import ConversionError, last_lines

FILES = ("model.ncnn.param", "model.ncnn.bin")
_DTYPES = {"float32": "f32", "float64": "f64", "float16": "f16", "int32": "i32", "int64": "i64", "int8": "i8",
           "uint8": "u8", "bool": "u8"}


def version() -> str:
    from importlib import metadata

    return f"pnnx {metadata.version('pnnx')}"


def _arg(specs: Sequence[TensorSpec], shapes: list[tuple[int, ...]]) -> str:
    return ",".join(f"[{','.join(map(str, s))}]{_DTYPES.get(spec.dtype, 'f32')}" for spec, s in zip(specs, shapes))


def _static(d) -> bool:
    return isinstance(d, int) and d >= 0


def two_shapes(specs: Sequence[TensorSpec], shapes: Mapping | None) -> tuple[list[tuple[int, ...]], list[tuple[int, ...]] | None]:
    """The two shapes per input given to pnnx (``inputshape=`` and ``inputshape2=``).

    ncnn has no batch dim (a batch runs item by item), so a dynamic batch is 1 in both. The first shape is the bound
    shape (:func:`bushu.inputs.resolve_shape`); the second doubles the other dynamic dims, unless the caller bound
    the input's whole shape: then they are fixed at the bound values (PP-OCR rec only works at its one height, and
    pnnx crashes on it when the batch varies). ``None`` when nothing stays dynamic.
    """
    shapes = shapes or {}
    first = [(1, *resolve_shape(s, shapes)[1:]) if s.shape and not _static(s.shape[0]) else resolve_shape(s, shapes)
             for s in specs]
    second = []
    dynamic = False
    for spec, shape in zip(specs, first):
        dims = list(shape)
        whole = isinstance(shapes.get(spec.name), tuple)
        for i, d in enumerate(spec.shape or ()):
            if i > 0 and not _static(d) and not whole:
                dims[i] = shape[i] * 2
                dynamic = True
        second.append(tuple(dims))
    return first, (second if dynamic else None)


def fixed_specs(specs: Sequence[TensorSpec], first, second) -> list[TensorSpec]:
    """``specs`` with the dims a shape-fixing converter fixed (equal in both shapes) made static."""
    out = []
    for spec, a, b in zip(specs, first, second or first):
        dims = tuple(x if x == y and i > 0 else (spec.shape[i] if spec.shape else None) for i, (x, y) in enumerate(zip(a, b)))
        out.append(TensorSpec(spec.name, spec.dtype, dims))
    return out


def unsupported_layers(param: Path) -> list[str]:
    """Layer types in an ncnn param file that this ncnn build cannot create."""
    ncnn = require("ncnn", extra="ncnn", feature="the ncnn engine")
    bad = []
    for line in param.read_text().splitlines()[2:]:
        kind = line.split(maxsplit=1)[0] if line.strip() else ""
        if kind and ncnn.layer_to_index(kind) < 0 and kind not in bad:
            bad.append(kind)
    return bad


BOUND = "model.ncnn.bound.json"  # scalar inputs bound at conversion (see bushu.convert.pnnx_prep)
LAYOUT = "model.ncnn.layout.json"  # inputs/outputs made batch first at conversion (bushu.convert.pnnx_prep)


def _ignored(log: str) -> list[str]:
    """Op types pnnx's ncnn pass says it ignored (``ignore LSTM LSTM_23 param …``): their layer is incomplete."""
    found = []
    for line in log.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "ignore" and parts[1] not in found:
            found.append(parts[1])
    return found


# pnnx runs the model on the ONNX Runtime it bundles (1.30: IR version 13 at most); onnx 1.23 writes IR 14
PNNX_MAX_IR_VERSION = 13


def _copy_for_pnnx(src: Path, dst: Path) -> None:
    """Copy ``src`` for pnnx, its IR version lowered to :data:`PNNX_MAX_IR_VERSION` when above it (the IR version
    says which format features a file may use; a model that uses none of the newer ones reads the same)."""
    import onnx

    proto = onnx.load(str(src), load_external_data=False)
    if proto.ir_version <= PNNX_MAX_IR_VERSION:
        shutil.copyfile(src, dst)
        return
    proto.ir_version = PNNX_MAX_IR_VERSION
    onnx.save(proto, str(dst))


def _failure(log: str) -> str:
    """pnnx's reason in its log: the last line that says something failed, else its last two lines."""
    lines = last_lines(log, 10**6).split(" / ")
    failed = [ln for ln in lines if "failed" in ln.lower() or "error" in ln.lower()]
    return failed[-1] if failed else " / ".join(lines[-2:])


def _pnnx(src: Path, out_dir: Path, specs: Sequence[TensorSpec], shapes: Mapping | None) -> list[Path]:
    pnnx = require("pnnx", extra="ncnn", feature="conversion to ncnn")
    first, second = two_shapes(specs, shapes)
    work = out_dir.resolve() / "pnnx-work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    model = work / "model.onnx"
    _copy_for_pnnx(src, model)
    cmd = [pnnx.EXEC_PATH, str(model), f"inputshape={_arg(specs, first)}", "fp16=0", "device=cpu",
           f"ncnnparam={work.parent / FILES[0]}", f"ncnnbin={work.parent / FILES[1]}"]
    if second is not None:
        cmd.append(f"inputshape2={_arg(specs, second)}")
    proc = subprocess.run(cmd, cwd=work, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    log = proc.stdout + proc.stderr
    shutil.rmtree(work, ignore_errors=True)
    param = out_dir / FILES[0]
    if proc.returncode != 0 or not param.is_file() or not (out_dir / FILES[1]).is_file():
        raise ConversionError("ncnn", f"pnnx exited with {proc.returncode}: {_failure(log)}", log=log)
    bad = unsupported_layers(param) + [t for t in _ignored(log) if t not in unsupported_layers(param)]
    if bad:
        raise ConversionError("ncnn", "pnnx left layers ncnn cannot run", bad, log=log)
    return [out_dir / f for f in FILES]


def convert(onnx_path: Path, out_dir: Path, specs: Sequence[TensorSpec], shapes: Mapping | None = None,
            values: Mapping | None = None) -> list[Path]:
    """Convert ``onnx_path`` into ``out_dir`` (see the module docstring); raises :class:`ConversionError`.

    The model goes to pnnx as it is; when it has scalar inputs, or pnnx fails or leaves layers ncnn can't run, it
    goes again after :func:`bushu.convert.pnnx_prep.prepare` (scalars bound from ``values``, batch 1, constants
    folded). The error then names what is left after both tries.
    """
    import json

    from .pnnx_prep import prepare, scalar_inputs

    require("pnnx", extra="ncnn", feature="conversion to ncnn")
    first = ""
    if not scalar_inputs(specs):
        try:
            return _pnnx(onnx_path, out_dir, specs, shapes)
        except ConversionError as e:  # unsupported layers, or pnnx itself failed (MiniLM: see pnnx_prep item 8)
            first = "" if e.unsupported else f"; as exported, pnnx failed: {_failure(e.log)}"
    prepared = out_dir / "prepared.onnx"
    try:
        new_specs, bound, note, layout = prepare(onnx_path, prepared, values)
        moved = {n: tuple(new) for n, (_, new) in layout["inputs"].items()}
        try:
            files = _pnnx(prepared, out_dir, new_specs, {**(shapes or {}), **moved} if moved else shapes)
        except ConversionError as e:
            raise ConversionError("ncnn", f"{e.converter_message}, also after bushu's preparation ({note}){first}",
                                  e.unsupported, log=e.log) from None
    finally:
        prepared.unlink(missing_ok=True)
    if bound:
        (out_dir / BOUND).write_text(json.dumps(bound))
        files.append(out_dir / BOUND)
    if layout["inputs"] or layout["outputs"]:
        (out_dir / LAYOUT).write_text(json.dumps(layout))
        files.append(out_dir / LAYOUT)
    return files
