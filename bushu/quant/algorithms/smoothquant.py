"""SmoothQuant (Xiao et al., 2023): migrate activation outliers into the weights.

For a LayerNormalization whose output feeds only MatMul/Gemm with constant ``K×N`` weights, per input channel j:
``s_j = max|X_j|^α / max|W_j|^(1-α)``; the LayerNorm's scale and bias are divided by ``s`` and every consumer's
weight row j multiplied by it — the float model computes the same function, but the activation's channels become
even enough for one per-tensor scale. ``α`` is searched on the sample feeds: for each candidate, calibrate on the
samples, quantize, and keep the α with the best output SNR.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx_ir as ir

from ...inputs import Feed
from ..annotate import plan
from ..budget import accuracy
from ..calibrate import calibrate, exposed
from ..convert import clone, convert
from ..static import observable, run_all

ALPHAS = (0.3, 0.5, 0.7, 0.85)


def _targets(model: ir.Model) -> list[tuple[ir.Node, list[ir.Node]]]:
    out = []
    for node in model.graph:
        if node.op_type != "LayerNormalization" or len(node.inputs) < 3 or node.inputs[2] is None:
            continue
        if node.inputs[1].const_value is None or node.inputs[2].const_value is None:
            continue
        users = node.outputs[0].consumers()
        ok = users and all(
            u.op_type in ("MatMul", "Gemm") and u.inputs[0] is node.outputs[0] and u.inputs[1].const_value is not None
            and len(u.inputs[1].const_value.shape) == 2 and len(u.inputs[1].uses()) == 1
            and not (u.op_type == "Gemm" and u.attributes.get_int("transB", 0)) for u in users)
        if ok:
            out.append((node, list(users)))
    return out


def channel_absmax(model: ir.Model, feeds: Sequence[Feed]) -> dict[str, np.ndarray]:
    """Per-channel (last axis) max |x| of every smoothable LayerNorm output over ``feeds``."""
    names = [ln.outputs[0].name for ln, _ in _targets(model)]
    if not names:
        return {}
    sess = exposed(model, names)
    amax: dict[str, np.ndarray] = {}
    for f in feeds:
        outs = sess.run(f, names)
        for n in names:
            a = np.abs(outs[n]).reshape(-1, outs[n].shape[-1]).max(axis=0)
            amax[n] = a if n not in amax else np.maximum(amax[n], a)
    return amax


def smooth(model: ir.Model, amax: dict[str, np.ndarray], alpha: float) -> int:
    """Apply the migration in place with strength ``alpha``; returns how many LayerNorms were smoothed."""
    count = 0
    for ln, users in _targets(model):
        x = amax.get(ln.outputs[0].name)
        if x is None:
            continue
        w_amax = np.max([np.abs(u.inputs[1].const_value.numpy()).max(axis=1) for u in users], axis=0)
        s = np.power(np.maximum(x, 1e-5), alpha) / np.power(np.maximum(w_amax, 1e-5), 1 - alpha)
        s = np.clip(s, 1e-2, 1e2).astype(np.float32)
        for idx in (1, 2):
            v = ln.inputs[idx]
            v.const_value = ir.tensor((v.const_value.numpy() / s).astype(np.float32), name=v.name)
        for u in users:
            w = u.inputs[1]
            w.const_value = ir.tensor((w.const_value.numpy() * s[:, None]).astype(np.float32), name=w.name)
        count += 1
    return count


class SmoothQuant:
    """The float-model transform :class:`~bushu.quant.static.Session` runs before calibration. ``alpha=None``
    searches :data:`ALPHAS` on the sample feeds."""

    def __init__(self, config, alpha: float | None = None):
        self.config = config
        self.alpha = alpha

    def _snr(self, model: ir.Model, feeds: Sequence[Feed], amax, alpha: float) -> float:
        trial = clone(model)  # smooth() replaces tensors on the clone's own values; the model keeps its weights
        smooth(trial, amax, alpha)
        p = self.config
        pl = plan(trial, p.preset, include=p.include, exclude=p.exclude)
        cal = calibrate(trial, observable(trial), feeds, show_progress=False)
        ranges = {n: cal.observers[n].range(p.method if p.method != "auto" else "minmax", p.preset.activations,
                                            p.percentile) for n in pl.observed}
        q = convert(clone(trial), pl, ranges, p.preset, per_channel=p.per_channel)
        return accuracy(run_all(model, feeds), run_all(q, feeds)).snr_db

    def __call__(self, model: ir.Model, feeds: Sequence[Feed]) -> list[str]:
        if not feeds:
            return ["SmoothQuant skipped: no sample feeds"]
        amax = channel_absmax(model, feeds)
        if not amax:
            return ["SmoothQuant: no LayerNormalization → MatMul/Gemm to smooth"]
        note = ""
        alpha = self.alpha
        if alpha is None:
            scored = sorted(((self._snr(model, feeds, amax, a), a) for a in ALPHAS), reverse=True)
            alpha = scored[0][1]
            note = " (searched: " + ", ".join(f"α={a} {snr:.1f} dB" for snr, a in scored) + ")"
        n = smooth(model, amax, alpha)
        return [f"SmoothQuant α={alpha} on {n} LayerNorm → MatMul groups{note}"]


def transform(config) -> SmoothQuant:
    """The transform for ``config.smoothquant`` (a float α, or ``"auto"`` to search it)."""
    sq = config.smoothquant
    return SmoothQuant(config, None if sq == "auto" else float(sq))
