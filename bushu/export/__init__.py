"""PyTorch → ONNX with a verdict: ``bushu.export(module, example_inputs, ...)``.

torch's dynamo exporter is tried first and the TorchScript exporter is the fallback (``exporter="auto"``); the
result says which one made the model and why the other was not used. The model is then run on ONNX Runtime
against the module on the example inputs and on fresh random inputs of other sizes along the dynamic axes, and
the result is truthy only when every output matched (see :mod:`bushu.export.verify`). When no exporter succeeds,
the :class:`~bushu.errors.BushuError` names the operator or the code where tracing failed and what to try.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..compare.metrics import Tolerance
from ..engines.base import model_specs
from ..errors import BushuError, require
from .diagnose import Failure, diagnose, locate_op
from .exporter import export_dynamo, export_torchscript, quiet
from .factory import load_factory, load_weights
from .result import ExportResult, VerifyCase
from .signature import dim_sizes, dynamic_axes, fresh_examples, normalize
from .verify import torch_outputs
from .verify import verify as _verify

__all__ = ["export", "ExportResult", "VerifyCase", "load_factory", "load_weights"]

EXPORTERS = ("auto", "dynamo", "torchscript")


def _order(exporter: str) -> list[str]:
    if exporter not in EXPORTERS:
        raise BushuError(f"unknown exporter '{exporter}': choose one of {', '.join(EXPORTERS)}")
    return ["dynamo", "torchscript"] if exporter == "auto" else [exporter]


def _have_onnxscript() -> bool:
    import importlib.util

    return importlib.util.find_spec("onnxscript") is not None


def _try_exporters(order, module, example, *, axes, opset, output_names, workdir: Path, explicit: bool):
    """Run the exporters in ``order`` until one succeeds: ``(model or None, exporter used, [(Failure, exception)],
    TracerWarning notes)``."""
    failures: list[tuple[Failure, BaseException | None]] = []
    notes: list[str] = []
    for name in order:
        if name == "dynamo" and not _have_onnxscript():
            if explicit:
                require("onnxscript", extra="torch", feature="the dynamo exporter")
            failures.append((Failure("dynamo", "onnxscript is not installed", fix="pip install 'bushu[torch]'"), None))
            continue
        model = None
        with quiet() as caught:
            try:
                if name == "dynamo":
                    model = export_dynamo(module, example, axes=axes, opset=opset, output_names=output_names)
                else:
                    model = export_torchscript(module, example, axes=axes, opset=opset, output_names=output_names,
                                               workdir=workdir)
            except Exception as e:  # any exporter failure is diagnosed; the next exporter may still work
                failures.append((diagnose(e, name, module), e))
        notes += caught
        if model is not None:
            return model, name, failures, notes
    return None, None, failures, notes


def _failure_message(failures: list[Failure], where: str | None) -> str:
    fix = next((f.fix for f in reversed(failures) if f.fix and "--opset" in f.fix), None)
    fix = fix or next((f.fix for f in failures if f.fix), None) or "rerun with --debug for torch's full error"
    loc = where or next((f.where for f in failures if f.where), None)
    ops = {f.op for f in failures}
    if len(failures) > 1 and len(ops) == 1 and None not in ops:
        reasons = f"{ops.pop()} has no ONNX translation in the {' or the '.join(f.exporter for f in failures)} exporter"
    else:
        reasons = "; ".join(f"{f.exporter}: {f.reason}" for f in failures)
    return f"export failed: {reasons}" + (f", in {loc}" if loc else "") + f": {fix}"


def _detach(model) -> None:
    """Read weights that still live in the temporary folder into memory (an in-memory export of a model whose
    TorchScript export went to external data), before the folder is removed."""
    import onnx_ir as ir

    for init in model.graph.initializers.values():
        if isinstance(init.const_value, ir.ExternalTensor):
            init.const_value = ir.tensor(init.const_value.numpy(), name=init.name)


@contextlib.contextmanager
def _eval_mode(module):
    """Export and verify in eval mode (dropout off, BatchNorm on running stats); the caller's mode is restored."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


def export(
    module,
    example_inputs,
    *,
    output: str | os.PathLike | None = None,
    dynamic_shapes: Mapping[str, Mapping[int, str] | Sequence[int]] | None = None,
    dynamic_batch: bool = False,
    opset: int | None = None,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    exporter: str = "auto",
    verify: bool = True,
    tol: Tolerance = Tolerance(),
    force: bool = False,
    external_data: bool | None = None,
    seed: int = 0,
    show_progress: bool = True,
) -> ExportResult:
    """Export ``module`` called on ``example_inputs`` to ONNX, save it to ``output`` (atomically, through
    :func:`bushu.ir.save`; ``None`` keeps it in memory as ``result.model``) and verify it.

    ``example_inputs``: a tensor, a tuple of tensors (positional) or a dict (keyword arguments).
    ``dynamic_shapes``: per input name, ``{axis: dim_name}`` or a list of axes; ``dynamic_batch`` makes axis 0 of
    every input ``batch``. ``opset``: ONNX opset (the dynamo exporter supports 18 and up, the TorchScript one
    defaults to 17). ``exporter``: ``auto`` (dynamo, then TorchScript), ``dynamo`` or ``torchscript``.
    ``verify``: run ONNX Runtime against PyTorch (on the example inputs and two larger sizes along the dynamic
    axes, drawn with ``seed``) with tolerance ``tol``. ``external_data``: force a ``.data`` file (default: only
    above ~1.8 GB of weights). Raises :class:`BushuError` with the operator or code to fix when no exporter works.
    """
    torch = require("torch", extra="torch", feature="bushu export")
    if not isinstance(module, torch.nn.Module):
        raise BushuError(f"export needs a torch.nn.Module, got a {type(module).__name__}")
    order = _order(exporter)
    if output is not None and Path(output).is_dir():
        raise BushuError(f"{output} is a folder: give a file name such as {Path(output) / 'model.onnx'}")
    example = normalize(module, example_inputs, input_names)
    axes = dynamic_axes(example, dynamic_shapes, batch=dynamic_batch)
    dim_sizes(example, axes)  # refuse inconsistent dim names before any work

    with _eval_mode(module), tempfile.TemporaryDirectory(prefix="bushu-export-") as workdir:
        try:
            torch_outputs(module, example)
        except Exception as e:
            raise BushuError(f"the module fails on the example inputs ({type(e).__name__}: "
                             f"{str(e).splitlines()[0] if str(e) else ''}): fix the inputs or the module") from e
        t0 = time.perf_counter()
        model, used, failures, notes = _try_exporters(
            order, module, example, axes=axes, opset=opset, output_names=output_names, workdir=Path(workdir),
            explicit=exporter != "auto")
        export_s = time.perf_counter() - t0
        if model is None:
            op = next((f.op for f, _ in failures if f.op), None)
            where = locate_op(module, example, op) if op else None
            raise BushuError(_failure_message([f for f, _ in failures], where)) from failures[-1][1]

        got_opset = model.opset_imports.get("", 0)
        if opset is not None and got_opset != opset:
            notes.append(f"asked for opset {opset}; the {used} exporter wrote opset {got_opset}")
        saved = None
        if output is not None:
            from .. import ir as bir

            saved = bir.save(model, output, force=force, external_data=external_data)
        cases: tuple[VerifyCase, ...] = ()
        t1 = time.perf_counter()
        if verify:
            todo = [("example", example), *fresh_examples(example, axes, seed=seed)]
            cases = _verify(str(saved) if saved else model, module, todo, tol=tol, show_progress=show_progress)
        verify_s = time.perf_counter() - t1
        if saved is None:
            _detach(model)
    ins, outs = model_specs(model)
    fallback = "; ".join(str(f) for f, _ in failures) if failures else None
    return ExportResult(
        path=str(saved) if saved else None, exporter=used, fallback_reason=fallback, opset=got_opset,
        inputs=tuple(ins), outputs=tuple(outs), tolerance=tol, verification=cases, notes=tuple(notes),
        export_s=export_s, verify_s=verify_s, model=model,
    )
