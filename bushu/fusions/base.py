"""The small matcher every fusion rule uses: onnxscript's pattern engine, plus the bookkeeping the report needs.

A rule subclasses :class:`Fusion` and defines

- ``pattern(self, op, x, ...)``: the subgraph, in ONNX ops, with the math as a comment above it;
- ``refuse(self, context, **bindings) -> str | None``: why a structural match must not be fused (a constant with
  the wrong value, an unknown rank...), or None to fuse;
- ``replace(self, op, **bindings)``: the standard ONNX op(s) that compute the same thing.

``op_type``/``since`` name the op it produces and the opset that has it: a candidate in a model whose opset is
older is refused with a note saying which ``--opset`` would allow it. :func:`apply` runs rules to a fixed point
(inside If/Loop/Scan bodies too) and reports, per rule file, how many candidates were fused and why the others
were refused (a candidate is counted once however many commuted variants of the pattern reached it).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import pattern
from onnxscript.rewriter._basics import MatchResult

from ..passes._rules import apply_rules
from ..passes.registry import PassContext, graphs


# A refusal that only says a bound value isn't a constant is what a commuted variant of the pattern gives when it
# bound the wrong input there (``Add(three, x)`` read as ``Add(x, three)``): it says nothing about the block.
_VAGUE = ("not a scalar constant", "not a constant", "not constant")


def specificity(reason: str) -> int:
    """How much a refusal says about the candidate block: 0 for a binding miss (a commuted variant's), 1 else."""
    return 0 if any(v in reason for v in _VAGUE) else 1


class Tally:
    """Per-run outcome of one rule file: refused candidates by root node, each with the most specific reason any
    variant gave (the first of equally specific ones): the variant that bound the block as written says why."""

    def __init__(self) -> None:
        self.refused: dict[int, str] = {}
        self.fused: set[int] = set()

    def refuse(self, root: ir.Node, reason: str) -> None:
        if id(root) in self.fused:
            return
        known = self.refused.get(id(root))
        if known is None or specificity(reason) > specificity(known):
            self.refused[id(root)] = reason

    def fuse(self, root: ir.Node) -> None:
        self.fused.add(id(root))
        self.refused.pop(id(root), None)


class Fusion(pattern.RewriteRuleClassBase):
    op_type = ""
    since = 1

    def __init__(self, tally: Tally) -> None:
        super().__init__(name=type(self).__name__)
        self.tally = tally
        self._root: ir.Node | None = None
        self._given: set[str] = set()

    def refuse(self, context, **bindings) -> str | None:
        return None

    def replace(self, op, **bindings):
        """Write the fused standard op(s) with the tape ``op``; every concrete rule overrides this (abstract)."""
        raise NotImplementedError(f"{type(self).__name__} must define replace()")

    def check(self, context, **bindings) -> MatchResult:
        opset = context.model.opset_imports.get("", context.model.opset_imports.get("ai.onnx", 1))
        if opset < self.since:
            reason = f"{self.op_type} needs opset {self.since}, the model has {opset} (rerun with --opset {self.since})"
        else:
            reason = self.refuse(context, **bindings)
        if reason:
            self.tally.refuse(context.root, reason)
            return MatchResult().fail(reason)
        self._root, self._graph = context.root, context.graph_or_function
        return MatchResult()

    def fresh_name(self, stem: str) -> str:
        """An initializer name unused in the matched graph (onnxscript would overwrite a clashing one)."""
        taken = set(self._graph.initializers) if isinstance(self._graph, ir.Graph) else set()
        name, i = stem, 0
        while name in taken or name in self._given:
            i += 1
            name = f"{stem}_{i}"
        self._given.add(name)
        return name

    def rewrite(self, op, **bindings):
        self.tally.fuse(self._root)
        return self.replace(op, **bindings)


def apply(model: ir.Model, ctx: PassContext, name: str, rules: Sequence[type[Fusion]], anchors: set[str]) -> int:
    """Run ``rules`` (commuted variants included) to a fixed point; note the refusals under ``name``.

    ``anchors``: op types every pattern contains; a model that lacks one of them is skipped (matching every commuted
    variant against every node costs seconds on a large model, and building the variants 10 ms on a small one)."""
    if not anchors <= {n.op_type for g in graphs(model) for n in g}:
        return 0
    tally = Tally()
    count = apply_rules(model, [r.rule(tally) for r in rules], commute=True)
    for reason, n in sorted(Counter(tally.refused.values()).items()):
        ctx.note(f"{name}: refused {n} candidate{'s' if n > 1 else ''}: {reason}")
    return count


# --- helpers for refuse() -------------------------------------------------------------------------------------

def scalar(value: ir.Value | None) -> float | None:
    """The value of a one-element constant, else None."""
    if value is None:
        return None
    t = ir.convenience.get_const_tensor(value)
    if t is None or t.size != 1:
        return None
    return float(np.asarray(t.numpy()).reshape(-1)[0])


def near(value: ir.Value | None, target: float, what: str, rtol: float = 1e-3) -> str | None:
    """None when ``value`` is a scalar constant close to ``target``; else the reason it isn't."""
    v = scalar(value)
    if v is None:
        return f"{what} is not a scalar constant"
    if not np.isclose(v, target, rtol=rtol, atol=1e-7):
        return f"{what} is {v:g}, not {target:g}"
    return None


def is_float(value: ir.Value) -> bool:
    return value.dtype in (ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.DOUBLE, ir.DataType.BFLOAT16)
