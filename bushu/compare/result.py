"""The results of :func:`bushu.compare.compare`: per-output diffs, and the layer-wise diffs with the first divergence."""

from __future__ import annotations

import dataclasses

from ..results import Result, fmt_table
from .metrics import OutputDiff, Tolerance


def _row(d: OutputDiff) -> list[str]:
    def opt(x):
        return "" if x is None else f"{x:.3f}"

    return [d.name, "pass" if d.passed else "FAIL", f"{d.max_abs:.3g}", f"{d.max_rel:.3g}", f"{d.mean_abs:.3g}",
            f"{d.cosine:.6f}", f"{d.snr_db:.1f}", opt(d.top1), opt(d.top5), d.note or ""]


_HEADER = ["tensor", "", "max_abs", "max_rel", "mean_abs", "cosine", "snr_db", "top1", "top5", ""]


@dataclasses.dataclass(frozen=True)
class TensorDiff(Result):
    """One intermediate tensor: the node that produced it (in the candidate model) and its diff, judged against the
    tolerance scaled to the tensor (``tolerance.scaled(max |reference|)``)."""

    kind = "tensor_diff"
    node: str
    op_type: str
    diff: OutputDiff

    def __bool__(self) -> bool:
        return self.diff.passed

    def __str__(self) -> str:
        return f"{self.node} ({self.op_type}) -> {self.diff}"


HIDDEN_BY_EXPOSING = ("the outputs differ, but with every tensor exposed no node diverges: the engine fuses across "
                      "the exposed tensors and the fault is in a fused kernel; `bushu reduce` locates it by "
                      "bisecting over prefixes of the graph")


@dataclasses.dataclass(frozen=True)
class Divergence(Result):
    """A node whose output is out of tolerance while every compared tensor it reads from is within tolerance."""

    kind = "divergence"
    node: str
    op_type: str
    outputs: tuple[str, ...]  # its outputs that are out of tolerance
    inputs: tuple[str, ...]  # the compared tensors upstream of it (all within tolerance)
    changed_weights: tuple[str, ...] = ()  # weights it reads whose values differ between two models

    def __str__(self) -> str:
        s = f"node '{self.node}' ({self.op_type}) diverges at {', '.join(self.outputs)}"
        return s + (f" (its weights differ: {', '.join(self.changed_weights)})" if self.changed_weights else "")


@dataclasses.dataclass(frozen=True)
class LayerwiseResult(Result):
    """Every compared intermediate tensor in the candidate's topological order, the first divergent node and every
    other node where a divergence starts; truthy when no tensor is out of tolerance."""

    kind = "layerwise"
    tensors: tuple[TensorDiff, ...]
    first_divergence: Divergence | None
    divergences: tuple[Divergence, ...]
    skipped: tuple[str, ...]  # why some tensors were not compared

    def __bool__(self) -> bool:
        return all(self.tensors)

    def __str__(self) -> str:
        bad = sum(not t for t in self.tensors)
        head = f"{len(self.tensors)} tensors compared, {bad} out of tolerance"
        return head + (f"; first divergent {self.first_divergence}" if self.first_divergence else "")

    def render(self, limit: int = 40) -> str:
        """The first divergence and the tensors around it (``limit`` rows: failing ones first in order)."""
        lines = [str(self)]
        if self.divergences[1:]:
            lines.append("other divergences: " + "; ".join(str(d) for d in self.divergences[1:]))
        lines += [f"note: {s}" for s in self.skipped]
        rows = [t for t in self.tensors if not t][:limit] or list(self.tensors[-limit:])
        table = [[t.node, t.op_type, *_row(t.diff)] for t in rows]
        lines += ["", fmt_table(table, ["node", "op", *_HEADER])]
        return "\n".join(lines)


@dataclasses.dataclass(frozen=True)
class CompareResult(Result):
    """Outputs of a candidate against a reference over ``samples`` feeds; truthy when every output passed."""

    kind = "compare"
    reference: str
    candidate: str
    samples: int
    tolerance: Tolerance
    outputs: tuple[OutputDiff, ...]
    layerwise: LayerwiseResult | None = None

    def __bool__(self) -> bool:
        return all(self.outputs)

    def __str__(self) -> str:
        failed = [o.name for o in self.outputs if not o]
        verdict = "PASS" if self else f"FAIL ({', '.join(failed)})"
        s = f"{self.candidate} vs {self.reference}: {verdict} over {self.samples} sample(s)"
        if self.layerwise and self.layerwise.first_divergence:
            s += f"; first divergent {self.layerwise.first_divergence}"
        return s

    def render(self) -> str:
        t = self.tolerance
        lines = [f"reference  {self.reference}", f"candidate  {self.candidate}",
                 f"tolerance  atol {t.atol:g}  rtol {t.rtol:g}  min cosine {t.min_cosine:g}  ({self.samples} sample(s))",
                 "", fmt_table([_row(o) for o in self.outputs], _HEADER)]
        if self.layerwise is not None:
            lines += ["", "layerwise: " + self.layerwise.render()]
            if not self and self.layerwise.first_divergence is None:
                lines += [HIDDEN_BY_EXPOSING]
        lines += ["", "PASS" if self else "FAIL"]
        return "\n".join(lines)
