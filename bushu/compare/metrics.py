"""How far apart two arrays are: pure numpy, no model or engine here.

``b`` is the reference and ``a`` the candidate, as in ``np.allclose(a, b)``. All metrics are computed in float64.

- ``max_abs``, ``mean_abs``: of ``|a - b|``.
- ``max_rel``: max of ``|a - b| / |b|`` over the elements where ``|b| > atol`` (elsewhere the absolute error is
  what counts); 0 when there are none.
- ``cosine``: of the flattened arrays; 1 when both are all zeros, 0 when only one is.
- ``snr_db``: ``10 log10(sum b² / sum (a - b)²)``; ``inf`` for identical arrays (rendered ``"inf"`` in JSON).
- ``top1``/``top5`` for *score* outputs only (``None`` otherwise). An output counts as scores when it is a float
  array of rank 2 or 3 (batch × classes, or batch × sequence × classes, as classifiers and CTC/token heads produce)
  whose last dim, the classes, is at least 2; images and feature maps (rank 4+) and vectors are not scores.
  ``top1`` is the fraction of rows (all positions but the last axis) whose argmax agrees; ``top5`` (only with more
  than 5 classes) the fraction of rows where ``b``'s top class is among ``a``'s five highest.

An output passes (:class:`Tolerance`) when every element satisfies ``|a - b| <= atol + rtol * |b|`` **and** the
cosine is at least ``min_cosine``. Non-finite values: positions where both arrays hold the same NaN/±inf agree and
are left out of the metrics; a position where only one is non-finite (or the infinities differ) fails the output
and makes ``max_abs`` infinite and ``snr_db`` ``-inf``. Shapes must match exactly; a mismatch fails with a ``note``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

from ..errors import BushuError
from ..results import Result


@dataclasses.dataclass(frozen=True)
class Tolerance:
    """Pass/fail thresholds for one compared tensor.

    Defaults: ``atol=1e-4``, ``rtol=1e-3`` (FP32 engines that reorder sums differ by ~1e-6 relative; these leave
    room for deep networks while a 0.1 % change of a weight still fails) and ``min_cosine=0.9999``.
    """

    atol: float = 1e-4
    rtol: float = 1e-3
    min_cosine: float = 0.9999

    def __post_init__(self):
        if not (self.atol >= 0 and self.rtol >= 0 and -1 <= self.min_cosine <= 1):
            raise BushuError(
                f"bad tolerance atol={self.atol} rtol={self.rtol} min_cosine={self.min_cosine}: atol and rtol must be "
                "≥ 0 and min_cosine in [-1, 1]"
            )

    def scaled(self, scale: float) -> Tolerance:
        """This tolerance with ``atol`` multiplied by ``max(1, scale)`` (used for intermediate tensors, whose
        magnitudes vary from layer to layer)."""
        return dataclasses.replace(self, atol=self.atol * max(1.0, float(scale)))


@dataclasses.dataclass(frozen=True)
class OutputDiff(Result):
    """The metrics of one tensor (see the module docstring); truthy when it passed its tolerance."""

    kind = "output_diff"
    name: str
    shape: tuple[int, ...]
    max_abs: float
    max_rel: float
    mean_abs: float
    cosine: float
    snr_db: float
    top1: float | None
    top5: float | None
    passed: bool
    note: str | None = None

    def __bool__(self) -> bool:
        return self.passed

    def __str__(self) -> str:
        s = (f"{self.name}: {'PASS' if self.passed else 'FAIL'} max_abs {self.max_abs:.3g} max_rel {self.max_rel:.3g} "
             f"mean_abs {self.mean_abs:.3g} cosine {self.cosine:.6f} snr {self.snr_db:.1f} dB")
        if self.top1 is not None:
            s += f" top1 {self.top1:.3f}"
        if self.top5 is not None:
            s += f" top5 {self.top5:.3f}"
        return s + (f" ({self.note})" if self.note else "")


def is_scores(a: np.ndarray) -> bool:
    """Whether ``a`` looks like class scores (see the module docstring for the rule)."""
    return a.dtype.kind == "f" and a.ndim in (2, 3) and a.shape[-1] >= 2


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    # Scale both by the largest magnitude first so that squares of huge values don't overflow.
    m = max(float(np.max(np.abs(a), initial=0.0)), float(np.max(np.abs(b), initial=0.0)))
    if m == 0.0:
        return 1.0
    a, b = a / m, b / m
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0.0 or nb == 0.0:
        return 0.0
    return float(np.clip(np.dot(a, b) / (na * nb), -1.0, 1.0))


def _snr_db(err_sq: float, sig_sq: float) -> float:
    if err_sq == 0.0:
        return math.inf
    if sig_sq == 0.0:
        return -math.inf
    return float(10.0 * math.log10(sig_sq / err_sq))


def _topk(a: np.ndarray, b: np.ndarray) -> tuple[float | None, float | None]:
    if not (is_scores(a) and is_scores(b)):
        return None, None
    classes = a.shape[-1]
    # NaN would win argmax; rank it lowest instead.
    ra = np.nan_to_num(a.reshape(-1, classes), nan=-np.inf)
    rb = np.nan_to_num(b.reshape(-1, classes), nan=-np.inf)
    if ra.shape[0] == 0:
        return None, None
    ref_top = np.argmax(rb, axis=1)
    top1 = float(np.mean(np.argmax(ra, axis=1) == ref_top))
    top5 = None
    if classes > 5:
        cand5 = np.argpartition(-ra, 5, axis=1)[:, :5]
        top5 = float(np.mean(np.any(cand5 == ref_top[:, None], axis=1)))
    return top1, top5


def diff(a, b, *, name: str = "", tol: Tolerance = Tolerance()) -> OutputDiff:
    """Compare candidate ``a`` with reference ``b`` (see the module docstring for every metric and the pass rule)."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        nan = math.nan
        return OutputDiff(name, tuple(b.shape), nan, nan, nan, nan, nan, None, None, False,
                          note=f"shape {tuple(a.shape)} vs reference {tuple(b.shape)}")
    top1, top5 = _topk(a, b)
    fa = a.astype(np.float64, copy=False).ravel()
    fb = b.astype(np.float64, copy=False).ravel()
    if fa.size == 0:
        return OutputDiff(name, tuple(b.shape), 0.0, 0.0, 0.0, 1.0, math.inf, top1, top5, True)
    note = None
    fin_a, fin_b = np.isfinite(fa), np.isfinite(fb)
    nonfinite_bad = 0
    if not (fin_a.all() and fin_b.all()):
        both = fin_a & fin_b
        same_special = ~fin_a & ~fin_b & ((fa == fb) | (np.isnan(fa) & np.isnan(fb)))
        nonfinite_bad = int(np.count_nonzero(~both & ~same_special))
        fa, fb = fa[both], fb[both]
        if nonfinite_bad:
            note = f"{nonfinite_bad} element(s) non-finite on one side only"
    err = np.abs(fa - fb)
    absb = np.abs(fb)
    max_abs = float(err.max(initial=0.0))
    mean_abs = float(err.mean()) if err.size else 0.0
    big = absb > tol.atol
    max_rel = float(np.max(err[big] / absb[big], initial=0.0))
    cosine = 1.0 if max_abs == 0.0 else _cosine(fa, fb)  # exact for equal arrays, where rounding could give 1 - 1e-16
    snr = _snr_db(float(np.dot(err, err)), float(np.dot(fb, fb)))
    within = bool(np.all(err <= tol.atol + tol.rtol * absb))
    passed = within and cosine >= tol.min_cosine and nonfinite_bad == 0
    if nonfinite_bad:  # an infinite error somewhere
        max_abs, snr = math.inf, -math.inf
    return OutputDiff(name, tuple(b.shape), max_abs, max_rel, mean_abs, cosine, snr, top1, top5, passed, note)


def merge(diffs: Sequence[OutputDiff]) -> OutputDiff:
    """One tensor's diffs over several samples as one: the worst of each metric (max errors, min cosine and SNR),
    the mean of ``mean_abs`` and of the top-k agreements; passed only when every sample passed."""
    if not diffs:
        raise ValueError("merge() needs at least one diff")
    if len(diffs) == 1:
        return diffs[0]

    def mean_opt(vals):
        vals = [v for v in vals if v is not None]
        return float(np.mean(vals)) if vals else None

    notes = sorted({d.note for d in diffs if d.note})
    return OutputDiff(
        name=diffs[0].name,
        shape=diffs[0].shape,
        max_abs=max(d.max_abs for d in diffs),
        max_rel=max(d.max_rel for d in diffs),
        mean_abs=float(np.mean([d.mean_abs for d in diffs])),
        cosine=min(d.cosine for d in diffs),
        snr_db=min(d.snr_db for d in diffs),
        top1=mean_opt(d.top1 for d in diffs),
        top5=mean_opt(d.top5 for d in diffs),
        passed=all(d.passed for d in diffs),
        note="; ".join(notes) or None,
    )
