"""``bushu.compare``: a candidate against a reference, output by output and optionally tensor by tensor.

Three modes, one rule: the same feeds go to both sides, and ``b``/the second engine/the model is the *candidate*
judged against the *reference* (``a``/the first engine/the golden outputs):

- two models on one engine: ``compare(a, b, engines=("ort",))`` (with two engines, ``a`` runs on the first and
  ``b`` on the second);
- one model on two engines: ``compare(a, engines=("ort", "openvino"))``;
- one model against golden outputs: ``compare(a, reference="outputs.npz")`` (as ``bushu run --save-outputs``
  writes them; use the same inputs or synthesis options as that run).

Memory stays flat in the number of samples: each feed is run, diffed and dropped before the next one.

The verdict comes from the models as given. ``layerwise`` runs extra copies with every intermediate exposed as an
output; exposing a tensor keeps an engine from fusing it away, so the layer-wise numbers of the final outputs can
differ slightly from the plain run's.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx_ir as ir

from .. import engines as _engines
from ..engines.base import EngineOptions, TensorSpec, model_specs
from ..errors import BushuError
from ..inputs import Feed, check_feed, iter_feeds, synthesize
from ..progress import progress
from ..run import model_name, with_zoo_defaults
from . import layerwise as lw
from .metrics import OutputDiff, Tolerance, diff, merge
from .result import CompareResult, LayerwiseResult, TensorDiff
from .signature import check_signatures, golden_specs, spec_mismatches


@dataclasses.dataclass
class _Side:
    """One side of a comparison: a model on an engine, or fixed golden outputs (``model is None``)."""

    label: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    model: ir.Model | None = None
    engine: str = ""
    golden: Mapping[str, np.ndarray] | None = None
    session: object = None

    def open(self, options: EngineOptions) -> None:
        if self.model is not None:
            self.session = _engines.open_session(self.model, self.engine, options)

    def run(self, feed: Feed) -> dict[str, np.ndarray]:
        return dict(self.golden) if self.golden is not None else self.session.run(feed)


def _load(model) -> ir.Model:
    from .. import ir as bir

    return bir.load(model) if isinstance(model, (str, os.PathLike)) else model


def _model_side(model: ir.Model, engine: str) -> _Side:
    ins, outs = model_specs(model)
    return _Side(f"{model_name(model)} on {_engines.get(engine).name}", ins, outs, model=model, engine=engine)


def _golden_side(reference) -> _Side:
    if isinstance(reference, Mapping):
        arrays, label = {k: np.asarray(v) for k, v in reference.items()}, "golden outputs"
    else:
        path = Path(reference)
        if not path.is_file() or path.suffix != ".npz":
            raise BushuError(f"--reference {path}: need an existing .npz of outputs, as bushu run --save-outputs writes")
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except (OSError, ValueError) as e:
            raise BushuError(f"could not read golden outputs from {path}: {e}") from None
        label = str(path)
    return _Side(label, [], golden_specs(arrays), golden=arrays)


def _sides(a: ir.Model, b: ir.Model | None, engines: Sequence[str], reference) -> tuple[_Side, _Side]:
    if not 1 <= len(engines) <= 2:
        raise BushuError(f"give one or two engines, not {len(engines)}: e.g. --engines ort,openvino")
    if reference is not None:
        if b is not None or len(engines) != 1:
            raise BushuError("--reference compares one model on one engine with saved outputs: drop the second model "
                             "or engine")
        ref, cand = _golden_side(reference), _model_side(a, engines[0])
        problems = spec_mismatches("output", ref.outputs, cand.outputs)
        if problems:
            raise BushuError(f"the golden outputs don't match the model ({len(problems)} problem(s)): "
                             + "; ".join(problems) + ": were they saved from this model?")
        return ref, cand
    if b is None and len(engines) == 1:
        raise BushuError("nothing to compare with: give a second model, two engines (--engines ort,openvino) or "
                         "golden outputs (--reference outputs.npz)")
    ref, cand = _model_side(a, engines[0]), _model_side(b if b is not None else a, engines[-1])
    if b is not None:
        check_signatures(ref.inputs, ref.outputs, cand.inputs, cand.outputs)
    return ref, cand


def _feeds(specs: list[TensorSpec], inputs, samples: int, synth: dict) -> Iterator[Feed]:
    if inputs is not None:
        source = str(inputs) if isinstance(inputs, (str, os.PathLike)) else "inputs"
        for feed in iter_feeds(inputs, specs):
            check_feed(feed, specs, source=source)
            yield feed
        return
    seed = synth.pop("seed", 0)
    for i in range(samples):
        yield synthesize(specs, seed=seed + i, **synth)


class _Layerwise:
    """The exposed copies of both sides and the tensors they share; diffs one feed at a time."""

    def __init__(self, ref: _Side, cand: _Side, options: EngineOptions):
        if ref.model is None:
            raise BushuError("--layerwise needs two models or two engines: golden outputs hold no intermediate tensors")
        self.cand = lw.expose(cand.model)
        self.ref = self.cand if cand.model is ref.model else lw.expose(ref.model)
        cand_types = {v.name: v.dtype for v in self.cand.model.graph.outputs}
        ref_types = {v.name: v.dtype for v in self.ref.model.graph.outputs}
        self.names = [n for n in self.cand.tensors if n in ref_types and ref_types[n] == cand_types[n]]
        self.skipped = list(dict.fromkeys(self.cand.skipped + self.ref.skipped))
        if len(self.names) < len(self.cand.tensors):
            lone = len(self.cand.tensors) - len(self.names)
            self.skipped.append(f"{lone} candidate tensor(s) have no same-named, same-typed tensor in the reference")
        self.ref_sess = _engines.open_session(self.ref.model, ref.engine, options)
        self.cand_sess = _engines.open_session(self.cand.model, cand.engine, options)
        self.diffs: dict[str, list[OutputDiff]] = {n: [] for n in self.names}

    def add(self, feed: Feed, tol: Tolerance) -> None:
        r = self.ref_sess.run(feed, self.names)
        c = self.cand_sess.run(feed, self.names)
        for n in self.names:
            rn = r[n]
            scale = float(np.max(np.abs(rn), initial=0.0)) if rn.dtype.kind in "fiu" and rn.size else 1.0
            self.diffs[n].append(diff(c[n], rn, name=n, tol=tol.scaled(scale if np.isfinite(scale) else 1.0)))

    def result(self) -> LayerwiseResult:
        merged = {n: merge(d) for n, d in self.diffs.items() if d}
        graph = self.cand.model.graph
        producers = {v.name: node for node in graph for v in node.outputs if v.name}
        tensors = tuple(TensorDiff(producers[n].name or n, producers[n].op_type, merged[n]) for n in self.names
                        if n in merged)
        found = lw.divergences(graph, {n: d.passed for n, d in merged.items()})
        if self.ref is not self.cand:  # two models: say when a divergence is explained by different weights
            nodes = {node.name: node for node in graph}
            found = [dataclasses.replace(d, changed_weights=lw.changed_weights(nodes[d.node], self.ref.model.graph, graph))
                     if d.node in nodes else d for d in found]
        return LayerwiseResult(tensors, found[0] if found else None, tuple(found), tuple(self.skipped))


def compare(
    a: ir.Model | str | os.PathLike,
    b: ir.Model | str | os.PathLike | None = None,
    *,
    engines: Sequence[str] = ("ort",),
    reference: str | os.PathLike | Mapping[str, np.ndarray] | None = None,
    inputs=None,
    samples: int = 1,
    tol: Tolerance = Tolerance(),
    layerwise: bool = False,
    options: EngineOptions | None = None,
    show_progress: bool = True,
    **synth,
) -> CompareResult:
    """Compare a candidate with a reference (see the module docstring for the modes); truthy when every output
    passed ``tol``.

    ``inputs``: a .npy/.npz path, a folder, one feed (a mapping) or an iterable of feeds; ``None`` synthesizes
    ``samples`` feeds (``synth`` keywords go to :func:`bushu.inputs.synthesize`; sample ``i`` uses ``seed + i``).
    ``layerwise=True`` also compares every shared intermediate tensor and names the first divergent node
    (:mod:`bushu.compare.layerwise`); intermediates are judged with ``tol.scaled(max |reference tensor|)``.
    Signature mismatches raise one :class:`~bushu.errors.BushuError` listing all of them, before anything runs.
    """
    if samples < 1:
        raise BushuError(f"--samples must be at least 1, got {samples}")
    engines = tuple(engines)
    ma = _load(a)
    mb = _load(b) if b is not None else None
    ref, cand = _sides(ma, mb, engines, reference)
    if ref.golden is not None and inputs is None and samples != 1:
        raise BushuError("golden outputs hold one sample: use --samples 1 (and the inputs of the run that saved them)")
    options = options or EngineOptions()
    synth = with_zoo_defaults(ma, synth)  # silero VAD's sr and state, when a zoo model's file is compared
    # engines that fix what they compile (ncnn, OpenVINO: silero's sr, and its shapes when bushu synthesizes the
    # feeds) get the values and shapes the feeds will have
    fixed = {k: v for k, v in (synth.get("shapes") or {}).items() if isinstance(v, tuple)} if inputs is None else {}
    options = dataclasses.replace(options, values={**(synth.get("values") or {}), **options.values},
                                  shapes={**fixed, **options.shapes})
    ref.open(options)
    cand.open(options)
    deep = _Layerwise(ref, cand, options) if layerwise else None
    specs = cand.inputs
    per_output: dict[str, list[OutputDiff]] = {o.name: [] for o in ref.outputs}
    count = 0
    total = samples if inputs is None else None
    for feed in progress(_feeds(specs, inputs, samples, dict(synth)), total=total, desc="compare",
                         enabled=show_progress):
        count += 1
        if ref.golden is not None and count > 1:
            raise BushuError("golden outputs hold one sample but the inputs hold more: give the one feed they came from")
        r, c = ref.run(feed), cand.run(feed)
        for name in per_output:
            per_output[name].append(diff(c[name], r[name], name=name, tol=tol))
        if deep is not None:
            deep.add(feed, tol)
    if count == 0:
        raise BushuError(f"no feeds in {inputs}: give .npz/.npy files")
    return CompareResult(
        reference=ref.label,
        candidate=cand.label,
        samples=count,
        tolerance=tol,
        outputs=tuple(merge(d) for d in per_output.values()),
        layerwise=deep.result() if deep is not None else None,
    )
