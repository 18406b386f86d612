"""Static INT8: prepare → plan → calibrate → convert, with held-out evaluation.

:class:`Session` holds what every configuration of one model shares — the prepared float model, the calibration
observers and the float outputs on the held-out feeds — so that the method search, the diagnosis and the budget
search build and score many configurations without calibrating twice.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np
import onnx_ir as ir

from .. import engines
from ..engines.base import EngineOptions, model_specs
from ..inputs import Feed
from .annotate import Plan, plan
from .budget import Accuracy, accuracy
from .calibrate import Calibration, calibrate
from .convert import clone, convert
from .prepare import prepare
from .spec import QuantConfig

RANGE_METHODS = ("minmax", "percentile", "entropy", "mse")


def observable(model: ir.Model, config: QuantConfig) -> list[str]:
    """Every tensor that some plan of ``model`` may take a range from — the full plan's, plus the inputs and
    outputs of weighted/arithmetic ops and activations, which get ranges of their own when a neighbour is kept in
    float — so that one calibration serves every configuration the budget search tries."""
    p = config.preset
    names = set(plan(model, p, include=config.include, exclude=config.exclude, keep_float=config.keep_float).observed)
    outs = {v.name for v in model.graph.outputs}
    for node in model.graph:
        if node.op_type in p.compute_ops or node.op_type in p.arith_ops or node.op_type in p.post_ops:
            names.update(v.name for v in (*node.inputs, *node.outputs) if v is not None and v.name not in outs
                         and v.dtype == ir.DataType.FLOAT and v.const_value is None and not v.is_initializer())
    return sorted(names)


def run_all(model: ir.Model, feeds: Iterable[Mapping[str, np.ndarray]], engine: str = "ort",
            options: EngineOptions | None = None) -> list[dict[str, np.ndarray]]:
    sess = engines.open_session(model, engine, options or EngineOptions())
    return [sess.run(f) for f in feeds]


@dataclasses.dataclass
class Session:
    """One model's shared state for building and scoring quantized configurations (see the module docstring)."""

    config: QuantConfig
    source: ir.Model
    model: ir.Model  # prepared float model
    notes: list[str]
    calibration: Calibration
    heldout: list[Feed]
    reference: list[dict[str, np.ndarray]]
    eval_fn: Callable | None = None
    eval_float: float | None = None
    per_tensor: dict[str, tuple[float, float]] = dataclasses.field(default_factory=dict)

    @classmethod
    def start(cls, model: ir.Model, feeds: Iterable[Mapping[str, np.ndarray]], config: QuantConfig, *,
              heldout: list[Feed] | None = None, total: int | None = None,
              transforms: Sequence[Callable[[ir.Model, list[Feed]], list[str]]] = ()) -> Session:
        pr = config.preset
        prepared, notes = prepare(model, hardswish=pr.hardswish, fold_affine=pr.fold_affine,
                                  merge_matmuls=pr.merge_matmuls)
        if transforms:  # float-model algorithms (CLE, SmoothQuant) that change weights before calibration
            feeds = iter(feeds)
            sample = list(itertools.islice(feeds, config.heldout))
            feeds = itertools.chain(sample, feeds)
            for t in transforms:
                notes += t(prepared, heldout or sample)
        cal = calibrate(prepared, observable(prepared, config), feeds, heldout=0 if heldout else config.heldout,
                        max_samples=config.max_samples, show_progress=config.progress, total=total)
        held = heldout if heldout else cal.heldout
        ref = run_all(prepared, held)
        s = cls(config, model, prepared, notes, cal, held, ref, eval_fn=config.eval_fn)
        if s.eval_fn is not None:
            s.eval_float = float(s.eval_fn(s.runner(model)))
        return s

    def runner(self, model: ir.Model) -> Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]:
        """``run(feed) -> outputs`` for the user's metric, on the target engine."""
        sess = engines.open_session(model, self.config.engine, EngineOptions())
        return sess.run

    def plan(self, keep_float: frozenset[str] = frozenset()) -> Plan:
        c = self.config
        return plan(self.model, c.preset, include=c.include, exclude=c.exclude,
                    keep_float=frozenset(c.keep_float) | keep_float)

    def ranges(self, method: str, p: Plan) -> dict[str, tuple[float, float]]:
        """Ranges of ``p``'s tensors by ``method``; ``"per-tensor"`` reads the mix :mod:`.auto` chose."""
        if method == "per-tensor":
            return {n: self.per_tensor[n] for n in p.observed}
        qt = self.config.preset.activations
        obs = self.calibration.observers
        return {n: obs[n].range(method, qt, self.config.percentile) for n in p.observed}

    def build(self, keep_float: frozenset[str] = frozenset(), method: str | None = None,
              ranges: Mapping[str, tuple[float, float]] | None = None) -> tuple[ir.Model, Plan]:
        p = self.plan(keep_float)
        r = dict(self.ranges(method or self.config.method, p))
        if ranges:
            r.update({k: v for k, v in ranges.items() if k in r})
        q = convert(clone(self.model), p, r, self.config.preset, per_channel=self.config.per_channel)
        return q, p

    def score(self, q: ir.Model, *, user_metric: bool = True) -> Accuracy:
        """``q`` against the float model on the held-out feeds; ``user_metric=False`` skips the user's metric
        (the sensitivity ranking needs only the output error)."""
        # on the target engine: an engine that computes the quantized model wrong shows up here, not in production
        outs = run_all(q, self.heldout, self.config.engine)
        ev = float(self.eval_fn(self.runner(q))) if self.eval_fn is not None and user_metric else None
        return accuracy(self.reference, outs, eval_float=self.eval_float, eval_quantized=ev)

    @property
    def specs(self):
        return model_specs(self.model)[0]
