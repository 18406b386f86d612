"""Run torch's exporters and hand back an ``onnx_ir.Model``.

- dynamo (``torch.onnx.export(..., dynamo=True)``, needs onnxscript): captures the graph with ``torch.export``; its
  ``ONNXProgram.model`` is already an ``onnx_ir.Model``, so nothing is serialized here. It supports opset 18 and
  up (a lower request gives 18) and defaults to torch's own choice (20 in torch 2.13).
- torchscript (``dynamo=False``): traces one run, so Python control flow is frozen at the example's values. It
  writes a file, which goes into a temporary folder (with external data when over 2 GB) and is loaded back.

torch prints progress and its own graphs on stdout/stderr (the TorchScript exporter's graph dump comes from C++,
so the file descriptors themselves are redirected), and logs warnings; all of it is captured here so that the user
sees one result or one error. TracerWarnings are kept as notes: they name the code a trace froze.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import onnx_ir as ir

from .signature import Example

TORCHSCRIPT_DEFAULT_OPSET = 17
_NOISY_LOGGERS = ("torch", "onnxscript")


@contextlib.contextmanager
def _fds_to(file) -> Iterator[None]:
    """Point file descriptors 1 and 2 at ``file`` (C++ writes bypass ``sys.stdout``), then restore them."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    try:
        os.dup2(file.fileno(), 1)
        os.dup2(file.fileno(), 2)
        yield
    finally:
        for fd, orig in zip((1, 2), saved):
            os.dup2(orig, fd)
            os.close(orig)


@contextlib.contextmanager
def quiet() -> Iterator[list[str]]:
    """Silence torch's prints, log records and warnings for one export (log levels are restored); yields a list
    that receives the TracerWarnings, one line each."""
    import torch

    notes: list[str] = []
    levels = {name: logging.getLogger(name).level for name in _NOISY_LOGGERS}
    for name in _NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        with tempfile.TemporaryFile(mode="w+") as sink, _fds_to(sink), contextlib.redirect_stdout(sink), \
                contextlib.redirect_stderr(sink), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                yield notes
            finally:
                for w in caught:
                    if issubclass(w.category, torch.jit.TracerWarning):
                        note = f"TracerWarning at {Path(w.filename).name}:{w.lineno}: {str(w.message).splitlines()[0]}"
                        if note not in notes:
                            notes.append(note)
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def export_dynamo(
    module, example: Example, *, axes: Mapping[str, Mapping[int, str]], opset: int | None,
    output_names: Sequence[str] | None,
) -> ir.Model:
    """The dynamo exporter; dynamic dims keep their names (torch turns named dims into ``Dim.DYNAMIC``)."""
    import torch

    n = len(example.args)
    shapes: tuple | dict
    if example.kwargs:
        # With keyword arguments torch.export matches dynamic_shapes to forward's parameter names.
        shapes = {**dict(zip(_params(module, n), (axes.get(name) for name in example.names[:n]))),
                  **{k: axes.get(k) for k in example.kwargs}}
    else:
        shapes = tuple(axes.get(name) for name in example.names)
    program = torch.onnx.export(
        module, example.args, None, kwargs=example.kwargs or None, dynamo=True, verbose=False,
        input_names=list(example.names), output_names=list(output_names) if output_names else None,
        opset_version=opset, dynamic_shapes=shapes if axes else None, external_data=False,
    )
    return separate_passthrough_outputs(program.model)


def separate_passthrough_outputs(model: ir.Model) -> ir.Model:
    """Make every graph output a value of its own, named apart from the inputs.

    A module that returns an input unchanged (``return x`` on some path) makes the dynamo exporter emit
    ``x = Identity(x_orig)``, and naming the input ``x`` then gives two values called ``x``, which ONNX Runtime
    refuses ("Duplicate definition of name"). Case 1: an output that *is* an input or an initializer gets its own
    ``Identity``. Case 2: an output named like an input is renamed. Either way the output is called ``<name>_out``.
    """
    graph = model.graph
    input_names = {v.name for v in graph.inputs} | set(graph.initializers)
    for i, value in enumerate(list(graph.outputs)):
        if value.is_graph_input() or value.is_initializer():  # Case 1
            node = ir.Node("", "Identity", [value], num_outputs=1)
            out = node.outputs[0]
            out.name, out.dtype, out.shape = f"{value.name}_out", value.dtype, value.shape
            graph.append(node)
            graph.outputs[i] = out
        elif value.name in input_names:  # Case 2
            value.name = f"{value.name}_out"
    return model


def _params(module, n: int) -> list[str]:
    import inspect

    return list(inspect.signature(module.forward).parameters)[:n]


def export_torchscript(
    module, example: Example, *, axes: Mapping[str, Mapping[int, str]], opset: int | None,
    output_names: Sequence[str] | None, workdir: Path,
) -> ir.Model:
    """The TorchScript exporter at ``opset`` (17 by default). It writes ``workdir/model.onnx`` (and external data
    beside it when over 2 GB), loaded back memory-mapped: keep ``workdir`` until the model is saved."""
    import torch

    from .. import ir as bir

    path = Path(workdir) / "model.onnx"
    torch.onnx.export(
        module, example.args, str(path), kwargs=example.kwargs or None, dynamo=False,
        input_names=list(example.names), output_names=list(output_names) if output_names else None,
        opset_version=opset or TORCHSCRIPT_DEFAULT_OPSET, dynamic_axes={k: dict(v) for k, v in axes.items()} or None,
    )
    model = bir.load(path)
    model.meta.pop("bushu.path", None)  # a temporary file, not the user's input
    return model
