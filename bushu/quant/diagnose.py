"""Which layers break accuracy: per-layer sensitivity, per-tensor error along the graph, first divergent node.

For every quantized weighted layer: the output SNR when that layer *alone* is quantized, and when it alone is
left in float (all others quantized) — the gain over the fully quantized model ranks the layers. Along the graph:
the SNR and cosine of each quantized tensor of the fully quantized model against the float model, and the first
node whose output falls below ``min_cosine`` while everything it reads stays above (bushu.compare's rule).
"""

from __future__ import annotations

import dataclasses

from ..compare.layerwise import first_divergence
from ..compare.metrics import Tolerance, diff, merge
from ..compare.result import Divergence
from ..progress import progress
from ..results import Result, fmt_table
from .calibrate import exposed
from .static import Session

MIN_COSINE = 0.999  # ~27 dB: 8-bit rounding alone gives ~40 dB, so a tensor below this lost more than rounding


@dataclasses.dataclass(frozen=True)
class LayerSensitivity:
    node: str
    op_type: str
    alone_snr_db: float  # output SNR with only this layer quantized
    float_snr_db: float  # output SNR with only this layer left in float
    gain_db: float  # float_snr_db minus the fully quantized model's SNR: what keeping it in float buys


@dataclasses.dataclass(frozen=True)
class TensorError:
    tensor: str
    snr_db: float
    cosine: float


@dataclasses.dataclass(frozen=True)
class Diagnosis(Result):
    """Ranked layers (most sensitive first), per-tensor errors in graph order, the first divergent node."""

    kind = "quant_diagnosis"
    full_snr_db: float
    layers: tuple[LayerSensitivity, ...]
    tensors: tuple[TensorError, ...]
    first_divergence: Divergence | None

    def __str__(self) -> str:
        top = self.layers[0].node if self.layers else "none"
        fd = str(self.first_divergence) if self.first_divergence else "no node below cosine 0.999"
        return f"fully quantized SNR {self.full_snr_db:.1f} dB; most sensitive layer {top}; {fd}"

    def render(self, limit: int = 15) -> str:
        rows = [[i + 1, s.node, s.op_type, f"{s.gain_db:+.1f}", f"{s.float_snr_db:.1f}", f"{s.alone_snr_db:.1f}"]
                for i, s in enumerate(self.layers[:limit])]
        out = [str(self), "", fmt_table(rows, ["#", "layer", "op", "gain dB", "SNR if float", "SNR if alone"])]
        worst = sorted(self.tensors, key=lambda t: t.snr_db)[:5]
        if worst:
            out += ["", "lowest-SNR tensors: " + ", ".join(f"{t.tensor} {t.snr_db:.1f} dB" for t in worst)]
        return "\n".join(out)

    def ranked(self) -> list[str]:
        return [s.node for s in self.layers]


def _snr(session: Session, q) -> float:
    return session.score(q, user_metric=False).snr_db


def sensitivity(session: Session, method: str, *, alone: bool = True) -> tuple[float, list[LayerSensitivity]]:
    """Per-layer sensitivity, most sensitive first; ``alone=False`` skips the quantize-one-layer-alone runs."""
    full, p = session.build(method=method)
    full_snr = _snr(session, full)
    layers = [w.node for w in p.weights]
    ops = {n.name: n.op_type for n in session.model.graph}
    out = []
    for name in progress(layers, desc="sensitivity", enabled=session.config.progress):
        f_snr = _snr(session, session.build(frozenset([name]), method)[0])
        a_snr = _snr(session, session.build(frozenset(layers) - {name}, method)[0]) if alone else float("nan")
        out.append(LayerSensitivity(name, ops.get(name, "?"), a_snr, f_snr, f_snr - full_snr))
    out.sort(key=lambda s: -s.gain_db)
    return full_snr, out


def tensor_errors(session: Session, method: str, samples: int = 2) -> tuple[list[TensorError], Divergence | None]:
    q, p = session.build(method=method)
    names = [n for n in p.activations if any(v.name == n for node in q.graph for v in node.outputs)]
    feeds = session.heldout[:samples]
    ref_sess, q_sess = exposed(session.model, names), exposed(q, names)
    per: dict[str, list] = {n: [] for n in names}
    for f in feeds:
        a, b = q_sess.run(f, names), ref_sess.run(f, names)
        for n in names:
            per[n].append(diff(a[n], b[n], name=n, tol=Tolerance(min_cosine=0.0)))
    errs = []
    order = {v.name: i for i, node in enumerate(q.graph) for v in node.outputs}
    for n in sorted(names, key=lambda n: order.get(n, 0)):
        m = merge(per[n])
        errs.append(TensorError(n, m.snr_db, m.cosine))
    passed = {e.tensor: bool(e.cosine >= MIN_COSINE) for e in errs}
    return errs, first_divergence(q.graph, passed)


def diagnose(session: Session, method: str | None = None) -> Diagnosis:
    method = method or session.config.method
    full_snr, layers = sensitivity(session, method)
    tensors, fd = tensor_errors(session, method)
    return Diagnosis(full_snr, tuple(layers), tuple(tensors), fd)

