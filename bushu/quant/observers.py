"""Streaming observers: memory is a fixed-size histogram per tensor, whatever the number of samples.

:class:`HistogramObserver` bins values over ``[-R, R]`` with ``R`` a power of two. When a batch exceeds ``R``,
the range doubles as often as needed and adjacent bins merge exactly (every new bin edge is an old one), so the
histogram after streaming batches one by one equals the histogram of all the data at once — bin for bin. Bin
indices are computed as ``floor(x * 2**e) + N/2``: a multiplication by a power of two is exact in floating point,
so no rounding can move a value across an edge.

Ranges are then read off the histogram: min-max, percentile, entropy (KL divergence, TensorRT's method) and MSE.
"""

from __future__ import annotations

import math

import numpy as np

from .spec import QType

DEFAULT_BINS = 4096  # over [-R, R]; a power of two


class HistogramObserver:
    """Exact min, max and count, and a histogram of ``bins`` bins over ``[-2**exp, 2**exp]``."""

    __slots__ = ("bins", "hist", "exp", "min", "max", "count")

    def __init__(self, bins: int = DEFAULT_BINS):
        if bins < 16 or bins & (bins - 1):
            raise ValueError("bins must be a power of two ≥ 16")
        self.bins = bins
        self.hist = np.zeros(bins, np.int64)
        self.exp: int | None = None  # R = 2**exp
        self.min = math.inf
        self.max = -math.inf
        self.count = 0

    @property
    def nbytes(self) -> int:
        return self.hist.nbytes

    def _grow(self, new_exp: int) -> None:
        d = new_exp - self.exp
        half = self.bins // 2
        i = np.arange(self.bins, dtype=np.int64)
        if (1 << d) > half:  # the whole old range falls into the two central bins
            j = np.where(i < half, half - 1, half)
        else:
            j = (((1 << d) - 1) * half + i) >> d
        self.hist = np.bincount(j, weights=self.hist, minlength=self.bins).astype(np.int64)
        self.exp = new_exp

    def update(self, x: np.ndarray) -> None:
        x = np.asarray(x)
        if x.size == 0:
            return
        if x.dtype not in (np.float32, np.float64):
            x = x.astype(np.float64)
        x = x.ravel()
        lo, hi = float(x.min()), float(x.max())
        if not (math.isfinite(lo) and math.isfinite(hi)):
            x = x[np.isfinite(x)]
            if x.size == 0:
                return
            lo, hi = float(x.min()), float(x.max())
        self.min, self.max = min(self.min, lo), max(self.max, hi)
        self.count += x.size
        amax = max(-lo, hi)
        need = max(math.frexp(amax)[1] if amax > 0 else -126, -126)  # amax < 2**need
        if self.exp is None:
            self.exp = need
        elif need > self.exp:
            self._grow(need)
        half = self.bins // 2
        # bin width is 2R/bins; index = floor(x / width) + half: scaling by a power of two and floor are exact
        idx = np.floor(np.ldexp(x, int(math.log2(half)) - self.exp)).astype(np.int32)
        idx += half
        np.clip(idx, 0, self.bins - 1, out=idx)
        self.hist += np.bincount(idx, minlength=self.bins)

    def merge(self, other: HistogramObserver) -> None:
        """Add another observer's data (same number of bins)."""
        if other.exp is None:
            return
        if self.exp is None:
            self.hist, self.exp = other.hist.copy(), other.exp
        else:
            o = HistogramObserver(self.bins)
            o.hist, o.exp = other.hist.copy(), other.exp
            top = max(self.exp, o.exp)
            if self.exp < top:
                self._grow(top)
            if o.exp < top:
                o._grow(top)
            self.hist += o.hist
        self.min, self.max = min(self.min, other.min), max(self.max, other.max)
        self.count += other.count

    def edges(self) -> np.ndarray:
        r = math.ldexp(1.0, self.exp)
        return np.linspace(-r, r, self.bins + 1)

    # ---- ranges ----------------------------------------------------------------------------------------------
    def range(self, method: str, qt: QType, percentile: float = 99.999) -> tuple[float, float]:
        """The ``[lo, hi]`` to quantize this tensor to, by ``method`` (``minmax|percentile|entropy|mse``)."""
        if self.count == 0:
            return 0.0, 0.0
        if method == "minmax":
            return self.min, self.max
        if method == "percentile":
            lo, hi = self._quantiles(1.0 - percentile / 100.0, percentile / 100.0)
        elif method == "entropy":
            t = self._kl_threshold(qt.qmax - qt.qmin + 1 if self.min >= 0 else (qt.qmax - qt.qmin + 1) // 2)
            lo, hi = -t, t
        elif method == "mse":
            lo, hi = self._mse_range(qt.qmax - qt.qmin)
        else:
            raise ValueError(f"unknown method {method}")
        return max(self.min, lo), min(self.max, hi)

    def _quantiles(self, qlo: float, qhi: float) -> tuple[float, float]:
        cdf = np.cumsum(self.hist) / self.count
        e = self.edges()
        lo = e[int(np.searchsorted(cdf, qlo, side="left"))]
        hi = e[min(int(np.searchsorted(cdf, qhi, side="left")) + 1, self.bins)]
        return float(lo), float(hi)

    def _abs_hist(self) -> np.ndarray:
        half = self.bins // 2
        return self.hist[half:] + self.hist[:half][::-1]

    def _kl_threshold(self, levels: int) -> float:
        """TensorRT's entropy calibration on |x|: the clip threshold whose quantized distribution (``levels``
        bins) loses the least information (KL divergence) relative to the observed one."""
        h = self._abs_hist().astype(np.float64)
        n = len(h)
        width = math.ldexp(1.0, self.exp) / n
        nonzero = np.nonzero(h)[0]
        last = int(nonzero[-1]) + 1 if len(nonzero) else n
        if last <= levels:
            return last * width
        best, best_kl = last, math.inf
        step = max(1, (last - levels) // 256)  # search at most ~256 thresholds
        for i in range(levels, last + 1, step):
            p = h[:i].copy()
            p[i - 1] += h[i:].sum()
            # merge the i reference bins into `levels` quantized bins, then expand back over the non-empty bins
            idx = (np.arange(i) * levels) // i
            q_sum = np.bincount(idx, weights=h[:i], minlength=levels)
            nz = h[:i] > 0
            q_cnt = np.bincount(idx, weights=nz.astype(np.float64), minlength=levels)
            q = np.where(nz, q_sum[idx] / np.maximum(q_cnt[idx], 1), 0.0)
            ps, qs = p.sum(), q.sum()
            if ps == 0 or qs == 0:
                continue
            p, q = p / ps, q / qs
            m = p > 0
            kl = float(np.sum(p[m] * np.log(p[m] / np.maximum(q[m], 1e-12))))
            if kl < best_kl:
                best, best_kl = i, kl
        return best * width

    def _mse_range(self, levels: int) -> tuple[float, float]:
        """The shrink of ``[min, max]`` that minimizes the expected squared error (rounding inside, clipping
        outside), evaluated on bin centres."""
        e = self.edges()
        centers = (e[:-1] + e[1:]) / 2
        m = self.hist > 0
        c, w = centers[m], self.hist[m].astype(np.float64)
        lo0, hi0 = min(self.min, 0.0), max(self.max, 0.0)
        best, best_err = (lo0, hi0), math.inf
        for f in np.linspace(0.05, 1.0, 96):
            lo, hi = lo0 * f, hi0 * f
            step = (hi - lo) / levels
            if step <= 0:
                continue
            clip = np.clip(c, lo, hi)
            err = np.sum(w * ((c - clip) ** 2 + step * step / 12.0))
            if err < best_err:
                best, best_err = (lo, hi), err
        return best
