"""``--method auto``: choose activation ranges by their error on held-out samples.

Candidates: each of the four methods for every tensor, and a per-tensor mix — for each tensor, the method whose
fake-quantized held-out values are closest (squared error) to the real ones. The fully quantized model of each
candidate is scored by its output SNR on the held-out feeds and the best is kept.
"""

from __future__ import annotations

import numpy as np

from .calibrate import exposed
from .qmath import dequantize, qparams, quantize
from .static import RANGE_METHODS, Session

PER_TENSOR = "per-tensor"
MAX_FEEDS = 4  # held-out feeds read per tensor: enough to rank four ranges, cheap to expose every tensor


def per_tensor_ranges(s: Session) -> tuple[dict[str, tuple[float, float]], dict[str, int]]:
    """The per-tensor mix, and how many tensors each method won."""
    names = sorted(s.calibration.observers)  # every tensor any configuration (budget search) may quantize
    qt = s.config.preset.activations
    obs = s.calibration.observers
    cands = {m: {n: obs[n].range(m, qt, s.config.percentile) for n in names} for m in RANGE_METHODS}
    params = {m: {n: qparams(*r[n], qt) for n in names} for m, r in cands.items()}
    err = {n: dict.fromkeys(RANGE_METHODS, 0.0) for n in names}
    sess = exposed(s.model, names)
    for feed in s.heldout[:MAX_FEEDS]:
        outs = sess.run(feed, names)
        for n in names:
            x = outs[n].astype(np.float32, copy=False)
            for m in RANGE_METHODS:
                scale, zp = params[m][n]
                err[n][m] += float(np.sum((dequantize(quantize(x, scale, zp, qt), scale, zp) - x) ** 2))
    best = {n: min(RANGE_METHODS, key=lambda m, n=n: err[n][m]) for n in names}
    wins = {m: sum(1 for b in best.values() if b == m) for m in RANGE_METHODS}
    return {n: cands[best[n]][n] for n in names}, wins


def pick(s: Session, notes: list[str]) -> tuple[str, list[str]]:
    """The candidate with the best held-out output SNR, and all candidates best first."""
    mix, wins = per_tensor_ranges(s)
    s.per_tensor = mix
    scored = sorted(((s.score(s.build(method=m)[0], user_metric=False).snr_db, m)
                     for m in (*RANGE_METHODS, PER_TENSOR)), reverse=True)
    won = ", ".join(f"{m} {k}" for m, k in wins.items() if k)
    notes.append("auto ranges: " + ", ".join(f"{m} {snr:.1f} dB" for snr, m in scored)
                 + f" (per-tensor mix: {won}) → {scored[0][1]}")
    return scored[0][1], [m for _, m in scored]
