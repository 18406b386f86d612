"""Run onnxscript rewrite rules as one of our passes (they already recurse into If/Loop/Scan bodies).

onnxscript tries every rule (every commuted variant of it, with ``commute=True``) at every node, and a failed try
still builds a match object: on a 750-node transformer with the fusion rules that is ~180k tries and most of a
second per pass. Every try starts by comparing the node with the pattern's root node, so a rule whose root op
type differs from the node's can never match there: :func:`apply_rules` gates each rule on its root op type and
skips the ruleset when no node has one (same rewrites, a fraction of the tries).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import onnx_ir as ir
from onnxscript.rewriter import pattern
from onnxscript.rewriter._pattern_ir import StringConstantPattern

from .registry import graphs

# onnxscript tags every node it writes with the rule's name; the tag says nothing to our users and would make
# outputs differ by rule name only.
RULE_TAG = "pkg.onnxscript.rewriter.rule_name"


def root_op(rule: pattern.RewriteRule) -> str | None:
    """The op type of the node a rule's pattern ends at (where every match attempt starts), or None when it has
    several output nodes or a non-constant op pattern."""
    target = getattr(rule, "_target_pattern", None)
    nodes = getattr(target, "output_nodes", None)
    if not nodes or len(nodes) != 1 or not isinstance(nodes[0].op, StringConstantPattern):
        return None
    return nodes[0].op.value()


def _gate(rule: pattern.RewriteRule, op_type: str) -> pattern.RewriteRule:
    """A copy of ``rule`` that declines nodes of another op type before building a match (the copy's instance
    attribute shadows the method; the caller's rule is left as it is)."""
    gated = copy.copy(rule)

    def try_rewrite(model, graph_or_function, node, **kw):
        return rule.try_rewrite(model, graph_or_function, node, **kw) if node.op_type == op_type else None

    gated.try_rewrite = try_rewrite
    return gated


def apply_rules(model: ir.Model, rules: Sequence[pattern.RewriteRule], *, commute: bool = False) -> int:
    """Apply ``rules`` until none fires (each application removes nodes, so this ends); returns the rewrite count.

    Each sweep runs only the rules whose root op type is in the model at that moment (a rewrite may write a node
    another rule starts from, so this is decided again before every sweep)."""
    ruleset = pattern.RewriteRuleSet(list(rules), commute=commute)
    roots = [root_op(r) for r in ruleset.rules]
    gated = None if None in roots else [(op, _gate(r, op)) for r, op in zip(ruleset.rules, roots)]
    total = 0
    while True:
        if gated is not None:
            present = {n.op_type for g in graphs(model) for n in g}
            ruleset.rules = [r for op, r in gated if op in present]
            if not ruleset.rules:
                return total
        n = ruleset.apply_to_model(model)
        total += n
        if n == 0:
            return total
