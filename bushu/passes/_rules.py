"""Run onnxscript rewrite rules as one of our passes (they already recurse into If/Loop/Scan bodies)."""

from __future__ import annotations

from collections.abc import Sequence

import onnx_ir as ir
from onnxscript.rewriter import pattern

# onnxscript tags every node it writes with the rule's name; the tag says nothing to our users and would make
# outputs differ by rule name only.
RULE_TAG = "pkg.onnxscript.rewriter.rule_name"


def apply_rules(model: ir.Model, rules: Sequence[pattern.RewriteRule], *, commute: bool = False) -> int:
    """Apply ``rules`` until none fires (each application removes nodes, so this ends); returns the rewrite count."""
    ruleset = pattern.RewriteRuleSet(list(rules), commute=commute)
    total = 0
    while True:
        n = ruleset.apply_to_model(model)
        total += n
        if n == 0:
            return total
