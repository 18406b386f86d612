"""``bushu.edit``: graph surgery — static or renamed dims, inputs bound to values, opset conversion, subgraph
extraction, renaming.

Each edit that keeps the model's meaning is verified on ONNX Runtime like a pass: fixing dims and converting the
opset must give the same outputs on feeds of the fixed shape; an extracted subgraph must give the values the full
model computes at those tensors (fed with the full model's values at the new inputs); binding an input must give
the outputs the model gives with that input fed the value. Renaming is checked by name.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence

import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass, ShapeInferencePass

from . import engines
from . import ir as bir
from .compare.metrics import Tolerance, diff
from .errors import BushuError
from .passes import check_model
from .passes.verify import DEFAULT_TOL, make_feeds, run_ort
from .results import Result


@dataclasses.dataclass(frozen=True)
class EditResult(Result):
    """Truthy when the output passes onnx.checker and every verified edit matched."""

    kind = "edit"
    model: str
    output: str | None
    edits: tuple[str, ...]
    checks: tuple[str, ...]  # one line per verified edit
    failed: str | None
    checker_error: str | None

    def __bool__(self) -> bool:
        return self.failed is None and self.checker_error is None

    def __str__(self) -> str:
        s = f"{self.model}: {'; '.join(self.edits) or 'no edits'}"
        if self.failed:
            s += f"; FAILED: {self.failed}"
        if self.checker_error:
            s += f"; onnx.checker: {self.checker_error}"
        return s

    def render(self) -> str:
        return "\n".join([str(self), *(f"  verified: {c}" for c in self.checks)]
                         + ([f"  written to {self.output}"] if self.output else []))


def _retype(model: ir.Model) -> None:
    """Forget inner shapes (they may name the old dims) and infer them again."""
    for node in model.graph:
        for v in node.outputs:
            if not v.is_graph_output():
                v.shape = None
    ShapeInferencePass(strict_mode=False)(model)


def set_dims(model: ir.Model, shapes: Mapping[str, object]) -> list[str]:
    """``{input: (1, 3, 224, 224)}`` fixes an input's shape; ``{dim: 8}`` fixes a symbolic dim everywhere;
    ``{dim: "batch"}`` renames it. Returns what was done."""
    done = []
    by_dim = {k: v for k, v in shapes.items() if not isinstance(v, tuple)}
    values = list(model.graph.inputs) + list(model.graph.outputs)
    known_inputs = {v.name for v in model.graph.inputs}
    for name, shape in shapes.items():
        if isinstance(shape, tuple):
            if name not in known_inputs:
                raise BushuError(f"--shape {name}: no such input (inputs: {', '.join(sorted(known_inputs))})")
            v = next(x for x in model.graph.inputs if x.name == name)
            if v.shape is not None and len(v.shape) != len(shape):
                raise BushuError(f"--shape {name} has rank {len(shape)} but the input has rank {len(v.shape)}")
            v.shape = ir.Shape(shape)
            done.append(f"{name} -> {'x'.join(map(str, shape))}")
    found = set()
    for v in values:
        if v.shape is None:
            continue
        dims = []
        for d in v.shape:
            key = d.value if isinstance(d, ir.SymbolicDim) else None
            if key in by_dim:
                found.add(key)
                dims.append(by_dim[key] if isinstance(by_dim[key], int) else ir.SymbolicDim(str(by_dim[key])))
            else:
                dims.append(d)
        v.shape = ir.Shape(dims)
    missing = set(by_dim) - found
    if missing:
        raise BushuError(f"--shape: no input or output has a dim named {', '.join(sorted(missing))}")
    done += [f"dim {k} -> {v}" for k, v in by_dim.items()]
    _retype(model)
    return done


def bind(model: ir.Model, values: Mapping[str, object]) -> list[str]:
    """Replace inputs by initializers: ``{"sr": 16000}`` makes input ``sr`` a constant of its type and shape (a
    number fills a static shape; an array must have the input's shape). The passes then fold what depends on it,
    e.g. an If on ``sr == 16000`` (``inline-constant-if``). Returns what was done."""
    by_name = {v.name: v for v in model.graph.inputs}
    done = []
    for name, value in values.items():
        if name not in by_name:
            raise BushuError(f"--bind {name}: no such input (inputs: {', '.join(sorted(by_name))})")
        v = by_name[name]
        if v.dtype is None or v.shape is None:
            raise BushuError(f"--bind {name}: the input's type or shape is unknown: give it with --shape first")
        array = np.asarray(value)
        if array.ndim == 0 and len(v.shape) > 0:
            dims = tuple(v.shape)
            if not all(isinstance(d, int) for d in dims):
                raise BushuError(f"--bind {name}: its shape {v.shape} has symbolic dims: fix them (--shape, --dim) "
                                 "or bind an array (.npy) of the full shape")
            array = np.full(dims, array)
        typed = array.astype(v.dtype.numpy())
        if typed.dtype.kind in "iub" and not np.array_equal(typed, array):
            raise BushuError(f"--bind {name}={value}: not a value of the input's type {v.dtype}")
        array = typed
        dims = tuple(v.shape)
        if array.ndim != len(dims) or any(isinstance(d, int) and d != n for d, n in zip(dims, array.shape)):
            raise BushuError(f"--bind {name}: a value of shape {array.shape} doesn't fit the input's {v.shape}")
        model.graph.inputs.remove(v)
        v.const_value = ir.tensor(array, name=name)
        v.shape = ir.Shape(array.shape)
        model.graph.register_initializer(v)
        done.append(f"{name} bound to {value if array.ndim == 0 else f'an array {array.shape}'}")
    _retype(model)
    return done


def rename(model: ir.Model, names: Mapping[str, str]) -> list[str]:
    """Rename graph inputs/outputs ``old -> new``."""
    io = {v.name: v for v in [*model.graph.inputs, *model.graph.outputs]}
    taken = set(io) | {o.name for n in model.graph for o in n.outputs} | set(model.graph.initializers)
    for old, new in names.items():
        if old not in io:
            raise BushuError(f"--rename {old}={new}: '{old}' is not an input or output (they are {', '.join(io)})")
        if new in taken and new != old:
            raise BushuError(f"--rename {old}={new}: '{new}' is already a name in the graph")
        io[old].name = new
    return [f"{o} renamed {n}" for o, n in names.items()]


def extract(model: ir.Model, inputs: Sequence[str], outputs: Sequence[str]) -> list[str]:
    """Cut ``model`` in place to the nodes that compute ``outputs`` from ``inputs`` (and from whatever original
    inputs and weights they still need)."""
    ShapeInferencePass(strict_mode=False)(model)
    g = model.graph
    values = {v.name: v for v in g.inputs} | {o.name: o for n in g for o in n.outputs}
    for n in [*inputs, *outputs]:
        if n not in values:
            raise BushuError(f"no tensor named '{n}' in the main graph: see bushu inspect for the names")
    for n in inputs:
        if values[n].dtype is None:
            raise BushuError(f"the type of '{n}' is unknown (shape inference failed there): pick another tensor")
    cut = {}
    for n in inputs:
        old = values[n]
        if old.producer() is None:
            cut[n] = old
            continue
        new = ir.Value(name=None, type=old.type, shape=old.shape)
        ir.convenience.replace_all_uses_with(old, new)
        old.name = f"{n}__cut"
        new.name = n
        cut[n] = new
    needed: set[int] = set()
    stack = [values[n] if n not in cut else cut[n] for n in outputs]
    while stack:
        v = stack.pop()
        p = v.producer()
        if p is None or id(p) in needed:
            continue
        needed.add(id(p))
        stack.extend(x for x in p.inputs if x is not None)
        for attr in p.attributes.values():  # values a subgraph reads from this scope
            if attr.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS):
                subs = [attr.as_graph()] if attr.type == ir.AttributeType.GRAPH else list(attr.as_graphs())
                for sub in subs:
                    for node in ir.traversal.RecursiveGraphIterator(sub):
                        stack.extend(x for x in node.inputs if x is not None and x.graph is g)
    kept_inputs = [v for v in g.inputs if v.uses() and any(id(u) in needed for u, _ in v.uses())]
    outs = [values[n] if n not in cut else cut[n] for n in outputs]
    for node in reversed(list(g)):
        if id(node) not in needed:
            g.remove(node)
    g.outputs.clear()
    g.outputs.extend(outs)
    g.inputs.clear()
    g.inputs.extend([*(v for v in kept_inputs if v.name not in cut), *cut.values()])
    RemoveUnusedNodesPass()(model)
    return [f"extracted {len(g)} nodes: ({', '.join(v.name for v in g.inputs)}) -> ({', '.join(outputs)})"]


def _check_same(a: ir.Model, b: ir.Model, feeds, tol: Tolerance, what: str) -> str | None:
    ra, rb = run_ort(a, feeds), run_ort(b, feeds)
    for x, y in zip(ra, rb):
        for k in x:
            d = diff(y[k], x[k], name=k, tol=tol)
            if not d:
                return f"{what}: {d}"
    return None


def edit(
    model: ir.Model | str | os.PathLike,
    output: str | os.PathLike | None = None,
    *,
    shapes: Mapping[str, object] | None = None,
    bind_inputs: Mapping[str, object] | None = None,
    opset: int | None = None,
    inputs: Sequence[str] | None = None,
    outputs: Sequence[str] | None = None,
    rename_io: Mapping[str, str] | None = None,
    verify: bool = True,
    tol: Tolerance = DEFAULT_TOL,
    force: bool = False,
    feeds=None,
    **synth,
) -> tuple[ir.Model, EditResult]:
    """Apply the edits given (in the order dims, bound inputs, opset, extraction, renaming) to a copy of ``model`` that shares
    its weights; verify each one that keeps semantics; save to ``output`` when given.

    Verification runs on ``feeds`` (a .npy/.npz path or a folder of them, one feed, or a list of feeds) when given,
    else on feeds synthesized with ``synth``; scalar values being bound are fed at those values in every check
    (``--bind sr=16000``: the static-shape check runs the 16 kHz branch too)."""
    src = bir.load(model) if isinstance(model, (str, os.PathLike)) else model
    bound_scalars = {k: v for k, v in (bind_inputs or {}).items() if np.ndim(v) == 0}
    if bound_scalars:
        synth = {**synth, "values": {**bound_scalars, **(synth.get("values") or {})}}
    source = bir.source_path(src)
    if output is not None and source is not None and os.path.realpath(output) == str(source) and not force:
        raise BushuError(f"refusing to overwrite the input {output}: choose another output path or pass --force")
    work = src.clone()
    done, checks, failed = [], [], None
    if feeds is not None:  # read once, checked against the original's signature
        feeds = make_feeds(src, feeds)
    if shapes:
        done += set_dims(work, shapes)
        if verify:
            failed = _check_same(src, work, make_feeds(work, feeds, samples=2, **synth), tol, "static shapes")
            checks.append("fixed dims: outputs unchanged on feeds of the new shape")
    if bind_inputs and failed is None:
        before = work.clone()
        before.meta.update(src.meta)  # the zoo's feed shapes for a zoo model (a clone has no meta)
        done += bind(work, bind_inputs)
        if verify:
            bound = make_feeds(before, feeds, samples=2, **synth)
            for f in bound:  # the bound inputs fed the values they were bound to
                f.update({k: np.asarray(v.const_value.numpy()) for k, v in work.graph.initializers.items()
                          if k in bind_inputs})
            failed = _check_same(before, work, bound, tol, "bound inputs")
            checks.append("bound inputs: outputs equal the model's fed those values")
    if opset is not None and failed is None:
        converted = bir.convert_opset(work, opset)
        done.append(f"opset {work.opset_imports.get('', 1)} -> {opset}")
        if verify:
            failed = _check_same(work, converted, make_feeds(work, _unbound(feeds, bind_inputs), samples=2, **synth),
                                 tol, f"opset {opset}")
            checks.append(f"opset {opset}: outputs unchanged")
        work = converted
    if (inputs or outputs) and failed is None:
        full = work.clone()
        done += extract(work, list(inputs or []), list(outputs or [o.name for o in full.graph.outputs]))
        if verify:
            failed = _verify_extract(full, work, tol, _unbound(feeds, bind_inputs), **synth)
            checks.append("extracted: outputs equal the full model's tensors of the same name")
    if rename_io and failed is None:
        done += rename(work, rename_io)
    checker = check_model(work)
    if output is not None and failed is None:
        bir.save(work, output, force=force)
    name = str(source or src.graph.name or "model")
    return work, EditResult(name, str(output) if output and failed is None else None, tuple(done), tuple(checks),
                            failed, checker)


def _unbound(feeds: list | None, bound: Mapping[str, object] | None) -> list | None:
    """The user's feeds without the inputs that were bound (they are constants of the edited model now)."""
    if feeds is None or not bound:
        return feeds
    return [{k: v for k, v in f.items() if k not in bound} for f in feeds]


def _verify_extract(full: ir.Model, part: ir.Model, tol: Tolerance, feeds=None, **synth) -> str | None:
    """Run the full model with the cut tensors exposed, feed the part with them, compare its outputs."""
    probe = full.clone()
    names = {v.name for v in part.graph.inputs} | {v.name for v in part.graph.outputs}
    by_name = {o.name: o for n in probe.graph for o in n.outputs}
    present = {v.name for v in probe.graph.outputs}
    probe.graph.outputs.extend(by_name[n] for n in sorted(names) if n in by_name and n not in present)
    feeds = make_feeds(full, feeds, samples=1, **synth)[:1]
    (ref,) = run_ort(probe, feeds)
    specs, _ = engines.model_specs(part)
    feed = {s.name: np.asarray(ref[s.name] if s.name in ref else feeds[0][s.name]) for s in specs}
    (got,) = run_ort(part, [feed])
    for k, v in got.items():
        d = diff(v, ref[k], name=k, tol=tol)
        if not d:
            return f"extracted subgraph: {d}"
    return None
