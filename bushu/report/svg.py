"""Inline SVG plots drawn in Python (no JavaScript, no network): horizontal bars, a line plot, a roofline.

Every plot is one ``<svg>`` string with a ``<title>`` per mark, so hovering shows the exact value. Text is
escaped; empty or non-finite data gives a plot with a "no data" label rather than an error.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

PALETTE = ("#4269d0", "#efb118", "#ff725c", "#6cc5b0", "#3ca951", "#ff8ab7", "#a463f2", "#97bbf5", "#9c6b4e")


def _fmt(v: float) -> str:
    if v == 0 or not math.isfinite(v):
        return str(v)
    a = abs(v)
    if a >= 1e4 or a < 1e-2:
        return f"{v:.2g}"
    return f"{v:.3g}"


def _empty(width: int, height: int, label: str) -> str:
    return (f'<svg class="plot" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}"><text x="{width / 2}" y="{height / 2}" text-anchor="middle" '
            f'fill="#888">{escape(label)}</text></svg>')


def bars(items: Sequence[tuple[str, float]], *, unit: str = "", width: int = 760, colors: Sequence[str] | None = None,
         label_width: int = 260) -> str:
    """Horizontal bars, one per ``(label, value)``, longest scale at the largest value."""
    items = [(lbl, float(v)) for lbl, v in items if v is not None and math.isfinite(float(v))]
    if not items:
        return _empty(width, 40, "no data")
    row = 18
    height = row * len(items) + 10
    vmax = max(v for _, v in items) or 1.0
    span = width - label_width - 90
    parts = [f'<svg class="plot" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" font-size="11" font-family="sans-serif">']
    for i, (label, v) in enumerate(items):
        y = 5 + i * row
        w = max(0.0, span * v / vmax)
        color = (colors[i % len(colors)] if colors else PALETTE[0])
        short = label if len(label) <= 42 else label[:40] + "…"
        parts.append(f'<text x="{label_width - 6}" y="{y + 12}" text-anchor="end">{escape(short)}</text>'
                     f'<rect x="{label_width}" y="{y + 2}" width="{w:.1f}" height="{row - 5}" fill="{color}">'
                     f'<title>{escape(label)}: {_fmt(v)} {escape(unit)}</title></rect>'
                     f'<text x="{label_width + w + 4:.1f}" y="{y + 12}">{_fmt(v)} {escape(unit)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _ticks(lo: float, hi: float, log: bool) -> list[float]:
    if log:
        return [10.0**e for e in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)]
    step = 10 ** math.floor(math.log10((hi - lo) or 1.0))
    while (hi - lo) / step > 8:
        step *= 2
    start = math.floor(lo / step) * step
    return [start + i * step for i in range(int((hi - start) / step) + 2)]


class _Axes:
    """Maps data to pixels for a plot area with optional log axes."""

    def __init__(self, width, height, xr, yr, log_x=False, log_y=False, margin=(56, 16, 36, 14)):
        self.w, self.h = width, height
        self.left, self.right, self.bottom, self.top = margin
        self.xr, self.yr, self.log_x, self.log_y = xr, yr, log_x, log_y

    def _t(self, v, r, log):
        lo, hi = (math.log10(r[0]), math.log10(r[1])) if log else r
        v = math.log10(v) if log else v
        return 0.5 if hi == lo else (v - lo) / (hi - lo)

    def x(self, v):
        return self.left + self._t(v, self.xr, self.log_x) * (self.w - self.left - self.right)

    def y(self, v):
        return self.h - self.bottom - self._t(v, self.yr, self.log_y) * (self.h - self.top - self.bottom)

    def frame(self, xlabel: str, ylabel: str) -> list[str]:
        out = [f'<rect x="{self.left}" y="{self.top}" width="{self.w - self.left - self.right}" '
               f'height="{self.h - self.top - self.bottom}" fill="none" stroke="#bbb"/>']
        for t in _ticks(*self.yr, self.log_y):
            if self.yr[0] <= t <= self.yr[1]:
                out.append(f'<line x1="{self.left}" x2="{self.w - self.right}" y1="{self.y(t):.1f}" y2="{self.y(t):.1f}" '
                           f'stroke="#eee"/><text x="{self.left - 4}" y="{self.y(t) + 4:.1f}" text-anchor="end">{_fmt(t)}</text>')
        for t in _ticks(*self.xr, self.log_x):
            if self.xr[0] <= t <= self.xr[1]:
                out.append(f'<text x="{self.x(t):.1f}" y="{self.h - self.bottom + 14}" text-anchor="middle">{_fmt(t)}</text>')
        out.append(f'<text x="{(self.left + self.w - self.right) / 2}" y="{self.h - 4}" text-anchor="middle">{escape(xlabel)}</text>')
        out.append(f'<text transform="translate(12 {(self.top + self.h - self.bottom) / 2}) rotate(-90)" '
                   f'text-anchor="middle">{escape(ylabel)}</text>')
        return out


def _open(width: int, height: int) -> str:
    return (f'<svg class="plot" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" font-size="11" font-family="sans-serif">')


def line(series: dict[str, Sequence[float | None]], *, names: Sequence[str] = (), xlabel: str = "layer",
         ylabel: str = "", log_y: bool = False, width: int = 760, height: int = 280) -> str:
    """One polyline per series over the index (0…n-1); ``names`` label the points' tooltips."""
    pts = {k: [(i, float(v)) for i, v in enumerate(vs) if v is not None and math.isfinite(float(v))
               and (not log_y or float(v) > 0)] for k, vs in series.items()}
    allv = [v for p in pts.values() for _, v in p]
    if not allv:
        return _empty(width, 60, "no data")
    n = max(len(vs) for vs in series.values())
    lo, hi = min(allv), max(allv)
    if lo == hi:
        lo, hi = (lo / 2, hi * 2) if log_y else (lo - 1, hi + 1)
    ax = _Axes(width, height, (0, max(1, n - 1)), (lo, hi), log_y=log_y)
    parts = [_open(width, height), *ax.frame(xlabel, ylabel)]
    for j, (key, p) in enumerate(pts.items()):
        color = PALETTE[j % len(PALETTE)]
        coords = " ".join(f"{ax.x(i):.1f},{ax.y(v):.1f}" for i, v in p)
        parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{coords}"/>')
        for i, v in p:
            name = names[i] if i < len(names) else str(i)
            parts.append(f'<circle cx="{ax.x(i):.1f}" cy="{ax.y(v):.1f}" r="2.5" fill="{color}">'
                         f'<title>{escape(name)} ({escape(key)}): {_fmt(v)}</title></circle>')
        parts.append(f'<text x="{ax.left + 8}" y="{ax.top + 14 + 14 * j}" fill="{color}">{escape(key)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def roofline(points: Sequence[tuple[float, float, str, str]], *, peak_gflops: float, bandwidth_gbs: float,
             width: int = 760, height: int = 360) -> str:
    """Log-log roofline: ``(intensity FLOP/B, achieved GFLOP/s, label, bound)`` points under
    ``min(peak, intensity × bandwidth)``."""
    pts = [(i, g, lbl, b) for i, g, lbl, b in points if i and g and i > 0 and g > 0 and math.isfinite(i) and math.isfinite(g)]
    if not pts or not peak_gflops or not bandwidth_gbs:
        return _empty(width, 60, "no kernels with known FLOPs and bytes")
    ridge = peak_gflops / bandwidth_gbs
    xs = [p[0] for p in pts] + [ridge]
    ys = [p[1] for p in pts] + [peak_gflops]
    xr = (min(xs) / 2, max(xs) * 2)
    yr = (min(ys) / 2, peak_gflops * 2)
    ax = _Axes(width, height, xr, yr, log_x=True, log_y=True)
    parts = [_open(width, height), *ax.frame("arithmetic intensity (FLOP/byte)", "GFLOP/s")]
    x0 = xr[0]
    y0 = max(yr[0], x0 * bandwidth_gbs)
    x0 = y0 / bandwidth_gbs
    parts.append(f'<polyline fill="none" stroke="#222" stroke-width="2" points="{ax.x(x0):.1f},{ax.y(y0):.1f} '
                 f'{ax.x(ridge):.1f},{ax.y(peak_gflops):.1f} {ax.x(xr[1]):.1f},{ax.y(peak_gflops):.1f}">'
                 f'<title>roofline: {_fmt(bandwidth_gbs)} GB/s, {_fmt(peak_gflops)} GFLOP/s</title></polyline>')
    colors = {"compute": PALETTE[2], "memory": PALETTE[0]}
    for i, g, label, bound in pts:
        parts.append(f'<circle cx="{ax.x(i):.1f}" cy="{ax.y(g):.1f}" r="3.5" fill="{colors.get(bound, PALETTE[6])}" '
                     f'fill-opacity="0.75"><title>{escape(label)}: {_fmt(i)} FLOP/B, {_fmt(g)} GFLOP/s ({escape(bound)}-bound)'
                     f'</title></circle>')
    parts.append(f'<text x="{ax.left + 8}" y="{ax.top + 14}" fill="{PALETTE[0]}">memory-bound</text>'
                 f'<text x="{ax.left + 8}" y="{ax.top + 28}" fill="{PALETTE[2]}">compute-bound</text></svg>')
    return "".join(parts)
