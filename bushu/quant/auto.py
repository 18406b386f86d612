"""``--method auto``: choose each activation tensor's range method by the error it causes on the model's outputs.

1. Every single method (min-max, percentile, entropy, MSE) quantizes the whole model; each is scored by its output
   SNR on the held-out feeds, and the best is the starting point.
2. Greedy, one tensor at a time: for each quantized activation, try the other methods' ranges for that tensor
   alone (the rest as chosen so far), score the model's outputs on the held-out feeds, and keep a range only if it
   raises the output SNR. Tensors are visited most promising first — those whose candidate ranges differ most
   from the current one, weighted by how much the candidates' own quantization error differs — and the number of
   model builds is capped (:data:`MAX_TRIALS`), so the cost is bounded whatever the model's size.

Held-out feeds: with the default ones (the first feeds of the calibration stream), the candidate ranges of the
search come from the other feeds (:attr:`~bushu.quant.calibrate.Calibration.fit_observers`), so the choice is
scored on data its ranges never saw; the chosen method of each tensor is then applied to the ranges of all feeds,
and the per-tensor mix is kept only if it still scores best. With ``--heldout`` feeds (never calibrated on) the
search's ranges are the final ones, and every accepted change raises the held-out SNR: the result is never worse
there than the best single method.
"""

from __future__ import annotations

import math

import numpy as np

from ..progress import progress
from .calibrate import exposed
from .qmath import dequantize, qparams, quantize
from .static import RANGE_METHODS, Session

PER_TENSOR = "per-tensor"
MAX_FEEDS = 4  # held-out feeds read per tensor to rank the candidates (cheap to expose every tensor)
MAX_TRIALS = 64  # model builds of the greedy search
MIN_GAIN_DB = 0.01  # a change must raise the output SNR by this much to be kept (noise of float accumulation)
SAME_RANGE = 0.02  # candidate ranges closer than this (relative to the current width) are not tried


def own_errors(s: Session, names: list[str], cands: dict[str, dict[str, tuple[float, float]]]) \
        -> dict[str, dict[str, float]]:
    """Each tensor's own quantization error (sum of squares on a few held-out feeds) under each method's range."""
    qt = s.config.preset.activations
    err = {n: dict.fromkeys(RANGE_METHODS, 0.0) for n in names}
    params = {m: {n: qparams(*cands[m][n], qt) for n in names} for m in RANGE_METHODS}
    sess = exposed(s.model, names)
    for feed in s.heldout[:MAX_FEEDS]:
        outs = sess.run(feed, names)
        for n in names:
            x = outs[n].astype(np.float32, copy=False)
            for m in RANGE_METHODS:
                scale, zp = params[m][n]
                err[n][m] += float(np.sum((dequantize(quantize(x, scale, zp, qt), scale, zp) - x) ** 2))
    return err


def _differs(a: tuple[float, float], b: tuple[float, float]) -> float:
    width = max(b[1] - b[0], 1e-12)
    return max(abs(a[0] - b[0]), abs(a[1] - b[1])) / width


def pick(s: Session, notes: list[str]) -> tuple[str, list[str]]:
    """Set ``s.per_tensor`` by the greedy search; returns the method to build with and the candidates best first."""
    qt = s.config.preset.activations
    obs = s.calibration.observers
    names = sorted(obs)  # every tensor any configuration (budget search) may quantize
    final = {m: {n: obs[n].range(m, qt, s.config.percentile) for n in names} for m in RANGE_METHODS}
    fit_obs = s.calibration.fit_observers
    # the choice is made with ranges that never saw the held-out feeds (when they came from the stream)
    cands = final if fit_obs is None else \
        {m: {n: fit_obs[n].range(m, qt, s.config.percentile) for n in names} for m in RANGE_METHODS}

    def snr_with(base: str, ranges) -> float:
        return _snr(s, s.build(method=base, ranges=ranges)[0])

    single = sorted(((snr_with(m, cands[m]), m) for m in RANGE_METHODS), reverse=True)
    best_snr, base = single[0]
    chosen = dict.fromkeys(names, base)
    current = dict(cands[base])

    used = s.plan().observed  # the tensors the fully quantized model takes ranges from
    err = own_errors(s, used, cands)
    trials = []
    for n in used:
        for m in RANGE_METHODS:
            d = _differs(cands[m][n], cands[base][n])
            if m != base and d > SAME_RANGE:
                gain = math.log10((err[n][base] + 1e-30) / (err[n][m] + 1e-30))  # > 0: m is closer on its own
                trials.append((d * (1.0 + max(gain, 0.0)) * (1 if gain > -1 else 0.1), n, m))
    trials.sort(reverse=True)
    trials = trials[:MAX_TRIALS]
    kept = 0
    for _, n, m in progress(trials, desc="auto ranges", enabled=s.config.progress):
        trial = dict(current)
        trial[n] = cands[m][n]
        snr = snr_with(base, trial)
        if snr > best_snr + MIN_GAIN_DB:
            best_snr, current, chosen[n] = snr, trial, m
            kept += 1
    s.per_tensor = {n: final[chosen[n]][n] for n in names}
    if fit_obs is None:
        scored = [(best_snr, PER_TENSOR), *single]
    else:  # the models the user would get: ranges from every feed
        scored = [(snr_with(m, final[m]), m) for m in RANGE_METHODS]
        scored.append((_snr(s, s.build(method=PER_TENSOR)[0]) if kept else scored[RANGE_METHODS.index(base)][0],
                       PER_TENSOR))
    scored.sort(key=lambda t: -t[0])
    ranked = [m for _, m in scored if kept or m != PER_TENSOR]  # no change: the mix is the base method itself
    method = ranked[0]
    won = {m: sum(1 for n in used if chosen[n] == m) for m in RANGE_METHODS}
    mix = ", ".join(f"{m} {k}" for m, k in won.items() if k)
    where = (f"chosen on {len(s.heldout)} held-out feeds" + (" with ranges that never saw them" if fit_obs else ""))
    notes.append("auto ranges: " + ", ".join(f"{m} {v:.1f} dB" for v, m in scored)
                 + f" (per tensor from {base}: {len(trials)} trials, {kept} tensors changed, mix {mix}; {where})"
                 f" → {method}")
    return method, ranked


def _snr(s: Session, q) -> float:
    return s.score(q, user_metric=False).snr_db
