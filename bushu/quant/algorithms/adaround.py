"""AdaRound (Nagel et al., 2020): learn whether each weight rounds up or down, per layer, so that the layer's
output on calibration activations stays closest to the float layer's — instead of rounding each weight to its
nearest level independently.

For a layer ``y = W x`` with per-channel weight scale ``s`` the quantized weight is ``s · (floor(W/s) + h(V))``
with ``h(V) = clip(sigmoid(V)·(ζ-γ) + γ, 0, 1)`` (the rectified sigmoid, ζ = 1.1, γ = -0.1), ``V`` initialised so
that ``h`` is the fractional part of ``W/s``. Minimised with Adam:
``‖ΔW X‖² / N + λ Σ (1 - |2h - 1|^β)``, where the regulariser (weight λ, off for the first 20% of the iterations,
then β annealed from 20 to 2) drives every ``h`` to 0 or 1; the result rounds up where ``h ≥ ½``.

The reconstruction term depends on the inputs only through their Gram matrix ``G = XᵀX`` (``‖ΔW X‖² =
tr(ΔW G ΔWᵀ)``), accumulated once over the calibration activations (im2col rows for a Conv; per group for grouped
and depthwise Convs), so each iteration is one ``(Cout × K) · (K × K)`` product: plain numpy, no torch needed.

Layers: Conv (2-D, any group), Gemm and MatMul with constant weights. It runs on the converted model, rewriting
the stored integer weights in place (the scales stay); bias correction, when on, runs after it.

Cost: each step costs one ``(Cout × K) · (K × K)`` product and a few element-wise passes over the weights, so a
large layer (MobileNetV3's 576→1024 head) dominates. Three things keep it bounded: the steps run in float32; a
layer stops as soon as every ``h`` sits at 0 or 1 (its gradient is then zero: the rounding cannot change any
more), or when the rounding has not changed for :data:`PATIENCE` steps once the regulariser is on; and layers of
the same weight shape (a network's depthwise convs) learn together in one batched product. The Gram matrices
take at most :data:`MAX_ROWS` input rows per layer over all feeds.
"""

from __future__ import annotations

import contextlib
import dataclasses

import numpy as np
import onnx_ir as ir

from ...progress import progress
from ..calibrate import exposed
from ..qmath import np_dtype
from ..spec import QType

ZETA, GAMMA = 1.1, -0.1
ITERATIONS = 1000  # at most; see PATIENCE
LEARNING_RATE = 1e-2
LAMBDA = 0.01  # weight of the rounding regulariser (the paper's)
WARMUP = 0.2  # fraction of iterations without the regulariser
BETA = (20.0, 2.0)  # annealed from, to
MAX_ROWS = 32768  # input rows (im2col positions) per layer, over all feeds, that enter the Gram matrix
PATIENCE = 100  # steps with the regulariser on and no rounding decision changed: the layer is done
CHECK = 10  # steps between convergence checks


def _one_thread():
    """Single-threaded BLAS for the many small products: on a loaded 2-core machine OpenBLAS' threads made each
    (64 × 288)·(288 × 288) product 50× slower (25 ms instead of 0.5 ms)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # optional: only speed depends on it
        return contextlib.nullcontext()
    return threadpool_limits(1)


def _h(v: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    sig = 1.0 / (1.0 + np.exp(-v))
    raw = sig * (ZETA - GAMMA) + GAMMA
    return np.clip(raw, 0.0, 1.0), sig, raw


def learn_rounding(w: np.ndarray, scale: np.ndarray, zero_point: np.ndarray, qt: QType, gram: np.ndarray, n, *,
                   iterations: int = ITERATIONS, lam: float = LAMBDA) -> np.ndarray:
    """Integer weights for ``w`` (groups × Cout/group × K) at per-channel ``scale``/``zero_point`` (same leading
    shape, × 1) whose layer output on inputs with Gram matrix ``gram`` (groups × K × K, over ``n`` rows: a number,
    or one per group) is closest to the float output."""
    return _learn(w, scale, zero_point, qt, gram, n, iterations=iterations, lam=lam)[0]


def _learn(w, scale, zero_point, qt: QType, gram, n, *, iterations: int = ITERATIONS, lam: float = LAMBDA):
    """:func:`learn_rounding` and the number of steps it took."""
    f = np.float32
    x = w / scale
    floor = np.floor(x)
    frac = np.clip(x - floor, 1e-4, 1 - 1e-4)
    v = (-np.log((ZETA - GAMMA) / (frac - GAMMA) - 1.0)).astype(f)  # h(v) = frac: starts at the float weights
    lo, hi = (qt.qmin - zero_point).astype(f), (qt.qmax - zero_point).astype(f)
    floor, scale32, w32 = floor.astype(f), scale.astype(f), w.astype(f)
    g = (gram / np.reshape(n, (-1, 1, 1)) * 2.0).astype(f)  # d‖ΔW X‖²/N / dΔW = 2 ΔW G / N
    m1, m2 = np.zeros_like(v), np.zeros_like(v)
    b1, b2, eps = 0.9, 0.999, 1e-8
    warm = int(WARMUP * iterations)
    decided, still = v >= 0.0, 0
    t = 0
    for t in range(iterations):
        h, sig, raw = _h(v)
        q = floor + h
        inside = (q >= lo) & (q <= hi)
        dw = scale32 * np.clip(q, lo, hi) - w32
        grad = np.matmul(dw, g) * scale32 * inside
        if t >= warm:
            rel = (t - warm) / max(1, iterations - warm)
            beta = BETA[1] + (BETA[0] - BETA[1]) * (1.0 - rel)
            a = 2.0 * h - 1.0
            grad -= f(lam * 2.0 * beta) * np.abs(a) ** f(beta - 1.0) * np.sign(a)
        live = (raw > 0.0) & (raw < 1.0)
        grad *= sig * (1.0 - sig) * f(ZETA - GAMMA) * live
        m1 = b1 * m1 + (1 - b1) * grad
        m2 = b2 * m2 + (1 - b2) * grad * grad
        v -= f(LEARNING_RATE) * (m1 / f(1 - b1 ** (t + 1))) / (np.sqrt(m2 / f(1 - b2 ** (t + 1))) + f(eps))
        if t >= warm and (t - warm) % CHECK == CHECK - 1:
            if not live.any():  # every h at 0 or 1: zero gradient, the rounding is final
                break
            now = v >= 0.0
            still = still + CHECK if np.array_equal(now, decided) else 0
            decided = now
            if still >= PATIENCE:
                break
    return np.clip(floor + (v >= 0.0), lo, hi) + zero_point, t + 1


@dataclasses.dataclass
class _Layer:
    node: ir.Node  # in the float model
    weight: np.ndarray  # float, as stored
    axis: int  # output-channel axis
    stored: ir.Value  # the integer initializer behind the DequantizeLinear in the quantized model
    scale: np.ndarray
    zero_point: np.ndarray


def _conv_cols(x: np.ndarray, node: ir.Node, kshape: tuple[int, int], group: int) -> np.ndarray | None:
    """im2col of a 2-D Conv's input: groups × rows × (Cin/group · kh · kw)."""
    a = node.attributes
    if x.ndim != 4 or a.get_string("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        return None
    kh, kw = kshape
    sh, sw = a.get_ints("strides", [1, 1])
    dh, dw = a.get_ints("dilations", [1, 1])
    pt, pl, pb, pr = a.get_ints("pads", [0, 0, 0, 0])
    x = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    win = np.lib.stride_tricks.sliding_window_view(x, ((kh - 1) * dh + 1, (kw - 1) * dw + 1), axis=(2, 3))
    win = win[:, :, ::sh, ::sw, ::dh, ::dw]  # B, C, Ho, Wo, kh, kw
    b, c, ho, wo = win.shape[:4]
    win = win.reshape(b, group, c // group, ho, wo, kh, kw).transpose(1, 0, 3, 4, 2, 5, 6)
    return win.reshape(group, b * ho * wo, (c // group) * kh * kw)


def _rows(x: np.ndarray, layer: _Layer, rng: np.random.Generator, cap: int) -> np.ndarray | None:
    node = layer.node
    if node.op_type == "Conv":
        group = node.attributes.get_int("group", 1)
        cols = _conv_cols(x, node, layer.weight.shape[2:], group) if layer.weight.ndim == 4 else None
    elif node.op_type == "Gemm" and node.attributes.get_int("transA", 0):
        cols = x.T[None]
    else:
        cols = x.reshape(1, -1, x.shape[-1])
    if cols is not None and cols.shape[1] > cap:
        cols = cols[:, rng.choice(cols.shape[1], cap, replace=False)]
    return cols


def _grouped(w: np.ndarray, layer: _Layer) -> np.ndarray:
    """The float weight as groups × Cout/group × K (the rows each output channel dots with an input row)."""
    if layer.node.op_type == "Conv":
        g = layer.node.attributes.get_int("group", 1)
        return w.reshape(g, w.shape[0] // g, -1)
    return np.moveaxis(w, layer.axis, 0).reshape(1, w.shape[layer.axis], -1)


def _ungrouped(q: np.ndarray, layer: _Layer) -> np.ndarray:
    w = layer.weight
    if layer.node.op_type == "Conv":
        return q.reshape(w.shape)
    moved = np.moveaxis(w, layer.axis, 0).shape
    return np.moveaxis(q.reshape(moved), 0, layer.axis)


def layers(float_model: ir.Model, q: ir.Model, weights) -> list[_Layer]:
    """The plan's weighted layers (``weights``: :class:`~bushu.quant.annotate.WeightSpec`) that AdaRound handles."""
    fnodes = {n.name: n for n in float_model.graph}
    qnodes = {n.name: n for n in q.graph}
    out = []
    for ws in weights:
        node, qn = fnodes.get(ws.node), qnodes.get(ws.node)
        if node is None or qn is None or node.op_type not in ("Conv", "Gemm", "MatMul"):
            continue
        dq = qn.inputs[1].producer() if qn.inputs[1] is not None else None
        w = node.inputs[1].const_value
        if dq is None or dq.op_type != "DequantizeLinear" or w is None or dq.inputs[0].const_value is None:
            continue
        w = w.numpy().astype(np.float64)
        if node.op_type == "MatMul" and w.ndim != 2:
            continue
        scale = dq.inputs[1].const_value.numpy().astype(np.float64)
        zp = dq.inputs[2].const_value.numpy().astype(np.float64) if len(dq.inputs) > 2 and dq.inputs[2] else \
            np.zeros_like(scale)
        out.append(_Layer(node, w, ws.axis, dq.inputs[0], scale.reshape(-1), zp.reshape(-1)))
    return out


def apply(float_model: ir.Model, q: ir.Model, weights, feeds, qt: QType, *, iterations: int = ITERATIONS,
          seed: int = 0, show_progress: bool = False) -> str:
    """Re-round the integer weights of ``q`` (converted from ``float_model`` with ``weights`` of its plan, weights
    stored as ``qt``) on the layers' float inputs over ``feeds``; returns a note for the result."""
    found = layers(float_model, q, weights)
    if not found:
        return "AdaRound: no Conv/Gemm/MatMul layer with quantized constant weights"
    rng = np.random.default_rng(seed)
    names = sorted({layer.node.inputs[0].name for layer in found})
    sess = exposed(float_model, names)
    grams: list[np.ndarray | None] = [None] * len(found)
    rows = [0] * len(found)
    cap = -(-MAX_ROWS // max(1, len(feeds)))  # rows per feed and layer
    for feed in feeds:
        outs = sess.run(feed, names)
        for i, layer in enumerate(found):
            cols = _rows(outs[layer.node.inputs[0].name].astype(np.float64), layer, rng, cap)
            if cols is None:
                grams[i] = None if rows[i] == 0 else grams[i]
                continue
            g = np.matmul(cols.transpose(0, 2, 1), cols)
            grams[i] = g if grams[i] is None else grams[i] + g
            rows[i] += cols.shape[1]
    # fewer input rows than weights per output channel: the Gram matrix is singular, the learned rounding would fit
    # those few rows and nothing else (MobileNetV3's 1024→1000 head on 8 feeds); nearest rounding stays
    few = [i for i, g in enumerate(grams) if g is not None and rows[i] < g.shape[-1]]
    for i in few:
        grams[i] = None
    with _one_thread():
        changed, done, steps = _learn_all(found, grams, rows, qt, iterations, show_progress)
    total = sum(layer.weight.size for layer in found)
    skipped = f"; {len(few)} left at nearest rounding (fewer input rows than weights per channel)" if few else ""
    return (f"AdaRound: {done} layers re-rounded on {len(feeds)} feeds ({changed} of {total} weights "
            f"({100 * changed / max(total, 1):.1f}%) differ from nearest rounding; "
            f"{steps // max(done, 1)} of at most {iterations} steps per layer on average){skipped}")


def _learn_all(found: list[_Layer], grams, rows, qt: QType, iterations: int, show: bool) -> tuple[int, int, int]:
    """Learn every layer's rounding; layers whose grouped weights have the same shape (depthwise convs of one
    kernel size, say) are stacked along the group axis and learn in one batched product."""
    batches: dict[tuple[int, ...], list[tuple[_Layer, np.ndarray, np.ndarray, np.ndarray]]] = {}
    for layer, gram, n in zip(found, grams, rows):
        if gram is None:
            continue
        w = _grouped(layer.weight, layer)
        shape = (w.shape[0], w.shape[1], 1)
        cout = w.shape[0] * w.shape[1]
        scale = np.broadcast_to(layer.scale, (cout,)).reshape(shape)
        zp = np.broadcast_to(layer.zero_point, (cout,)).reshape(shape)
        batches.setdefault(w.shape[1:], []).append((layer, w, scale, zp, gram / n))
    changed = done = steps = 0
    for batch in progress(list(batches.values()), desc="AdaRound", enabled=show):
        w, scale, zp, gram = (np.concatenate([b[i] for b in batch]) for i in range(1, 5))
        qw, took = _learn(w, scale, zp, qt, gram, 1, iterations=iterations)
        steps += took * len(batch)
        at = 0
        for layer, lw, *_ in batch:
            new = _ungrouped(qw[at:at + len(lw)], layer).astype(np_dtype(qt))
            at += len(lw)
            old = layer.stored.const_value.numpy()
            changed += int(np.count_nonzero(new != old))
            layer.stored.const_value = ir.tensor(new, name=layer.stored.name)
            done += 1
    return changed, done, steps
