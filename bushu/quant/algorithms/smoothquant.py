"""SmoothQuant (Xiao et al., 2023): migrate activation outliers into the weights.

For an activation X that feeds MatMul/Gemm with constant ``K×N`` weights, per channel j:
``s_j = max|X_j|^α / max|W_j|^(1-α)``; X is divided by ``s`` and each consumer's weight row j multiplied by it —
the float model computes the same function, but the activation's channels become even enough for one per-tensor
scale. Targets, in models with a LayerNormalization (transformers): every LayerNorm output feeding such layers
(``1/s`` goes into its scale and bias, or into an inserted Mul when it also feeds the residual branch), and every
other activation of rank ≥ 3 feeding MatMuls — the FFN's second projection after Gelu and the attention output
projection (an inserted Mul), as NNCF's transformer mode does. On all-MiniLM-L6-v2 those two inputs were the
worst-quantized (28–35 dB alone against 35–39 dB for LayerNorm outputs). ``α`` is searched on the sample feeds:
for each candidate, calibrate on the samples, quantize, and keep the α with the best output SNR.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence

import numpy as np
import onnx_ir as ir

from ...inputs import Feed
from ..annotate import plan
from ..budget import accuracy
from ..calibrate import calibrate, exposed
from ..convert import clone, convert
from ..static import run_all

ALPHAS = (0.5, 0.7, 0.85, 0.95)
SAMPLES = 64  # feeds kept for the channel maxima and the α search (see SmoothQuant)


def _smoothable_users(x: ir.Value, ops: tuple[str, ...]) -> list[ir.Node]:
    return [u for u in x.consumers() if u.op_type in ops and u.inputs[0] is x
            and u.inputs[1] is not None and u.inputs[1].const_value is not None
            and len(u.inputs[1].const_value.shape) == 2 and len(u.inputs[1].uses()) == 1
            and not (u.op_type == "Gemm" and u.attributes.get_int("transB", 0))]


def _targets(model: ir.Model) -> list[tuple[ir.Value, list[ir.Node]]]:
    """Activations to smooth (see the module docstring), each with the consumers whose weights take ``s``."""
    nodes = list(model.graph)
    if not any(n.op_type == "LayerNormalization" for n in nodes):
        return []  # not a transformer: CNN classifier heads (Flatten → Gemm) are left alone
    out = []
    for node in nodes:
        for x in node.outputs:
            if x.dtype not in (ir.DataType.FLOAT, None):
                continue
            if node.op_type == "LayerNormalization":
                if x is not node.outputs[0]:
                    continue
                users = _smoothable_users(x, ("MatMul", "Gemm"))
            elif x.shape is not None and len(x.shape) >= 3:
                users = _smoothable_users(x, ("MatMul",))
            else:
                continue
            if users:
                out.append((x, users))
    return out


def channel_absmax(model: ir.Model, feeds: Sequence[Feed]) -> dict[str, np.ndarray]:
    """Per-channel (last axis) max |x| of every smoothable activation over ``feeds``."""
    names = [x.name for x, _ in _targets(model)]
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
    """Apply the migration in place with strength ``alpha``; returns how many activations were smoothed.

    When the LayerNorm feeds only the smoothed layers, ``1/s`` goes into its scale and bias; when it also feeds
    something else (the residual branch of a transformer), a ``Mul(x, 1/s)`` is inserted in front of the layers.
    """
    count = 0
    for x, users in _targets(model):
        a = amax.get(x.name)
        if a is None:
            continue
        w_amax = np.max([np.abs(u.inputs[1].const_value.numpy()).max(axis=1) for u in users], axis=0)
        s = np.power(np.maximum(a, 1e-5), alpha) / np.power(np.maximum(w_amax, 1e-5), 1 - alpha)
        s = np.clip(s, 1e-2, 1e2).astype(np.float32)
        for u in users:
            w = u.inputs[1]
            w.const_value = ir.tensor((w.const_value.numpy() * s[:, None]).astype(np.float32), name=w.name)
        ln = x.producer()
        if (ln.op_type == "LayerNormalization" and len(x.consumers()) == len(users) and not x.is_graph_output()
                and len(ln.inputs) > 2 and ln.inputs[2] is not None):
            for idx in (1, 2):
                v = ln.inputs[idx]
                v.const_value = ir.tensor((v.const_value.numpy() / s).astype(np.float32), name=v.name)
        else:
            inv = ir.Value(name=f"{x.name}_smooth_scale", const_value=ir.tensor(1.0 / s, name=f"{x.name}_smooth_scale"),
                           shape=ir.Shape(s.shape), type=ir.TensorType(ir.DataType.FLOAT))
            model.graph.register_initializer(inv)
            mul = ir.node("Mul", [x, inv], name=f"{x.name}_smooth")
            mul.outputs[0].name, mul.outputs[0].dtype = f"{x.name}_smoothed", ir.DataType.FLOAT
            model.graph.insert_after(ln, mul)
            for u in users:
                u.replace_input_with(0, mul.outputs[0])
        count += 1
    return count


class SmoothQuant:
    """The float-model transform :class:`~bushu.quant.static.Session` runs before calibration. ``alpha=None``
    searches :data:`ALPHAS`.

    Statistics: the per-channel max of a sparse activation (Gelu's output) read on the 8 held-out feeds misses
    channels that peak on other inputs, and dividing such a channel by a small ``s`` turns it into an outlier
    (all-MiniLM-L6-v2: embedding cosine 0.991 with 8 feeds, 0.998 with 48). :meth:`keep_samples` therefore keeps
    up to :data:`SAMPLES` feeds of the calibration stream (for transformers only; they are then calibrated on as
    usual), and the α search fits the channel maxima and ranges on one half of them and scores the other half —
    scored on the feeds it was fitted on, a strong α looked best and then lost on unseen inputs.
    """

    def __init__(self, config, alpha: float | None = None):
        self.config = config
        self.alpha = alpha
        self.samples: list[Feed] = []

    def keep_samples(self, model: ir.Model, feeds: Iterable[Feed]) -> Iterable[Feed]:
        """The calibration stream, with its first feeds kept for the statistics when ``model`` has something to
        smooth (a bounded number: memory stays flat)."""
        if not _targets(model):
            return feeds
        feeds = iter(feeds)
        n = min(SAMPLES, self.config.max_samples or SAMPLES)
        self.samples = list(itertools.islice(feeds, n))
        return itertools.chain(self.samples, feeds)

    def _snr(self, model: ir.Model, fit: Sequence[Feed], check: Sequence[Feed], amax, alpha: float) -> float:
        trial = clone(model)  # smooth() replaces tensors on the clone's own values; the model keeps its weights
        smooth(trial, amax, alpha)
        p = self.config
        pl = plan(trial, p.preset, include=p.include, exclude=p.exclude)
        cal = calibrate(trial, pl.observed, fit, show_progress=False)
        ranges = {n: cal.observers[n].range(p.method if p.method != "auto" else "minmax", p.preset.activations,
                                            p.percentile) for n in pl.observed}
        q = convert(clone(trial), pl, ranges, p.preset, per_channel=p.per_channel)
        return accuracy(run_all(model, check), run_all(q, check)).snr_db

    def __call__(self, model: ir.Model, feeds: Sequence[Feed]) -> list[str]:
        feeds = self.samples if len(self.samples) > len(feeds) else list(feeds)
        if not feeds:
            return ["SmoothQuant skipped: no sample feeds"]
        amax = channel_absmax(model, feeds)
        if not amax:
            return []  # nothing to smooth (not a transformer)
        note = ""
        alpha = self.alpha
        if alpha is None:
            half = max(1, len(feeds) // 2)
            fit, check = feeds[:half], feeds[half:] or feeds
            fit_amax = channel_absmax(model, fit)
            scored = sorted(((self._snr(model, fit, check, fit_amax, a), a) for a in ALPHAS), reverse=True)
            off = self._snr(model, fit, check, {}, 0.0)
            searched = ", ".join(f"α={a} {snr:.1f} dB" for snr, a in scored)
            if off >= scored[0][0]:
                return [f"SmoothQuant off: no α beat {off:.1f} dB without it ({searched})"]
            alpha = scored[0][1]
            note = f" (searched on {len(check)} feeds, fitted on {len(fit)} others: {searched}; without: {off:.1f} dB)"
        n = smooth(model, amax, alpha)
        return [f"SmoothQuant α={alpha} on {n} activations, channel maxima of {len(feeds)} feeds{note}"]


def transform(config) -> SmoothQuant:
    """The transform for ``config.smoothquant`` (a float α, or ``"auto"`` to search it; ``None`` — off — gives the
    searching one too, which the pipeline then doesn't run)."""
    sq = config.smoothquant
    return SmoothQuant(config, None if sq in (None, "auto") else float(sq))
