"""Check an export against the module it came from: ONNX Runtime vs PyTorch, output by output, on the example
inputs and on fresh random inputs of other sizes along the dynamic axes (a trace frozen at the example's size
shows up there). Outputs are matched by position: the module's outputs flattened (tuples, dicts and Hugging Face
``ModelOutput``s alike) in the order the exporters emit them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx_ir as ir

from .. import engines
from ..compare.metrics import Tolerance, diff
from ..engines.base import EngineOptions
from ..errors import BushuError
from ..progress import progress
from .result import VerifyCase
from .signature import Example


def torch_outputs(module, example: Example) -> list[np.ndarray]:
    """The module's outputs on ``example`` as numpy arrays, flattened in export order."""
    import torch
    from torch.utils import _pytree

    with torch.no_grad():
        out = module(*example.args, **example.kwargs)
    leaves = [x for x in _pytree.tree_leaves(out) if isinstance(x, torch.Tensor)]
    return [x.detach().cpu().numpy() for x in leaves]


def _case(session, module, label: str, example: Example, tol: Tolerance) -> VerifyCase:
    feeds = {name: t.detach().cpu().numpy() for name, t in example.tensors().items()}
    shapes = {k: tuple(v.shape) for k, v in feeds.items()}
    # An input the exporter pruned (unused by the graph) is not fed.
    wanted = {s.name for s in session.inputs}
    try:
        expected = torch_outputs(module, example)
    except Exception as e:  # e.g. a sequence longer than the position table: not the export's fault
        return VerifyCase(label, shapes, (), skipped=f"PyTorch itself fails at these sizes ({type(e).__name__}: "
                                                    f"{str(e).splitlines()[0][:160] if str(e) else ''})")
    try:
        got = session.run({k: v for k, v in feeds.items() if k in wanted})
    except BushuError as e:
        return VerifyCase(label, shapes, (), error=str(e))
    names = [s.name for s in session.outputs]
    if len(expected) != len(names):
        return VerifyCase(label, shapes, (),
                          error=f"PyTorch returned {len(expected)} tensors, the ONNX model {len(names)}")
    return VerifyCase(label, shapes, tuple(diff(got[n], e, name=n, tol=tol) for n, e in zip(names, expected)))


def verify(
    model: ir.Model | str, module, cases: Sequence[tuple[str, Example]], *, tol: Tolerance = Tolerance(),
    show_progress: bool = True,
) -> tuple[VerifyCase, ...]:
    """One :class:`VerifyCase` per ``(label, inputs)``; ``model`` is an ``onnx_ir.Model`` or a path."""
    session = engines.open_session(model, "ort", EngineOptions())
    return tuple(_case(session, module, label, ex, tol)
                 for label, ex in progress(cases, total=len(cases), desc="verify", enabled=show_progress))
