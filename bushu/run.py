"""``bushu.run``: run a model once on an engine and summarise its outputs."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx_ir as ir

from . import engines
from .engines.base import EngineOptions, TensorSpec
from .errors import BushuError
from .inputs import Feed, check_feed, load_feeds, synthesize
from .results import Result, fmt_table
from .timing import Latency, machine, measure


@dataclasses.dataclass(frozen=True)
class TensorSummary:
    name: str
    dtype: str
    shape: tuple[int, ...]
    min: float | None
    max: float | None
    mean: float | None
    finite: bool

    @classmethod
    def of(cls, name: str, a: np.ndarray) -> TensorSummary:
        if a.dtype.kind in "fiub" and a.size:
            f = a.astype(np.float64)
            fin = bool(np.isfinite(f).all())
            return cls(name, str(a.dtype), a.shape, float(np.nanmin(f)), float(np.nanmax(f)), float(np.nanmean(f)), fin)
        return cls(name, str(a.dtype), a.shape, None, None, None, True)


@dataclasses.dataclass(frozen=True)
class RunResult(Result):
    """Outputs of one run; truthy when every output is finite."""

    kind = "run"
    model: str
    engine: str
    inputs: tuple[TensorSummary, ...]
    outputs: tuple[TensorSummary, ...]
    latency: Latency | None
    saved_to: str | None
    machine: object = None
    arrays: dict = dataclasses.field(default_factory=dict, repr=False, compare=False)

    def __bool__(self) -> bool:
        return all(o.finite for o in self.outputs)

    def __str__(self) -> str:
        s = f"{self.model} on {self.engine}: " + ", ".join(f"{o.name} {o.dtype}{list(o.shape)}" for o in self.outputs)
        return s + ("" if self else " (non-finite values!)")

    def render(self) -> str:
        def rows(ts):
            return [[t.name, t.dtype, "x".join(map(str, t.shape)) or "scalar",
                     "" if t.min is None else f"{t.min:.4g}", "" if t.max is None else f"{t.max:.4g}",
                     "" if t.mean is None else f"{t.mean:.4g}", "" if t.finite else "NaN/inf"] for t in ts]
        hdr = ["name", "dtype", "shape", "min", "max", "mean", ""]
        out = [f"model   {self.model}", f"engine  {self.engine}", "", "inputs", fmt_table(rows(self.inputs), hdr),
               "", "outputs", fmt_table(rows(self.outputs), hdr)]
        if self.latency:
            out += ["", f"latency {self.latency}", f"machine {self.machine}"]
        if self.saved_to:
            out += ["", f"outputs saved to {self.saved_to}"]
        return "\n".join(out)


def model_name(model: ir.Model | str | os.PathLike) -> str:
    if isinstance(model, (str, os.PathLike)):
        return str(model)
    p = model.meta.get("bushu.path")
    return str(p) if p else (model.graph.name or "model")


def with_zoo_defaults(model: ir.Model, synth: dict) -> dict:
    """``synth`` (keywords of :func:`bushu.inputs.synthesize`) over the shapes and values the zoo records for
    ``model`` when it is a zoo model's file (silero VAD's ``sr`` and ``state``); the caller's own win."""
    from .passes.verify import zoo_defaults

    shapes, values = zoo_defaults(model.meta.get("bushu.path"))
    if not shapes and not values:
        return synth
    return {**synth, "shapes": {**shapes, **(synth.get("shapes") or {})},
            "values": {**values, **(synth.get("values") or {})}}


def first_feed(specs: list[TensorSpec], inputs=None, **synth) -> Feed:
    """The feed to use: ``inputs`` (a path or a mapping) when given, else one synthesized from ``specs``."""
    if inputs is None:
        return synthesize(specs, **synth)
    if isinstance(inputs, Mapping):
        feed = dict(inputs)
    else:
        feeds = load_feeds(inputs, specs)
        feed = feeds[0]
    check_feed(feed, specs, source=str(inputs) if not isinstance(inputs, Mapping) else "inputs")
    return feed


def check_output_path(path: str | Path, protect=(), *, force: bool | None = False, flag: str = "--save-outputs",
                      suffix: str | None = ".npz") -> None:
    """Refuse an output ``path`` given by ``flag`` that lacks ``suffix``, or would replace the model or an input file,
    or add a file to an input folder (``protect``: paths, or mappings that are skipped), unless ``force``. Called
    before the work, so a refusal costs nothing. ``force=None``: the command has no ``--force`` to suggest."""
    path = Path(path)
    if suffix and path.suffix != suffix:
        raise BushuError(f"{flag} needs a {suffix} path, got {path}")
    if force:
        return
    way = f"choose another {flag} path" + (" or pass --force" if force is not None else "")
    for source in protect:
        if source is None or isinstance(source, Mapping):
            continue
        src = Path(source).resolve()
        if path.resolve() == src:
            raise BushuError(f"refusing to overwrite the input {path}: {way}")
        if src.is_dir() and path.resolve().parent == src:
            raise BushuError(f"{path} is in the input folder {source} (it would be read as a feed next time): {way}")


def save_npz(path: str | Path, arrays: Mapping[str, np.ndarray]) -> str:
    """Write ``arrays`` to a .npz atomically."""
    path = Path(path)
    if path.suffix != ".npz":
        raise BushuError(f"--save-outputs needs a .npz path, got {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)
    return str(path)


def run(
    model: ir.Model | str | os.PathLike,
    *,
    engine: str = "ort",
    inputs=None,
    options: EngineOptions | None = None,
    save_outputs: str | os.PathLike | None = None,
    time: bool = False,
    force: bool = False,
    **synth,
) -> RunResult:
    """Run ``model`` once on ``engine`` with ``inputs`` (a .npy/.npz path, a folder, a mapping of arrays, or ``None``
    to synthesize them; ``synth`` keywords go to :func:`bushu.inputs.synthesize`, over the shapes and values the zoo
    records for a zoo model, e.g. silero VAD's ``sr``). ``save_outputs`` never replaces the model or an input file
    unless ``force``."""
    from . import ir as bir

    eng = engines.get(engine)  # an unknown engine is refused before any work
    m = bir.load(model) if isinstance(model, (str, os.PathLike)) else model
    if save_outputs:
        check_output_path(save_outputs, (bir.source_path(m), inputs), force=force)
    sess = eng.load(m, options or EngineOptions())
    feed = first_feed(sess.inputs, inputs, **with_zoo_defaults(m, synth))
    outs = sess.run(feed)
    latency = measure(lambda: sess.run(feed), warmup_s=0.2, budget_s=1.0) if time else None
    saved = save_npz(save_outputs, outs) if save_outputs else None
    return RunResult(
        model=model_name(model if isinstance(model, (str, os.PathLike)) else m),
        engine=sess.engine,
        inputs=tuple(TensorSummary.of(k, np.asarray(v)) for k, v in feed.items()),
        outputs=tuple(TensorSummary.of(k, np.asarray(v)) for k, v in outs.items()),
        latency=latency,
        saved_to=saved,
        machine=machine() if time else None,
        arrays=outs,
    )
