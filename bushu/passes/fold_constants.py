"""Constant folding, shape computations included, with a size cap.

Reuses onnxscript's folder, which evaluates every node whose inputs are all constant (Constant nodes,
initializers that are not graph inputs), and turns ``Shape`` of a value with static dims into a constant, so
Shape/Gather/Unsqueeze/Concat/Reshape chains on static dims collapse. The cap (``PassOptions.fold_size_limit``
elements) keeps a large result computed (``ConstantOfShape``/``Expand``/``Tile`` of a big shape) unless it replaces
at least as many constant elements: folding never inflates the file. Each fold the cap refused is noted.
"""

from __future__ import annotations

import logging

import onnx_ir as ir
from onnxscript.optimizer import _constant_folding

from .registry import PassContext, graphs, register

_LOGGER = "onnxscript.optimizer._constant_folding"
_SKIP_PREFIX = "Skip storing constant folded array"


class _CapNotes(logging.Handler):
    """Collects the folder's 'result too large' decisions (it reports them only as log records)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.skipped: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if isinstance(record.msg, str) and record.msg.startswith(_SKIP_PREFIX):
            self.skipped.append(str(record.args[0]) if record.args else "?")


def _node_count(model: ir.Model) -> int:
    return sum(len(g) for g in graphs(model))


@register("fold-constants", "evaluate constant subgraphs, shape chains included, within a size cap", "cleanup")
def run(model: ir.Model, ctx: PassContext) -> int:
    logger = logging.getLogger(_LOGGER)
    handler = _CapNotes()
    old_level, old_propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # the folder's debug chatter is not for the user's terminal
    before = _node_count(model)
    try:
        result = _constant_folding.fold_constants(
            model,
            onnx_shape_inference=False,
            input_size_limit=ctx.options.fold_size_limit,
            output_size_limit=ctx.options.fold_size_limit,
        )
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
        logger.propagate = old_propagate
    for name in sorted(set(handler.skipped)):
        ctx.note(f"fold-constants: kept '{name}' computed: its folded value exceeds the size cap "
                 f"({ctx.options.fold_size_limit} elements)")
    if not result.modified:
        return 0
    return max(1, before - _node_count(model))
