"""Merge initializers with identical dtype, shape and bytes (every graph; onnx-ir's pass, which compares by a
hash and then the bytes). Only initializers that are not graph inputs are merged: an input can be overridden."""

from __future__ import annotations

import onnx_ir as ir
from onnx_ir.passes.common import DeduplicateInitializersPass

from .registry import PassContext, graphs, register


def _count(model: ir.Model) -> int:
    return sum(len(g.initializers) for g in graphs(model))


@register("dedup-initializers", "merge initializers with identical values", "cleanup")
def run(model: ir.Model, ctx: PassContext) -> int:
    before = _count(model)
    DeduplicateInitializersPass()(model)
    return before - _count(model)
