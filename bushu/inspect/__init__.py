"""``bushu.inspect``: what a model is, what each node costs, and what is wrong with it.

``inspect(model_or_path, shapes=None)`` returns an :class:`InspectResult`: signature, producer, opsets, node
counts, op-type histogram, parameters per dtype, per-node and total FLOPs and bytes (after binding ``shapes`` and
running shape inference on a copy), and problems (unused initializers/inputs, dead nodes, ops the installed
engines can't run). ``node_costs(model, shapes=None)`` is the per-node part alone (the profiler joins it with
measured times by node name). Formulas: :mod:`bushu.inspect.cost`; control flow: :mod:`bushu.inspect.walk`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import onnx
import onnx_ir as ir

from .cost import UnknownCost
from .problems import Problem, dead_nodes, unused_values
from .result import InspectResult, NodeCost, ParamStat
from .shapes import Bindings, bind_and_infer
from .summary import node_counts, parameters, signature
from .support import CHECKS, engine_support
from .walk import costs_of_inferred, node_costs

__all__ = ["inspect", "node_costs", "InspectResult", "NodeCost", "ParamStat", "Problem", "UnknownCost"]


def _as_model(model: ir.Model | onnx.ModelProto | str | os.PathLike) -> ir.Model:
    from .. import ir as bir

    if isinstance(model, (str, os.PathLike)):
        return bir.load(model)
    if isinstance(model, onnx.ModelProto):
        return ir.serde.deserialize_model(model)
    return model


def inspect(
    model_or_path: ir.Model | onnx.ModelProto | str | os.PathLike,
    shapes: Bindings | None = None,
    *,
    engines: Sequence[str] | None = None,
) -> InspectResult:
    """Inspect a model (a path, an ``ir.Model`` or a ``ModelProto``; never modified).

    ``shapes`` binds dims before shape inference: ``{"x": (1, 3, 48, 320)}`` for a whole input, ``{"batch": 8}``
    for a symbolic dim (a bad binding raises :class:`~bushu.errors.BushuError`). Dims left unbound leave the
    costs that depend on them unknown (listed in ``result.unknown``, never counted as zero). ``engines`` lists the
    engines whose op support is checked (default: ``ort`` and ``openvino``; an engine not installed is reported
    as such; ``()`` skips the check).
    """
    from ..run import model_name

    model = _as_model(model_or_path)
    inferred, error = bind_and_infer(model, shapes)
    costs = costs_of_inferred(inferred)
    top = [c for c in costs if not c.graph]
    # a file just loaded is handed to the engines as is, sparing a serialization
    source = str(model_or_path) if isinstance(model_or_path, (str, os.PathLike)) else model
    status, engine_problems = engine_support(source, inferred, CHECKS if engines is None else engines)
    problems = unused_values(model) + dead_nodes(model) + engine_problems
    if error:
        problems.append(Problem("shape-inference", "model", error))
    ins, outs = signature(model)
    names = {t.name for t in ins}
    open_inputs = tuple(t for t in signature(inferred)[0] if t.name in names and not t.is_static)
    main, in_bodies, hist = node_counts(model)
    return InspectResult(
        model=model_name(model_or_path if isinstance(model_or_path, (str, os.PathLike)) else model),
        producer=" ".join(x for x in (model.producer_name, model.producer_version) if x),
        ir_version=model.ir_version,
        opsets=dict(model.opset_imports),
        inputs=ins,
        outputs=outs,
        shapes=dict(shapes or {}),
        unbound=open_inputs,
        node_count=main,
        subgraph_node_count=in_bodies,
        op_types=hist,
        parameters=parameters(model),
        total_flops=sum(c.flops or 0 for c in top),
        total_bytes=sum(c.bytes or 0 for c in top),
        nodes=tuple(costs),
        unknown=tuple(c for c in costs if not c.known),
        shape_inference_error=error,
        engines=status,
        problems=tuple(problems),
    )

