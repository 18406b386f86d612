"""Compare and precision alignment: per-output metrics, pass/fail against a tolerance, and the first divergent node.

``metrics`` is pure numpy and usable on its own (the optimizer and the quantizer use it).
"""

from __future__ import annotations

from .metrics import OutputDiff, Tolerance, diff

__all__ = ["OutputDiff", "Tolerance", "diff"]
