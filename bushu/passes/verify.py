"""Check a rewritten model against the original on ONNX Runtime, and name where a bad rewrite diverges.

:class:`Verifier` runs the original once per feed and keeps its outputs; :meth:`Verifier.check` runs a candidate on
the same feeds and compares every graph output (:func:`bushu.compare.metrics.diff`). The runs use ONNX Runtime
with its own graph optimizations off, so what is compared is the graph as written, not ORT's rewrite of it.
:func:`first_divergent_node` exposes intermediate tensors on both sides (:mod:`bushu.compare.layerwise`) to name the
node where a rejected rewrite starts to differ. :func:`check_model` and :func:`check_written` run ``onnx.checker``'s
full check on the input and the written output.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import tempfile
from collections.abc import Mapping, Sequence
from concurrent.futures import Executor, Future

import numpy as np
import onnx
import onnx_ir as ir

from .. import engines
from .. import ir as bir
from ..compare import layerwise
from ..compare.metrics import Tolerance, diff
from ..engines.base import EngineOptions
from ..errors import BushuError, first_line
from ..inputs import Feed, check_feed, load_feeds, synthesize_many

# Rewrites in FP32 reorder sums and fold constants in float64 before rounding: ~1e-6 relative. 1e-4 leaves room
# for deep nets while a pass that changes a weight by 0.1 % still fails.
DEFAULT_TOL = Tolerance(atol=1e-4, rtol=1e-4, min_cosine=0.9999)
_RUN_OPTIONS = EngineOptions(opt_level="disable", threads=2)
# The reference run in the background takes one core; the passes (Python) have the other.
PREFETCH_THREADS = 1


@dataclasses.dataclass(frozen=True)
class Failure:
    """Why a candidate was refused: the output that differs (with its metrics), or the engine error."""

    reason: str
    output: str | None = None


def zoo_defaults(path: str | os.PathLike | None) -> tuple[dict, dict]:
    """(shapes, values) the zoo records for the model at ``path`` (e.g. silero VAD's ``sr``), else empty."""
    if path is None:
        return {}, {}
    from .. import zoo

    name = _zoo_files().get(os.path.realpath(path))
    if name is None:
        return {}, {}
    m = zoo.MODELS[name]
    return dict(m.shapes), dict(m.values)


@functools.lru_cache(maxsize=1)
def _zoo_files() -> dict[str, str]:
    """Real path of each installed zoo model -> its name (looked up once per process: 4 ms per optimize call)."""
    from .. import zoo

    found = {}
    for name in zoo.MODELS:
        try:
            found.setdefault(os.path.realpath(zoo.path(name)), name)
        except BushuError:
            continue
    return found


def make_feeds(model: ir.Model, inputs=None, samples: int = 3, **synth) -> list[Feed]:
    """The feeds to verify with: ``inputs`` (a path, one feed or a list of feeds), else ``samples`` synthesized
    ones, with the zoo's extra shapes/values for a zoo model unless ``synth`` overrides them."""
    specs, _ = engines.model_specs(model)
    if inputs is not None:
        if isinstance(inputs, (str, os.PathLike)):
            feeds = load_feeds(inputs, specs)
        elif isinstance(inputs, Mapping):
            feeds = [dict(inputs)]
        else:
            feeds = [dict(f) for f in inputs]
        for f in feeds:
            check_feed(f, specs, source="inputs")
        return feeds
    shapes, values = zoo_defaults(model.meta.get("bushu.path"))
    synth = dict(synth)
    synth["shapes"] = {**shapes, **(synth.get("shapes") or {})}
    synth["values"] = {**values, **(synth.get("values") or {})}
    return synthesize_many(specs, samples, **synth)


def run_ort(model: ir.Model | str | bytes, feeds: Sequence[Feed], threads: int = 2) -> list[dict[str, np.ndarray]]:
    """Outputs of ``model`` (in memory, a serialized model, or a file ONNX Runtime reads itself) on each feed, ORT
    optimizations off."""
    sess = engines.open_session(model, "ort", dataclasses.replace(_RUN_OPTIONS, threads=threads))
    names = {s.name for s in sess.inputs}
    return [sess.run({k: v for k, v in f.items() if k in names}) for f in feeds]


class Verifier:
    """The original's outputs on ``feeds`` (computed at the first :meth:`check`: a run that changes nothing
    needs no reference), and the check of a candidate against them. Models may be given as file paths."""

    def __init__(self, original: ir.Model | str, feeds: Sequence[Feed], tol: Tolerance = DEFAULT_TOL):
        self.original = original
        self.feeds = list(feeds)
        self.tol = tol
        self._reference: list[dict[str, np.ndarray]] | None = None
        self._pending: Future | None = None

    def prefetch(self, pool: Executor) -> None:
        """Start computing the reference in ``pool``: ONNX Runtime releases the GIL, so the original runs on the
        other core while the passes rewrite the model (once the first one changed it: then a check will come)."""
        if self._reference is None and self._pending is None:
            self._pending = pool.submit(run_ort, self.original, self.feeds, PREFETCH_THREADS)

    @property
    def reference(self) -> list[dict[str, np.ndarray]]:
        if self._reference is None:
            pending, self._pending = self._pending, None
            self._reference = pending.result() if pending is not None else run_ort(self.original, self.feeds)
        return self._reference

    def check(self, candidate: ir.Model | str | bytes) -> Failure | None:
        """None when ``candidate`` runs and every output of every feed is within tolerance of the original."""
        reference = self.reference
        try:
            outs = run_ort(candidate, self.feeds)
        except BushuError as e:
            return Failure(str(e))
        for ref, got in zip(reference, outs):
            for name, expected in ref.items():
                if name not in got:
                    return Failure(f"output '{name}' is gone", name)
                d = diff(got[name], expected, name=name, tol=self.tol)
                if not d:
                    return Failure(str(d), name)
        return None


def first_divergent_node(before: ir.Model, after: ir.Model, feed: Feed, tol: Tolerance = DEFAULT_TOL) -> str | None:
    """The node of ``after`` where it starts to differ from ``before`` on ``feed``, as text, or None when the
    intermediate tensors can't tell (a difference inside a subgraph, or ORT can't run the exposed copy)."""
    try:
        a, b = layerwise.expose(after), layerwise.expose(before)
        common = [n for n in a.tensors if n in set(b.tensors)]
        got, ref = run_ort(a.model, [feed])[0], run_ort(b.model, [feed])[0]
    except BushuError:
        return None
    passed = {}
    for name in common:
        expected = ref[name]
        if expected is None or got[name] is None:  # ORT gives None for an output it can't produce (a bad graph)
            continue
        scale = float(np.max(np.abs(expected), initial=0.0)) if expected.dtype.kind == "f" else 1.0
        passed[name] = bool(diff(got[name], expected, name=name, tol=tol.scaled(scale)))
    found = layerwise.first_divergence(a.model.graph, passed)
    return None if found is None else str(found)


def check_model(model: ir.Model | str | os.PathLike) -> str | None:
    """``onnx.checker`` full check (types and shapes too) of a model or of a file (read by the checker itself);
    the first line of its complaint, or None. A model in memory that fits one protobuf is checked without its large
    weights' data (:func:`check_written`), whose sizes :func:`bushu.ir.to_chunks` checks against their types and
    shapes instead: the checker would parse a copy of them (0.05-0.1 s for 45 MB, holding the GIL)."""
    if not isinstance(model, (str, os.PathLike)) and bir.fits_one_proto(model):
        try:
            _, proto, weights = bir.to_chunks(model, STRIP_BYTES)
        except BushuError as e:
            return first_line(e)
        except Exception:  # noqa: BLE001, S110 -- a graph onnx-ir can't serialize: the checker's own words, below
            pass
        else:
            return check_written(proto, weights)
    try:
        if isinstance(model, (str, os.PathLike)):
            onnx.checker.check_model(os.fspath(model), full_check=True)
        elif bir.fits_one_proto(model):
            onnx.checker.check_model(bir.to_proto(model), full_check=True)
        else:  # the checker reads a model over 2 GB only from a path
            with tempfile.TemporaryDirectory(prefix="bushu-check-") as d:
                path = bir.save(model, os.path.join(d, "model.onnx"), external_data=True, force=True)
                onnx.checker.check_model(str(path), full_check=True)
    except Exception as e:  # the checker raises ValidationError, InferenceError or others by version
        return first_line(e)
    return None


STRIP_BYTES = 1024  # initializers above this size are checked by type and shape, not re-read (check_written)


def check_written(proto: onnx.ModelProto, weights: Mapping[str, tuple[int, Sequence[int]]]) -> str | None:
    """:func:`check_model` of a model written from ``proto`` by :func:`bushu.ir.to_chunks`: the main graph's
    initializers over ``STRIP_BYTES`` are not in ``proto`` (they went to the file from their arrays' memory);
    ``weights`` gives each one's ONNX type and dims. They are declared as graph inputs of that type and shape
    (``proto`` is consumed), so the full check (graph, types, shapes, opsets) runs without the checker parsing the
    weights (0.1 s for 45 MB). What that leaves unchecked, that a tensor's bytes fit its shape, holds by
    construction: onnx-ir writes a tensor from an array of that shape, or copies the input's tensor, which the
    input's check read."""
    declared = {i.name for i in proto.graph.input}
    proto.graph.input.extend(onnx.helper.make_tensor_value_info(name, dtype, dims)
                             for name, (dtype, dims) in weights.items() if name not in declared)
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as e:  # noqa: BLE001 -- as in check_model
        return first_line(e)
    return None
