"""Affine quantization arithmetic as ONNX defines it: ``q = saturate(round_half_even(x / scale) + zero_point)``,
``x ≈ (q - zero_point) * scale``.

Ranges always include 0 so that zero (padding, ReLU outputs) is represented exactly.
"""

from __future__ import annotations

import numpy as np

from .spec import QType

_NP = {"uint8": np.uint8, "int8": np.int8, "int32": np.int32, "int4": np.int8, "uint4": np.uint8}


def np_dtype(qt: QType):
    return _NP[qt.dtype]


def qparams(lo, hi, qt: QType) -> tuple[np.ndarray, np.ndarray]:
    """Scale (float32) and zero point (``qt``'s dtype) for ranges ``[lo, hi]`` (scalars or per-channel arrays)."""
    lo = np.minimum(np.asarray(lo, np.float64), 0.0)
    hi = np.maximum(np.asarray(hi, np.float64), 0.0)
    levels = qt.qmax - qt.qmin
    if qt.symmetric:
        amax = np.maximum(-lo, hi)
        scale = amax * 2.0 / levels
        zp = np.full(scale.shape, 0 if not qt.dtype.startswith("u") else (qt.qmax + 1) // 2, np.int64)
    else:
        scale = (hi - lo) / levels
        safe = np.where(scale > 0, scale, 1.0)
        zp = np.clip(np.rint(qt.qmin - lo / safe), qt.qmin, qt.qmax).astype(np.int64)
    # An all-zero tensor: any scale represents it; 1 avoids a division by zero in engines.
    scale = scale.astype(np.float32)  # checked after the cast: a subnormal float64 scale becomes 0 in float32
    scale = np.where(scale > 0, scale, np.float32(1.0)).astype(np.float32)
    return scale, zp.astype(np_dtype(qt))


def _bcast(p: np.ndarray, x: np.ndarray, axis: int | None) -> np.ndarray:
    if axis is None or p.ndim == 0:
        return p
    shape = [1] * x.ndim
    shape[axis] = -1
    return p.reshape(shape)


def quantize(x: np.ndarray, scale, zero_point, qt: QType, axis: int | None = None) -> np.ndarray:
    """ONNX QuantizeLinear (per tensor, or per channel along ``axis``), saturating to ``qt``'s range."""
    s = _bcast(np.asarray(scale, np.float64), x, axis)
    z = _bcast(np.asarray(zero_point).astype(np.int64), x, axis)
    q = np.rint(np.asarray(x, np.float64) / s) + z
    return np.clip(q, qt.qmin, qt.qmax).astype(np_dtype(qt))


def dequantize(q: np.ndarray, scale, zero_point, axis: int | None = None) -> np.ndarray:
    """ONNX DequantizeLinear."""
    s = _bcast(np.asarray(scale, np.float64), q, axis)
    z = _bcast(np.asarray(zero_point).astype(np.int64), q, axis)
    return ((q.astype(np.int64) - z) * s).astype(np.float32)


def channel_ranges(w: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel min and max of ``w`` along ``axis``."""
    moved = np.moveaxis(np.asarray(w, np.float32), axis, 0).reshape(w.shape[axis], -1)
    return moved.min(axis=1), moved.max(axis=1)
