"""Layer-wise comparison: expose intermediate tensors as graph outputs, and find where a divergence starts.

What is compared: every tensor of the top-level graph that a node computes from the inputs, under the same name
on both sides. Not compared (and reported in ``skipped``): weights and what is computed from weights alone
(initializers, ``Constant`` outputs and constant sub-expressions — a changed weight shows up at the node that
uses it), tensors inside ``If``/``Loop``/``Scan`` subgraphs (ONNX can't expose them as outputs), and tensors
whose type shape inference could not tell.

The first divergent node is the earliest node, in the candidate's topological order, with an output out of
tolerance while every compared tensor upstream of it — its inputs, or for inputs that are not compared (names the
other side lacks, e.g. inside a fused region) the nearest compared tensors behind them — is within tolerance.
Graph inputs and weights count as within tolerance. With two models, a divergence also lists the weights its node
reads whose values differ between the models (``changed_weights``): a changed weight, not an engine, explains it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np
import onnx_ir as ir

from .result import Divergence

_CONTROL_FLOW = ("If", "Loop", "Scan")


@dataclasses.dataclass
class Exposed:
    """A copy of a model with its intermediate tensors added as outputs."""

    model: ir.Model
    tensors: list[str]  # the exposed tensor names, in topological order
    skipped: list[str]


def constant_values(graph: ir.Graph) -> set[str]:
    """Names of the values computed from weights alone (initializers, Constant outputs, and what only they feed)."""
    const = set(graph.initializers)
    for node in graph:
        if node.op_type == "Constant" or (
            node.inputs and all(v is None or v.name in const for v in node.inputs)
            and not any(a.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS) for a in node.attributes.values())
        ):
            const.update(v.name for v in node.outputs if v.name)
    return const


def expose(model: ir.Model) -> Exposed:
    """A copy of ``model`` (weights shared, not copied) whose computed intermediate tensors are graph outputs too.

    Shape inference runs on the copy to give each tensor a type; tensors it can't type are skipped.
    """
    from onnx_ir.passes.common import ShapeInferencePass

    copy = model.clone()
    copy.graph.sort()
    ShapeInferencePass(strict_mode=False)(copy)
    graph = copy.graph
    const = constant_values(graph)
    present = {v.name for v in graph.outputs} | {v.name for v in graph.inputs}
    names, untyped = [], []
    for node in graph:
        for v in node.outputs:
            if not v.name or v.name in const:
                continue
            if v.name in present:
                if v.is_graph_output():
                    names.append(v.name)
                continue
            if v.dtype is None:
                untyped.append(v.name)
                continue
            graph.outputs.append(v)
            present.add(v.name)
            names.append(v.name)
    skipped = []
    inner = sum(len(list(g)) for g in graph.subgraphs())
    if inner:
        flow = sorted({n.op_type for n in graph if n.op_type in _CONTROL_FLOW})
        skipped.append(f"{inner} node(s) inside {'/'.join(flow) or 'control-flow'} subgraphs not compared")
    if untyped:
        skipped.append(f"{len(untyped)} tensor(s) of unknown type not compared (e.g. {untyped[0]})")
    return Exposed(copy, names, skipped)


def weight_array(graph: ir.Graph, name: str) -> np.ndarray | None:
    """The value of a weight (an initializer or a ``Constant`` output) by name, or ``None``."""
    v = graph.initializers.get(name)
    if v is not None and v.const_value is not None:
        return v.const_value.numpy()
    for node in graph:
        if node.op_type == "Constant" and node.outputs[0].name == name and "value" in node.attributes:
            return node.attributes["value"].as_tensor().numpy()
    return None


def changed_weights(node: ir.Node, ref_graph: ir.Graph, cand_graph: ir.Graph) -> tuple[str, ...]:
    """The weights ``node`` (of ``cand_graph``) reads directly whose values differ from the same-named weights of
    ``ref_graph`` (a weight missing on one side counts as changed)."""
    changed = []
    for v in node.inputs:
        if v is None or not v.name:
            continue
        cand = weight_array(cand_graph, v.name)
        if cand is None:
            continue
        ref = weight_array(ref_graph, v.name)
        if ref is None or ref.shape != cand.shape or not np.array_equal(ref, cand):
            changed.append(v.name)
    return tuple(changed)


def divergences(graph: ir.Graph, passed: Mapping[str, bool]) -> list[Divergence]:
    """Every node where a divergence starts, in topological order (see the module docstring).

    ``passed`` maps each compared tensor name to whether it is within tolerance; other names are not compared.
    """
    frontier: dict[str, frozenset[str]] = {}  # value name -> the compared tensors it depends on, nearest first

    def upstream(v: ir.Value | None) -> frozenset[str]:
        if v is None or not v.name:
            return frozenset()
        if v.name in passed:
            return frozenset([v.name])
        if v.name in frontier:
            return frontier[v.name]
        return frozenset()  # graph inputs, weights, outer-scope values

    found = []
    for node in graph:
        inputs = frozenset().union(*(upstream(v) for v in node.inputs)) if node.inputs else frozenset()
        for v in node.outputs:
            if v.name and v.name not in passed:
                frontier[v.name] = inputs
        bad = tuple(v.name for v in node.outputs if v.name in passed and not passed[v.name])
        if bad and all(passed[n] for n in inputs):
            found.append(Divergence(node.name or bad[0], node.op_type, bad, tuple(sorted(inputs))))
    return found


def first_divergence(graph: ir.Graph, passed: Mapping[str, bool]) -> Divergence | None:
    """The earliest node whose output is out of tolerance while everything it reads is within it, or ``None``."""
    found = divergences(graph, passed)
    return found[0] if found else None
