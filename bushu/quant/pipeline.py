"""The static INT8 workflow: calibrate once, pick the ranges, meet the budget with the fastest configuration,
measure speed, diagnose on request."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable

import onnx_ir as ir

from .. import engines
from ..errors import BushuError
from ..inputs import Feed
from ..timing import measure
from . import auto
from . import budget as bud
from .algorithms import adaround, bias_correction, cle, smoothquant
from .diagnose import diagnose, sensitivity
from .result import QuantizeResult
from .spec import PRESETS, QuantConfig, preset
from .speed import measure_speed
from .static import Session
from .verify import engine_check


def quantize_static(model: ir.Model, feeds: Iterable[Feed], config: QuantConfig, *, total: int | None = None,
                    heldout: list[Feed] | None = None, source: str = "model") -> QuantizeResult:
    budget = bud.parse(config.budget) if config.budget else None
    if config.eval_fn is not None and (budget is None or budget.metric != "eval-drop"):
        raise BushuError("--eval needs a budget on its value: add --budget eval-drop<=X (X in the metric's units)")
    # NOTE: CLE before SmoothQuant: equalization changes conv weights, SmoothQuant measures activations after it
    sq = smoothquant.transform(config)
    if config.smoothquant is not None:
        feeds = sq.keep_samples(model, feeds)  # its channel maxima need more feeds than the held-out ones
    transforms = [t for t, on in ((cle.CrossLayerEqualization(), config.cle), (sq, config.smoothquant is not None))
                  if on]
    s = Session.start(model, feeds, config, heldout=heldout, total=total, transforms=transforms)
    notes = list(s.notes)
    if config.reduce_range is None and config.uses_reduce_range:
        notes.append("7-bit weights (reduce_range): this CPU has no VNNI, ONNX Runtime's u8×s8 kernels would saturate")
    method, methods = auto.pick(s, notes) if config.method == "auto" else (config.method, [config.method])
    steps: tuple = ()
    met = True
    if budget is None:
        q, p = s.build(method=method)
    else:
        q, p, steps, met, method = _meet_budget(s, budget, methods[:2], notes)
    if config.adaround:  # before bias correction: it measures the shift the final rounding leaves
        notes.append(adaround.apply(s.model, q, p.weights, s.heldout, config.preset.weights,
                                    show_progress=config.progress))
    if config.bias_correction:
        notes.append(bias_correction.apply(s, q))
    acc = s.score(q)
    engine = preset(config.engine).name
    check = None
    if engine != "ort":  # ONNX Runtime is the reference the target engine is checked against
        check = engine_check(s.model, q, s.heldout, config.engine, placement=config.preset.name, reference=s.reference)
    speed = None
    if config.measure_speed and (check is None or check):
        speed = measure_speed(s.model, q, s.heldout[0], engine=config.engine)
    elif config.measure_speed:
        notes.append(f"not timed: {engine} computes this file wrong")
    diag = diagnose(s, method) if config.diagnose else None
    return QuantizeResult(
        source=source, mode="static", engine=engine, placement=config.preset.name, engine_check=check, method=method,
        quantized_layers=len(p.weights), float_layers=dict(p.reasons), notes=tuple(notes),
        calibration_samples=s.calibration.samples, accuracy=acc, speed=speed, budget=str(budget) if budget else None,
        budget_met=met, budget_steps=tuple(steps), diagnosis=diag, model=q)


def _meet_budget(s: Session, budget: bud.Budget, methods: list[str], notes: list[str]):
    """For each candidate range method: rank the layers by sensitivity, leave the fewest in float that meet the
    budget. Of the passing configurations, keep the fastest on the target engine."""
    passing = []
    all_steps = []
    for method in methods:
        _, layers = sensitivity(s, method, alone=False)
        ranked = [x.node for x in layers]

        def evaluate(keep: frozenset[str], m=method) -> float:
            return s.score(s.build(keep, m)[0]).value(budget.metric)

        steps = bud.search(evaluate, ranked, budget, method)
        all_steps += steps
        if steps and steps[0].met:
            passing.append((method, frozenset(steps[0].float_layers)))
    if not passing:
        notes.append(f"budget {budget} not met even with every weighted layer in float: check the held-out data")
        q, p = s.build(method=methods[0])
        return q, p, all_steps, False, methods[0]
    best = None
    for method, keep in passing:
        q, p = s.build(keep, method)
        ms = _median_ms(q, s.config.engine, s.heldout[0])
        if best is None or ms < best[0]:
            best = (ms, q, p, method)
    if not best[2].weights:
        notes.append("the budget is met only with every weighted layer in float: the result is the float model")
    if len(passing) > 1:
        notes.append(f"budget met by {len(passing)} configurations; kept the fastest ({best[3]}, "
                     f"{len(best[2].reasons)} layers in float, {best[0]:.3f} ms)")
    return best[1], best[2], all_steps, True, best[3]


def _median_ms(model: ir.Model, engine: str, feed: Feed) -> float:
    sess = engines.open_session(model, engine)
    return measure(lambda: sess.run(feed), warmup_s=0.2, budget_s=0.5).median_ms


def fall_back(result: QuantizeResult, config: QuantConfig, retry: Callable[[QuantConfig], QuantizeResult], *,
              reiterable: bool = True) -> QuantizeResult:
    """When the target engine computes ``result``'s file wrong (its ``engine_check`` failed), quantize again with
    each other preset's Q/DQ placement (``retry(config)``: calibrates anew, so the calibration data must be
    readable twice) and return the first result the engine computes right, saying so; else ``result`` (falsy),
    with a note."""
    check = result.engine_check
    if check is None or check:
        return result
    others = [k for k in PRESETS if k != result.placement]
    if not reiterable:
        note = (f"not retried with the {'/'.join(others)} placement: the calibration data is a one-shot iterator "
                "(pass a list or a folder, or choose QuantConfig(placement=...))")
        return dataclasses.replace(result, notes=(*result.notes, note))
    rejected = [check]
    for other in others:
        r = retry(config.replace(placement=other))
        if r.engine_check is None or r.engine_check:
            note = (f"fell back to the {other} placement: {check.engine} {check.version} computes the "
                    f"{result.placement} placement's file wrong (output SNR {check.target.snr_db:.1f} dB there, "
                    f"{check.reference.snr_db:.1f} dB on ort)")
            return dataclasses.replace(r, rejected=tuple(rejected) + r.rejected, notes=(note, *r.notes))
        rejected.append(r.engine_check)
    return dataclasses.replace(result, rejected=tuple(rejected[1:]), notes=result.notes + tuple(
        f"the {c.placement} placement is computed wrong too: {c}" for c in rejected[1:]))
