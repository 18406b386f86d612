"""The static INT8 workflow: calibrate once, pick the ranges, meet the budget with the fastest configuration,
measure speed, diagnose on request."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable

import onnx_ir as ir

from ..errors import BushuError
from ..inputs import Feed
from . import auto
from . import budget as bud
from .algorithms import adaround, bias_correction, cle, smoothquant
from .diagnose import diagnose, sensitivity
from .result import QuantizeResult
from .spec import PRESETS, QuantConfig, preset
from .speed import measure_speed, speed_of, time_interleaved
from .static import Session
from .verify import REFERENCE, EngineCheck, engine_check


@dataclasses.dataclass(frozen=True)
class Built:
    """A static INT8 result and what timing it needs: the prepared float model it was made from and a held-out
    feed."""

    result: QuantizeResult
    float_model: ir.Model
    feed: Feed


def quantize_static(model: ir.Model, feeds: Iterable[Feed], config: QuantConfig, *, total: int | None = None,
                    heldout: list[Feed] | None = None, source: str = "model") -> QuantizeResult:
    return build_static(model, feeds, config, total=total, heldout=heldout, source=source).result


def build_static(model: ir.Model, feeds: Iterable[Feed], config: QuantConfig, *, total: int | None = None,
                 heldout: list[Feed] | None = None, source: str = "model") -> Built:
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
    result = QuantizeResult(
        source=source, mode="static", engine=engine, placement=config.preset.name, engine_check=check, method=method,
        quantized_layers=len(p.weights), float_layers=dict(p.reasons), notes=tuple(notes),
        calibration_samples=s.calibration.samples, accuracy=acc, speed=speed, budget=str(budget) if budget else None,
        budget_met=met, budget_steps=tuple(steps), diagnosis=diag, model=q)
    return Built(result, s.model, s.heldout[0])


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
    built = [(method, *s.build(keep, method)) for method, keep in passing]
    i = 0
    if len(built) > 1:  # one passing configuration needs no timing
        lats = time_interleaved([q for _, q, _ in built], s.heldout[0], engine=s.config.engine, budget_s=0.5)
        i = min(range(len(built)), key=lambda k: lats[k].median_ms)
    method, q, p = built[i]
    if not p.weights:
        notes.append("the budget is met only with every weighted layer in float: the result is the float model")
    if len(built) > 1:
        notes.append(f"budget met by {len(built)} configurations; kept the fastest ({method}, "
                     f"{len(p.reasons)} layers in float, {lats[i].median_ms:.3f} ms)")
    return q, p, all_steps, True, method


def _wrong(c: EngineCheck) -> str:
    """Why a placement's file was not kept, in a few words."""
    if c.error:
        return f"{c.engine} {c.version} cannot run the {c.placement} placement's file ({c.error})"
    return (f"{c.engine} {c.version} computes the {c.placement} placement's file wrong (output SNR "
            f"{c.target.snr_db:.1f} dB there, {c.reference.snr_db:.1f} dB on {REFERENCE})")


def _right(r: QuantizeResult) -> bool:
    return r.engine_check is None or bool(r.engine_check)


def place(config: QuantConfig, build: Callable[[QuantConfig], Built], *, reiterable: bool = True) -> QuantizeResult:
    """Static INT8 with the Q/DQ placement that runs fastest and right on the target engine.

    On ONNX Runtime, or with a placement the user chose (``QuantConfig(placement=...)``), that placement is built
    and kept unless the engine computes its file wrong (:func:`fall_back`). On another engine every preset's
    placement is built (``build(config)`` calibrates anew each time), the files the engine computes wrong are
    rejected, and of the others the fastest on the engine is kept — timed in the same alternating rounds as the
    FP32 model — with a note naming every candidate's latency. The best placement is model-dependent: on OpenVINO
    all-MiniLM-L6-v2 ran 2.21× FP32 from the ONNX Runtime placement's file and 1.82× from its own; PP-OCRv4 rec
    1.28× and 1.96×."""
    own = preset(config.engine).name
    if config.placement is not None or own == REFERENCE or not reiterable:
        result = fall_back(build(config).result, config, lambda c: build(c).result, reiterable=reiterable)
        if config.placement is None and own != REFERENCE:
            result = dataclasses.replace(result, notes=(*result.notes, (
                f"placement not chosen by speed: the calibration data is a one-shot iterator (pass a list or a "
                f"folder to try each placement on {config.engine})")))
        return result
    order = [own, *(k for k in PRESETS if k != own)]
    built = [build(config.replace(placement=k, measure_speed=False)) for k in order]
    right = [b for b in built if _right(b.result)]
    rejected = tuple(b.result.engine_check for b in built if not _right(b.result))
    if not right:
        r = built[0].result
        return dataclasses.replace(r, rejected=rejected[1:], notes=r.notes + tuple(
            f"the {c.placement} placement is computed wrong too: {c}" for c in rejected[1:]))
    notes = [f"the {c.placement} placement is rejected: {_wrong(c)}" for c in rejected]
    kept, speed = right[0], None
    if len(right) > 1 or config.measure_speed:
        fp32, *lats = time_interleaved([built[0].float_model, *(b.result.model for b in right)], built[0].feed,
                                       engine=config.engine)
        i = min(range(len(right)), key=lambda k: lats[k].median_ms)
        kept = right[i]
        if len(right) > 1:
            timings = ", ".join(f"{b.result.placement} {lat.median_ms:.3f} ms ({fp32.median_ms / lat.median_ms:.2f}× "
                                f"FP32)" for b, lat in zip(right, lats))
            notes.append(f"placement chosen by speed on {config.engine}: {timings}, timed in alternating rounds; "
                         f"kept {kept.result.placement}")
        if config.measure_speed:
            speed = speed_of(config.engine, fp32, lats[i], kept.result.model)
    r = kept.result
    return dataclasses.replace(r, rejected=rejected, notes=(*notes, *r.notes), speed=speed)


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
            note = f"fell back to the {other} placement: {_wrong(check)}"
            return dataclasses.replace(r, rejected=tuple(rejected) + r.rejected, notes=(note, *r.notes))
        rejected.append(r.engine_check)
    return dataclasses.replace(result, rejected=tuple(rejected[1:]), notes=result.notes + tuple(
        f"the {c.placement} placement is computed wrong too: {c}" for c in rejected[1:]))
