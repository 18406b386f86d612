"""``bushu.reduce``: shrink a mismatch to the smallest subgraph that still shows it.

Two ways to get a mismatch, one procedure (like Polygraphy's ``debug reduce``, but starting where it starts):

- one model on two engines (``engines=("ort", "openvino")``): the second engine is judged against the first;
- two models on one engine (``candidate=B``, e.g. an original and its optimized or quantized version): ``B`` is
  judged against ``model``; with two engines, ``model`` runs on the first and ``B`` on the second.

Both sides run with their intermediate tensors exposed (:mod:`bushu.compare.layerwise`); tensors are matched by
name (two models must keep their tensor names — a rewrite that renames everything can't be mapped, and is refused
with a hint). The first divergent node is found, and the subgraph from that node's compared inputs to its outputs
is cut out of each model (:func:`bushu.edit.extract`) and fed with the reference's values there. When that alone
does not mismatch (the error needs more context: a fusion across several nodes), the cut moves one producer
further up each step until it does. The reduced model(s) and the inputs that reproduce the mismatch are written
side by side: ``<output>``, for two models also ``<output stem>.candidate.onnx``, and ``<output stem>.inputs.npz``.

Exposing every tensor can hide an engine's fault: the engine no longer fuses across tensors that are graph outputs,
and the fault was in the fused kernel (OpenVINO 2026.4's int8 after a Concat). When the exposed runs agree but the
models' own outputs don't, the first divergence is found by bisection over prefixes of the graph, each run as it is
(:func:`_prefix_divergence`); the widening above then finds the context the fault needs.
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
from .compare.result import Divergence
from .compare.signature import check_signatures
from .edit import extract
from .errors import BushuError
from .passes.verify import make_feeds
from .results import Result
from .run import save_npz
from .search import first_true

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
    candidate: str | None = None  # the second model, when two were given
    candidate_output: str | None = None  # its reduced part
    matched: str | None = None  # how many of the candidate's tensors were found in the reference by name
    by_prefix: bool = False  # exposing the tensors hid the mismatch: located by bisecting over prefixes

    def __bool__(self) -> bool:
        return self.output is not None

    def _sides(self) -> str:
        a, b = self.engines
        if self.candidate is None:
            return f"{a} and {b}"
        return f"{self.model} on {a} and {self.candidate} on {b}"

    def __str__(self) -> str:
        if self.first_divergence is None:
            return f"{self._sides()} agree within tolerance: nothing to reduce"
        if self.output is None:
            return f"{self._sides()}: {self.first_divergence}, but no subgraph reproduced it alone"
        written = self.output + (f" and {self.candidate_output}" if self.candidate_output else "")
        return (f"{self._sides()}: {self.first_divergence}; reduced {self.nodes_before} -> {self.nodes_after} nodes, "
                f"written to {written} with inputs {self.inputs} ({self.mismatch})")

    def render(self) -> str:
        how = ("\n  located by bisecting over prefixes of the graph: with every tensor exposed, the engines agree "
               "(the engine fuses across them, and the fault is in the fused kernel)") if self.by_prefix else ""
        return str(self) + how + (f"\n  tensors matched by name: {self.matched}" if self.matched else "")


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


def _within(got: np.ndarray, ref: np.ndarray, name: str, tol: Tolerance) -> bool:
    """``got`` within tolerance of ``ref``, the absolute part scaled to the tensor's magnitude (an intermediate
    tensor is compared as layerwise compare does)."""
    scale = float(np.max(np.abs(ref), initial=0.0)) if ref.dtype.kind == "f" else 1.0
    return bool(diff(got, ref, name=name, tol=tol.scaled(scale)))


def _prefix_divergence(src: ir.Model, cand: ir.Model, order: list[str], known: set[str], engines: tuple[str, str],
                       feed, tol: Tolerance) -> Divergence | None:
    """The first divergence when the exposed runs agree but the models as they are don't: exposing every tensor as
    an output keeps an engine from fusing across them, and a fault in a fused kernel disappears (OpenVINO 2026.4's
    int8 FakeQuantize after a Concat). Each candidate cut is a prefix of both models ending at one compared tensor,
    run unexposed on its engine; bisection over the tensors in topological order finds the first prefix out of
    tolerance (a fault upstream stays visible downstream). None when the models' own outputs agree."""
    ref_engine, cand_engine = engines
    full_ref, full_got = _run(src, ref_engine, feed), _run(cand, cand_engine, feed)
    if not _mismatch(full_got, full_ref, tol):
        return None
    cuts = [n for n in order if n in known]

    def wrong(name: str) -> bool:
        a = src.clone()
        extract(a, [], [name])
        b = a if cand is src else cand.clone()
        if b is not a:
            extract(b, [], [name])
        if not a.graph.inputs:  # computed from weights alone
            return False
        return not _within(_run(b, cand_engine, feed)[name], _run(a, ref_engine, feed)[name], name, tol)

    # -1 stands for the inputs (within tolerance), len(cuts) for the outputs (out of it)
    hi = first_true(-1, len(cuts), lambda i: wrong(cuts[i]))
    producers = {o.name: n for n in cand.graph for o in n.outputs}
    bad = (cuts[hi],) if hi < len(cuts) else tuple(k for k in full_ref if not _within(full_got[k], full_ref[k], k,
                                                                                       tol))
    node = producers[bad[0]]
    inputs = tuple(sorted(v.name for v in node.inputs if v is not None and v.name in known))
    return Divergence(node.name or bad[0], node.op_type, bad, inputs)


def _widen(model: ir.Model, boundary: set[str], known: set[str]) -> set[str]:
    """Move each boundary tensor that has a producer one step up: to that producer's inputs that were compared."""
    producers = {o.name: n for n in model.graph for o in n.outputs}
    wider = set()
    for name in boundary:
        node = producers.get(name)
        ups = [v.name for v in node.inputs if v is not None and v.name in known] if node is not None else []
        wider.update(ups or [name])
    return wider


def _load(model) -> ir.Model:
    return bir.load(model) if isinstance(model, (str, os.PathLike)) else model


def _label(model: ir.Model) -> str:
    return str(model.meta.get("bushu.path") or model.graph.name or "model")


def _matched(ref: layerwise.Exposed, cand: layerwise.Exposed, outputs: set[str]) -> tuple[set[str], str]:
    """The candidate's exposed tensors that the reference has under the same name and type; refuses (one line,
    with a hint) when none of the intermediate ones (not in ``outputs``) does: the two models' nodes can't be
    mapped."""
    ref_types = {v.name: v.dtype for v in ref.model.graph.outputs}
    cand_types = {v.name: v.dtype for v in cand.model.graph.outputs}
    common = {n for n in cand.tensors if ref_types.get(n) == cand_types[n]}
    inner = [n for n in cand.tensors if n not in outputs]
    if inner and not any(n in common for n in inner):
        raise BushuError(f"the two models share no intermediate tensor name ({len(inner)} in the candidate, e.g. "
                         f"'{inner[0]}'), so their nodes can't be mapped: reduce two models whose tensors keep their "
                         "names (an original and its optimized/quantized version), or one model on two engines")
    return common, f"{len(common)} of {len(cand.tensors)}"


def reduce(
    model: ir.Model | str | os.PathLike,
    output: str | os.PathLike,
    *,
    candidate: ir.Model | str | os.PathLike | None = None,
    engines: tuple[str, ...] | None = None,
    inputs=None,
    tol: Tolerance = DEFAULT_TOL,
    force: bool = False,
    **synth,
) -> tuple[ir.Model | None, ReduceResult]:
    """Find the first node where the candidate departs from the reference and write the smallest subgraph around
    it that still departs, with the inputs that show it (``<output stem>.inputs.npz``).

    One model: ``engines`` names two engines, the reference first (default ``ort,openvino``). Two models
    (``candidate``): ``model`` is the reference, both run on ``engines[0]`` (default ``ort``), or ``model`` on the
    first engine and ``candidate`` on the second. Returns the reduced candidate-side model (or None)."""
    engines = tuple(engines) if engines else (("ort",) if candidate is not None else ("ort", "openvino"))
    if candidate is None and len(engines) != 2:
        raise BushuError("give two engines (the reference first, e.g. --engines ort,openvino) or a second model")
    if not 1 <= len(engines) <= 2:
        raise BushuError(f"give one or two engines, not {len(engines)}: e.g. --engines ort")
    ref_engine, cand_engine = engines[0], engines[-1]
    src = _load(model)
    cand = _load(candidate) if candidate is not None else src
    output = Path(output)
    cand_output = output.with_name(output.stem + ".candidate.onnx") if candidate is not None else None
    for path in (output, cand_output):
        if path is not None and path.exists() and not force:
            raise BushuError(f"{path} exists: choose another path or pass --force")
    if cand is not src:
        check_signatures(*_engines.model_specs(src), *_engines.model_specs(cand))
    feed = make_feeds(src, inputs, samples=1, **synth)[0]
    exp_ref = layerwise.expose(src)
    exp_cand = layerwise.expose(cand) if cand is not src else exp_ref
    known, matched = (_matched(exp_ref, exp_cand, {v.name for v in cand.graph.outputs}) if cand is not src
                      else (set(exp_ref.tensors), None))
    ref, got = _run(exp_ref.model, ref_engine, feed), _run(exp_cand.model, cand_engine, feed)
    known = {n for n in known if n in ref and n in got}
    passed = {n: _within(got[n], ref[n], n, tol) for n in known}
    div = layerwise.first_divergence(exp_cand.model.graph, passed)
    by_prefix = False
    if div is None:
        div = _prefix_divergence(src, cand, exp_cand.tensors, known, (ref_engine, cand_engine), feed, tol)
        by_prefix = div is not None
    n_before = len(cand.graph)
    names = {"model": _label(src), "engines": (ref_engine, cand_engine),
             "candidate": _label(cand) if cand is not src else None, "matched": matched, "by_prefix": by_prefix}
    if div is None:
        return None, ReduceResult(first_divergence=None, nodes_before=n_before, nodes_after=None, mismatch=None,
                                  output=None, inputs=None, **names)
    if cand is not src:
        nodes = {n.name: n for n in exp_cand.model.graph}
        if div.node in nodes:
            div = dataclasses.replace(div, changed_weights=layerwise.changed_weights(
                nodes[div.node], exp_ref.model.graph, exp_cand.model.graph))
    values = {**feed, **ref}
    graph_inputs = {v.name for v in cand.graph.inputs}
    boundary = set(div.inputs) or graph_inputs
    for _ in range(MAX_STEPS):
        cut = sorted(boundary - graph_inputs)
        part_ref, part_cand = src.clone(), cand.clone()
        extract(part_ref, cut, list(div.outputs))
        if cand is not src:
            extract(part_cand, cut, list(div.outputs))
        else:
            part_cand = part_ref
        part_feed = {v.name: np.asarray(values[v.name])
                     for v in [*part_ref.graph.inputs, *part_cand.graph.inputs] if v.name in values}
        why = _mismatch(_run(part_cand, cand_engine, part_feed), _run(part_ref, ref_engine, part_feed), tol)
        if why:
            bir.save(part_ref, output, force=force)
            if cand_output is not None:
                bir.save(part_cand, cand_output, force=force)
            npz = save_npz(output.with_name(output.stem + ".inputs.npz"), part_feed)
            return part_cand, ReduceResult(
                first_divergence=str(div), nodes_before=n_before, nodes_after=len(part_cand.graph), mismatch=why,
                output=str(output), inputs=npz, candidate_output=str(cand_output) if cand_output else None, **names)
        wider = _widen(cand, boundary, known)
        if wider == boundary:
            break
        boundary = wider
    return None, ReduceResult(first_divergence=str(div), nodes_before=n_before, nodes_after=None, mismatch=None,
                              output=None, inputs=None, **names)
