"""Why an exporter failed, in one line: the unsupported operator or the code where tracing stopped, where it sits in
the module tree, and what to try.

torch's exporters raise long multi-part messages (the dynamo exporter's ``TorchExportError``/``ConversionError``
with a summary, a stack and advice for torch developers; the TorchScript exporter's ``UnsupportedOperatorError``
after printing its graph). :func:`diagnose` reads them into a :class:`Failure`; :func:`locate_op` runs the module
once eagerly to find which submodule and source line call an operator.
"""

from __future__ import annotations

import dataclasses
import re
import traceback
from pathlib import Path

_OP_DYNAMO = re.compile(r"No ONNX function found for <OpOverload\(op='([\w.:]+)'")
_OP_TS = re.compile(r"Exporting the operator '([\w:.]+)' to ONNX opset version (\d+) is not supported")
_CALL = re.compile(r'The following call raised this error:\s*File "([^"]+)", line (\d+), in (\w+)\s*\n\s*(.+)')
_SUMMARY = re.compile(r"## Exception summary\s*\n\s*<class '([\w.]+)'>: (.+)")


@dataclasses.dataclass(frozen=True)
class Failure:
    """One exporter's failure: ``reason`` (one line), the ``op`` it could not translate, ``where`` (submodule and
    source line) and a ``fix`` to try, when known."""

    exporter: str
    reason: str
    op: str | None = None
    where: str | None = None
    fix: str | None = None

    def __str__(self) -> str:
        s = f"{self.exporter}: {self.reason}"
        if self.where:
            s += f" (in {self.where})"
        return s


def _first_line(text: str) -> str:
    for line in text.splitlines():
        line = line.strip()
        if line:
            return line[:300]
    return ""


def _root(exc: BaseException) -> BaseException:
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return exc


def _op_name(op: str) -> str:
    """``aten._linalg_eigh.default`` / ``aten::linalg_eigh`` → ``aten::linalg_eigh`` (one spelling for both)."""
    op = op.replace("::", ".")
    parts = op.split(".")
    if len(parts) >= 3 and parts[-1] in ("default", "Tensor", "Scalar", "int", "dim"):
        parts = parts[:-1]
    return f"{parts[0]}::{'.'.join(parts[1:]).lstrip('_')}"


def module_at(module, filename: str, line: int) -> str | None:
    """The dotted path (and class) of the first submodule whose class's ``forward`` holds ``filename:line`` (shared
    code such as the 6th of six identical layers is named by the first)."""
    for path, sub in module.named_modules():
        code = getattr(type(sub).forward, "__code__", None)
        if code is None or Path(code.co_filename).resolve() != Path(filename).resolve():
            continue
        last = max((ln for _, _, ln in code.co_lines() if ln is not None), default=code.co_firstlineno)
        if code.co_firstlineno <= line <= last:
            return f"{path} ({type(sub).__name__})" if path else type(sub).__name__
    return None


def _where(module, filename: str, line: int, code: str | None = None) -> str:
    loc = f"{Path(filename).name}:{line}" + (f" `{code.strip()}`" if code else "")
    owner = module_at(module, filename, line)
    return f"{owner} at {loc}" if owner else loc


def _ts_min_opset(op: str) -> int | None:
    """The lowest opset at which the TorchScript exporter has a symbolic for ``op``."""
    try:
        from torch.onnx._internal.torchscript_exporter import registration
    except ImportError:  # pragma: no cover - layout of older torch
        return None
    group = registration.registry.get_function_group(op)
    return group.get_min_supported() if group is not None else None


def diagnose(exc: BaseException, exporter: str, module=None) -> Failure:
    """Read an exporter's exception (see the module docstring)."""
    text = str(exc)
    root = _root(exc)
    if m := _OP_DYNAMO.search(text) or _OP_DYNAMO.search(str(root)):
        op = _op_name(m.group(1))
        return Failure(exporter, f"{op} has no ONNX translation in torch's dynamo exporter", op=op,
                       fix="rewrite that call with other torch ops, or pass custom_translation_table= to "
                           "torch.onnx.export")
    if m := _OP_TS.search(text):
        op, opset = _op_name(m.group(1)), int(m.group(2))
        first = _ts_min_opset(m.group(1))
        if first is not None and first > opset:
            return Failure(exporter, f"{op} has no ONNX symbolic at opset {opset}", op=op,
                           fix=f"try --opset {first} (opset={first}), or the dynamo exporter")
        return Failure(exporter, f"{op} has no ONNX symbolic in the TorchScript exporter", op=op,
                       fix="try the dynamo exporter, or rewrite that call with other torch ops")
    where = None
    if m := _CALL.search(text):
        where = _where(module, m.group(1), int(m.group(2)), m.group(4)) if module is not None else None
    summary = _SUMMARY.search(text)
    if summary:
        kind, msg = summary.group(1).rsplit(".", 1)[-1], summary.group(2)
    else:
        kind, msg = type(root).__name__, _first_line(str(root))
    if "GuardOnDataDependent" in kind or "data-dependent" in msg:
        return Failure(exporter, "Python control flow depends on a tensor's values", where=where,
                       fix="use torch.where or torch.cond for that branch, or compute the condition outside forward")
    if "Constraint" in kind or "specialized" in msg:
        return Failure(exporter, f"a dynamic dim can't stay dynamic: {_first_line(msg)}", where=where,
                       fix="drop that axis from the dynamic ones, or remove the code that fixes its size")
    if where is None and module is not None:
        frames = [f for f in traceback.extract_tb(root.__traceback__) if module_at(module, f.filename, f.lineno or 0)]
        if frames:
            where = _where(module, frames[-1].filename, frames[-1].lineno or 0, frames[-1].line)
    return Failure(exporter, f"{kind}: {_first_line(msg)}", where=where)


def locate_op(module, example, op: str) -> str | None:
    """Run ``module`` once on ``example`` and return the submodule and source line of the first call to ``op``
    (``aten::linalg_eigh``), or None when it never runs."""
    import sys

    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    want = _op_name(op)
    found: list[str] = []

    class Spy(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if not found and _op_name(str(func)) == want:
                frame = sys._getframe(1)
                while frame is not None:
                    if module_at(module, frame.f_code.co_filename, frame.f_lineno):
                        found.append(_where(module, frame.f_code.co_filename, frame.f_lineno))
                        break
                    frame = frame.f_back
            return func(*args, **(kwargs or {}))

    try:
        with torch.no_grad(), Spy():
            module(*example.args, **example.kwargs)
    except Exception:  # the module ran eagerly before the export; a failure here only means "location unknown"
        return None
    return found[0] if found else None
