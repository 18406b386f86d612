"""``--method auto``: choose each activation tensor's range method by the error it causes on the model's outputs.

1. Every single method (min-max, percentile, entropy, MSE) quantizes the whole model; each is scored by its output
   SNR on the held-out feeds, and the best is the starting point.
2. Greedy, one tensor at a time: for each quantized activation, try the other methods' ranges for that tensor
   alone (the rest as chosen so far), score the model's outputs on the held-out feeds, and keep a range only if it
   raises the output SNR. Tensors are visited most promising first — those whose candidate ranges differ most
   from the current one, weighted by how much the candidates' own quantization error differs — and the number of
   model builds is capped (:data:`MAX_TRIALS`), so the cost is bounded whatever the model's size.

Every accepted change raises the held-out SNR, so the result is never worse there than the best single method.
With the default held-out feeds (the first calibration feeds) they were also calibrated on; pass ``--heldout`` for
feeds the ranges never saw.
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
    obs = s.calibration.observers
    qt = s.config.preset.activations
    names = sorted(obs)  # every tensor any configuration (budget search) may quantize
    cands = {m: {n: obs[n].range(m, qt, s.config.percentile) for n in names} for m in RANGE_METHODS}
    single = sorted(((_snr(s, s.build(method=m)[0]), m) for m in RANGE_METHODS), reverse=True)
    best_snr, base = single[0]
    chosen = dict.fromkeys(names, base)
    s.per_tensor = dict(cands[base])

    used = s.plan().observed  # the tensors the fully quantized model takes ranges from
    err = own_errors(s, used, cands)
    trials = []
    for n in used:
        cur = cands[base][n]
        for m in RANGE_METHODS:
            d = _differs(cands[m][n], cur)
            if m != base and d > SAME_RANGE:
                gain = math.log10((err[n][base] + 1e-30) / (err[n][m] + 1e-30))  # > 0: m is closer on its own
                trials.append((d * (1.0 + max(gain, 0.0)) * (1 if gain > -1 else 0.1), n, m))
    trials.sort(reverse=True)
    trials = trials[:MAX_TRIALS]
    kept = 0
    for _, n, m in progress(trials, desc="auto ranges", enabled=s.config.progress):
        trial = dict(s.per_tensor)
        trial[n] = cands[m][n]
        snr = _snr(s, s.build(method=PER_TENSOR, ranges={n: cands[m][n]})[0])
        if snr > best_snr + MIN_GAIN_DB:
            best_snr, s.per_tensor, chosen[n] = snr, trial, m
            kept += 1
    won = {m: sum(1 for n in used if chosen[n] == m) for m in RANGE_METHODS}
    method = PER_TENSOR if kept else base
    scored = sorted([(best_snr, PER_TENSOR), *single], key=lambda t: -t[0])
    mix = ", ".join(f"{m} {k}" for m, k in won.items() if k)
    notes.append("auto ranges: " + ", ".join(f"{m} {v:.1f} dB" for v, m in scored)
                 + f" (per tensor from {base}: {len(trials)} trials, {kept} tensors changed, mix {mix}; "
                 f"on {len(s.heldout)} held-out feeds) → {method}")
    order = [m for _, m in single]
    return method, ([PER_TENSOR, *order] if kept else order)


def _snr(s: Session, q) -> float:
    return s.score(q, user_metric=False).snr_db
