"""The records ``bushu.inspect`` returns: :class:`NodeCost`, :class:`ParamStat`, :class:`InspectResult`."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from ..results import Result, fmt_table, human_bytes, human_count

if TYPE_CHECKING:
    from ..engines.base import TensorSpec
    from .problems import Problem

Dims = tuple  # of int (static), str (symbolic name) or None (unknown)



def _flops(n: float) -> str:
    """``1.46 GFLOPs``, ``0 FLOPs``."""
    c = human_count(n)
    return f"{c[:-1]} {c[-1]}FLOPs" if c[-1] in "TGMk" else f"{c} FLOPs"

@dataclasses.dataclass(frozen=True)
class NodeCost:
    """Cost of one node, named as in the model (``name`` is empty for an unnamed node; ``index`` is its position
    in its graph). ``flops``/``bytes_read``/``bytes_written`` are ``None`` when they can't be computed, and
    ``note`` then says why; for If/Loop/Scan it says how the cost was formed. ``graph`` is ``""`` for the main
    graph, else the body the node sits in (``If_0.then_branch``); body nodes are not part of the totals."""

    name: str
    op_type: str
    flops: int | None
    bytes_read: int | None
    bytes_written: int | None
    output_shapes: tuple[Dims | None, ...]
    graph: str = ""
    index: int = 0
    note: str | None = None

    @property
    def label(self) -> str:
        return self.name or f"<{self.op_type} #{self.index}>"

    @property
    def bytes(self) -> int | None:
        return None if self.bytes_read is None or self.bytes_written is None else self.bytes_read + self.bytes_written

    @property
    def known(self) -> bool:
        return self.flops is not None and self.bytes is not None


@dataclasses.dataclass(frozen=True)
class ParamStat:
    """Weights of one dtype: how many tensors, elements and bytes."""

    dtype: str
    tensors: int
    count: int
    bytes: int


def _dims(shape: Dims | None) -> str:
    if shape is None:
        return "?"
    return "x".join("?" if d is None else str(d) for d in shape) or "scalar"


@dataclasses.dataclass(frozen=True)
class InspectResult(Result):
    """What a model is and what it costs. Always truthy: inspect reports, it does not judge (``problems`` lists
    what to look at). ``unbound`` lists the inputs whose dims are still open after ``shapes``. Totals sum the main graph's nodes whose figures are known; ``unknown`` lists every node
    (bodies included) with a figure missing, so a partial total is never mistaken for a complete one."""

    kind = "inspect"
    model: str
    producer: str
    ir_version: int
    opsets: dict[str, int]
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    shapes: dict[str, Any]
    unbound: tuple[TensorSpec, ...]
    node_count: int
    subgraph_node_count: int
    op_types: dict[str, int]
    parameters: tuple[ParamStat, ...]
    total_flops: int
    total_bytes: int
    nodes: tuple[NodeCost, ...]
    unknown: tuple[NodeCost, ...]
    shape_inference_error: str | None
    engines: dict[str, str]
    problems: tuple[Problem, ...]
    top: int = dataclasses.field(default=15, repr=False, compare=False)

    def __bool__(self) -> bool:
        return True

    @property
    def parameter_count(self) -> int:
        return sum(p.count for p in self.parameters)

    @property
    def parameter_bytes(self) -> int:
        return sum(p.bytes for p in self.parameters)

    def __str__(self) -> str:
        flops = _flops(self.total_flops) + (f" ({len(self.unknown)} nodes unknown)" if self.unknown else "")
        return (f"{self.model}: {self.node_count} nodes, {human_count(self.parameter_count)} parameters "
                f"({human_bytes(self.parameter_bytes)}), {flops}, {len(self.problems)} problem(s)")

    def render(self) -> str:
        opsets = ", ".join(f"{d or 'ai.onnx'} {v}" for d, v in self.opsets.items())
        out = [f"model       {self.model}", f"producer    {self.producer or '?'}",
               f"format      IR version {self.ir_version}, opsets: {opsets}", ""]
        hdr = ["name", "dtype", "shape"]
        out += ["inputs", fmt_table([[t.name, t.dtype, _dims(t.shape)] for t in self.inputs], hdr), ""]
        out += ["outputs", fmt_table([[t.name, t.dtype, _dims(t.shape)] for t in self.outputs], hdr), ""]
        sub = f" (+ {self.subgraph_node_count} inside If/Loop/Scan bodies)" if self.subgraph_node_count else ""
        hist = ", ".join(f"{op} {n}" for op, n in self.op_types.items())
        out += [f"nodes       {self.node_count}{sub}", f"op types    {hist}", ""]
        out += [f"parameters  {self.parameter_count:,} ({human_bytes(self.parameter_bytes)}), initializers and "
                "Constant-node tensors",
                fmt_table([[p.dtype, p.tensors, f"{p.count:,}", human_bytes(p.bytes)] for p in self.parameters],
                          ["dtype", "tensors", "elements", "bytes"]), ""]
        out += self._render_cost() + [""] + self._render_problems()
        return "\n".join(out).rstrip()

    def _render_cost(self) -> list[str]:
        bound = ", ".join(f"{k}={_dims(v) if isinstance(v, (tuple, list)) else v}" for k, v in self.shapes.items())
        out = [f"cost{' at ' + bound if bound else ''}"]
        if self.shape_inference_error:
            out.append(f"  {self.shape_inference_error}")
        for t in self.unbound:
            example = "x".join(str(d) if isinstance(d, int) else "N" for d in t.shape or ())
            out.append(f"  input {t.name} has open dims [{_dims(t.shape)}]: costs that depend on them are unknown; "
                       f"bind them with --shape {t.name}:{example or '...'}")
        intensity = f", {self.total_flops / self.total_bytes:.1f} FLOPs/byte" if self.total_bytes else ""
        partial = " (known nodes only)" if any(not c.graph for c in self.unknown) else ""
        out.append(f"  {_flops(self.total_flops)}, {human_bytes(self.total_bytes)} moved{intensity}{partial}")
        top = [c for c in self.nodes if not c.graph]
        by_op: dict[str, list[int]] = {}
        for c in top:
            row = by_op.setdefault(c.op_type, [0, 0, 0, 0])
            row[0] += 1
            row[1] += c.flops or 0
            row[2] += c.bytes or 0
            row[3] += not c.known
        rows = sorted(by_op.items(), key=lambda kv: (-kv[1][1], -kv[1][2]))
        total = self.total_flops or 1
        out += ["", "by op type", fmt_table(
            [[op, n, human_count(f), f"{100 * f / total:.1f}%", human_bytes(b), u or ""]
             for op, (n, f, b, u) in rows[: self.top or None]],
            ["op", "nodes", "FLOPs", "share", "bytes", "unknown"])]
        heavy = sorted((c for c in top if c.flops), key=lambda c: -(c.flops or 0))[: self.top or None]
        out += ["", f"top {len(heavy)} nodes by FLOPs", fmt_table(
            [[c.label, c.op_type, human_count(c.flops or 0), "?" if c.bytes is None else human_bytes(c.bytes),
              " ".join(_dims(s) for s in c.output_shapes)] for c in heavy],
            ["node", "op", "FLOPs", "bytes", "output"])]
        if self.unknown:
            shown = self.unknown[: self.top or None]
            more = f" (first {len(shown)})" if len(shown) < len(self.unknown) else ""
            out += ["", f"unknown cost: {len(self.unknown)} node(s){more}", fmt_table(
                [[c.label, c.op_type, c.graph or "main", c.note or ""] for c in shown], ["node", "op", "graph", "why"])]
        return out

    def _render_problems(self) -> list[str]:
        engines = ", ".join(f"{k}: {v}" for k, v in self.engines.items()) or "none checked"
        out = [f"problems    {len(self.problems) or 'none'}", f"  engines   {engines}"]
        shown = self.problems[: self.top or None]
        out += [f"  - {p}" for p in shown]
        if len(shown) < len(self.problems):
            out.append(f"  ... and {len(self.problems) - len(shown)} more (--top 0 or --json for all)")
        return out
