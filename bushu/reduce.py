"""``bushu.reduce``: shrink a model to the smallest subgraph that still shows a mismatch between two engines.

Like Polygraphy's ``debug reduce``, but starting where the mismatch starts: both engines run the model with its
intermediate tensors exposed (:mod:`bushu.compare.layerwise`), the first divergent node is found, and the subgraph
from that node's inputs to its outputs is cut out (:func:`bushu.edit.extract`) and fed with the reference engine's
values there. When that alone does not mismatch (the error needs more context: a fusion across several nodes),
the cut moves one producer further up each step until it does. The reduced model and the inputs that reproduce
the mismatch are written side by side.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import onnx_ir as ir

from . import engines as _engines
from . import ir as bir
from .compare import layerwise
from .compare.metrics import Tolerance, diff
from .edit import extract
from .errors import BushuError
from .passes.verify import make_feeds
from .results import Result
from .run import save_npz

MAX_STEPS = 32
DEFAULT_TOL = Tolerance()  # bushu compare's defaults: the mismatch a user sees there is the one reduced here


@dataclasses.dataclass(frozen=True)
class ReduceResult(Result):
    """Truthy when a reduced model that reproduces the mismatch was written."""

    kind = "reduce"
    model: str
    engines: tuple[str, str]
    first_divergence: str | None
    nodes_before: int
    nodes_after: int | None
    mismatch: str | None  # the reduced model's failing output, with its metrics
    output: str | None
    inputs: str | None

    def __bool__(self) -> bool:
        return self.output is not None

    def __str__(self) -> str:
        a, b = self.engines
        if self.first_divergence is None:
            return f"{self.model}: {a} and {b} agree within tolerance: nothing to reduce"
        if self.output is None:
            return f"{self.model}: {self.first_divergence}, but no subgraph reproduced it alone"
        return (f"{self.model}: {self.first_divergence}; reduced {self.nodes_before} -> {self.nodes_after} nodes, "
                f"written to {self.output} with inputs {self.inputs} ({self.mismatch})")


def _run(model: ir.Model, engine: str, feed) -> dict[str, np.ndarray]:
    sess = _engines.open_session(model, engine, threads=2)
    names = {s.name for s in sess.inputs}
    return sess.run({k: v for k, v in feed.items() if k in names})


def _mismatch(got: dict, ref: dict, tol: Tolerance) -> str | None:
    for k, v in ref.items():
        d = diff(got[k], v, name=k, tol=tol)
        if not d:
            return str(d)
    return None


def _widen(model: ir.Model, boundary: set[str], known: set[str]) -> set[str]:
    """Move each boundary tensor that has a producer one step up: to that producer's inputs that were compared."""
    producers = {o.name: n for n in model.graph for o in n.outputs}
    wider = set()
    for name in boundary:
        node = producers.get(name)
        ups = [v.name for v in node.inputs if v is not None and v.name in known] if node is not None else []
        wider.update(ups or [name])
    return wider


def reduce(
    model: ir.Model | str | os.PathLike,
    output: str | os.PathLike,
    *,
    engines: tuple[str, str] = ("ort", "openvino"),
    inputs=None,
    tol: Tolerance = DEFAULT_TOL,
    force: bool = False,
    **synth,
) -> tuple[ir.Model | None, ReduceResult]:
    """Find the first node where ``engines[1]`` departs from ``engines[0]`` (the reference) and write the smallest
    subgraph around it that still departs, with the inputs that show it (``<output>.inputs.npz``)."""
    if len(engines) != 2:
        raise BushuError("--engines takes two engines: the reference first, e.g. ort,openvino")
    src = bir.load(model) if isinstance(model, (str, os.PathLike)) else model
    name = str(src.meta.get("bushu.path") or src.graph.name or "model")
    output = Path(output)
    if output.exists() and not force:
        raise BushuError(f"{output} exists: choose another path or pass --force")
    feed = make_feeds(src, inputs, samples=1, **synth)[0]
    exposed = layerwise.expose(src)
    ref, got = _run(exposed.model, engines[0], feed), _run(exposed.model, engines[1], feed)
    known = {n for n in exposed.tensors if n in ref and n in got}
    passed = {}
    for n in known:
        scale = float(np.max(np.abs(ref[n]), initial=0.0)) if ref[n].dtype.kind == "f" else 1.0
        passed[n] = bool(diff(got[n], ref[n], name=n, tol=tol.scaled(scale)))
    div = layerwise.first_divergence(exposed.model.graph, passed)
    n_before = len(src.graph)
    if div is None:
        return None, ReduceResult(name, tuple(engines), None, n_before, None, None, None, None)
    values = {**feed, **ref}
    graph_inputs = {v.name for v in src.graph.inputs}
    boundary = set(div.inputs) or graph_inputs
    for _ in range(MAX_STEPS):
        part = src.clone()
        extract(part, sorted(boundary - graph_inputs), list(div.outputs))
        part_feed = {v.name: np.asarray(values[v.name]) for v in part.graph.inputs}
        why = _mismatch(_run(part, engines[1], part_feed), _run(part, engines[0], part_feed), tol)
        if why:
            bir.save(part, output, force=force)
            npz = save_npz(output.with_suffix(".inputs.npz"), part_feed)
            return part, ReduceResult(name, tuple(engines), str(div), n_before, len(part.graph), why, str(output), npz)
        wider = _widen(src, boundary, known)
        if wider == boundary:
            break
        boundary = wider
    return None, ReduceResult(name, tuple(engines), str(div), n_before, None, None, None, None)
