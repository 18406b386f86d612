"""``OptimizeResult``: what ``bushu optimize`` did, as text and JSON."""

from __future__ import annotations

import dataclasses
from collections import Counter

import onnx_ir as ir

from ..results import Result, fmt_table, human_bytes
from ..timing import Latency
from .registry import graphs


def op_counts(model: ir.Model) -> dict[str, int]:
    """Nodes by op type over every graph (``domain::op`` outside the default domain), sorted by name."""
    c = Counter(n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}::{n.op_type}"
                for g in graphs(model) for n in g)
    return dict(sorted(c.items()))


def initializer_bytes(model: ir.Model) -> int:
    total = 0
    for g in graphs(model):
        for v in g.initializers.values():
            if v.const_value is not None:
                total += v.const_value.nbytes
    for g in graphs(model):
        for n in g:
            attr = n.attributes.get("value") if n.op_type == "Constant" else None
            if attr is not None and attr.type == ir.AttributeType.TENSOR:
                total += attr.value.nbytes  # not as_tensor(): its Protocol isinstance check is slow
    return total


@dataclasses.dataclass(frozen=True)
class Step:
    """One pass of the pipeline: how many rewrites it made and whether they were kept."""

    name: str
    rewrites: int
    seconds: float
    status: str  # kept | unchanged | rolled back | crashed
    reason: str | None = None  # why it was rolled back
    divergence: str | None = None  # the first divergent node, when it was rolled back


@dataclasses.dataclass(frozen=True)
class OptimizeResult(Result):
    """Truthy when the output passed ``onnx.checker`` and (unless verification was off) matched the original."""

    kind = "optimize"
    model: str
    output: str | None
    level: str
    verify: str
    opset_before: int
    opset_after: int
    nodes_before: dict[str, int]
    nodes_after: dict[str, int]
    initializer_bytes_before: int
    initializer_bytes_after: int
    steps: tuple[Step, ...]
    notes: tuple[str, ...]
    checker_error: str | None
    verify_error: str | None
    latency_before: Latency | None
    latency_after: Latency | None
    seconds: float

    def __bool__(self) -> bool:
        return self.checker_error is None and self.verify_error is None

    @property
    def fired(self) -> dict[str, int]:
        """Rewrites kept, by pass name (a pass that runs twice in the pipeline is summed)."""
        out: Counter = Counter()
        for s in self.steps:
            if s.status == "kept":
                out[s.name] += s.rewrites
        return dict(out)

    @property
    def rolled_back(self) -> tuple[Step, ...]:
        return tuple(s for s in self.steps if s.status in ("rolled back", "crashed"))

    def to_dict(self):
        return {**super().to_dict(), "fired": self.fired, "rolled_back": [s.name for s in self.rolled_back]}

    def __str__(self) -> str:
        nb, na = sum(self.nodes_before.values()), sum(self.nodes_after.values())
        s = (f"{self.model}: {nb} -> {na} nodes, {human_bytes(self.initializer_bytes_before)} -> "
             f"{human_bytes(self.initializer_bytes_after)} weights, {len(self.fired)} passes fired")
        if self.rolled_back:
            s += f", {len(self.rolled_back)} rolled back ({', '.join(x.name for x in self.rolled_back)})"
        if self.latency_before and self.latency_after:
            s += f", ORT {self.latency_before.median_ms:.3f} -> {self.latency_after.median_ms:.3f} ms"
        if self.checker_error:
            s += f"; onnx.checker FAILED: {self.checker_error}"
        if self.verify_error:
            s += f"; outputs differ: {self.verify_error}"
        return s

    def render(self) -> str:
        ops = sorted(set(self.nodes_before) | set(self.nodes_after))
        rows = [[op, self.nodes_before.get(op, 0), self.nodes_after.get(op, 0)] for op in ops
                if self.nodes_before.get(op, 0) != self.nodes_after.get(op, 0)]
        rows.append(["total", sum(self.nodes_before.values()), sum(self.nodes_after.values())])
        steps = [[s.name, s.status, s.rewrites, f"{s.seconds:.2f}"] for s in self.steps]
        out = [f"model    {self.model}" + (f" -> {self.output}" if self.output else ""),
               f"level    {self.level}, verify {self.verify}, opset {self.opset_before}"
               + (f" -> {self.opset_after}" if self.opset_after != self.opset_before else ""),
               f"weights  {human_bytes(self.initializer_bytes_before)} -> {human_bytes(self.initializer_bytes_after)}",
               "", fmt_table(rows, ["op", "before", "after"]), "", fmt_table(steps, ["pass", "status", "rewrites", "s"])]
        for s in self.rolled_back:
            out.append(f"rolled back {s.name}: {s.reason}" + (f"; first divergence: {s.divergence}" if s.divergence else ""))
        if self.notes:
            out += ["", "notes", *(f"  {n}" for n in self.notes)]
        if self.latency_before and self.latency_after:
            out += ["", f"ORT latency before  {self.latency_before}", f"ORT latency after   {self.latency_after}"]
        out += ["", str(self)]
        return "\n".join(out)
