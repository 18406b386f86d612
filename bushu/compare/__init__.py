"""Compare and precision alignment: per-output metrics, pass/fail against a tolerance, and the first divergent node.

``metrics`` is pure numpy and usable on its own (the optimizer and the quantizer use it); ``layerwise`` finds where
a divergence starts; :func:`compare` runs both sides on the same feeds.
"""

from __future__ import annotations

from .core import compare
from .metrics import OutputDiff, Tolerance, diff
from .result import CompareResult, Divergence, LayerwiseResult, TensorDiff

__all__ = ["compare", "CompareResult", "Divergence", "LayerwiseResult", "OutputDiff", "TensorDiff", "Tolerance", "diff"]
