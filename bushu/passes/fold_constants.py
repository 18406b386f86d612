"""Constant folding, shape computations included, with a size cap.

Reuses onnxscript's folder, which evaluates every node whose inputs are all constant (Constant nodes,
initializers that are not graph inputs), and turns ``Shape`` of a value with static dims into a constant, so
Shape/Gather/Unsqueeze/Concat/Reshape chains on static dims collapse. Two caps keep folding from inflating the
file: ``ConstantOfShape``/``Expand``/``Tile`` fold only when their result is tiny (``EXPANSION_LIMIT``), and any
other result above ``PassOptions.fold_size_limit`` elements stays computed unless it replaces at least as many
constant elements. Each fold a cap refused is noted. An ``If`` with a constant condition is left to
inline-constant-if (onnxscript's folder would inline it renaming only the branch outputs).
"""

from __future__ import annotations

import logging

import numpy as np
import onnx_ir as ir
from onnxscript.optimizer import _constant_folding

from ._rewire import const, static_shape
from .inline_if import taken_branch
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


# Ops whose output can be far larger than their inputs: folded only when the result is tiny (a shape, a mask
# row), so that folding never trades a node for megabytes of file.
_EXPANDING = {"ConstantOfShape", "Expand", "Tile"}
EXPANSION_LIMIT = 1024  # elements


def _output_size(node: ir.Node) -> int | None:
    if node.op_type == "ConstantOfShape":
        shape = const(node.inputs[0])
        return None if shape is None else int(np.prod(shape))
    shape = static_shape(node.outputs[0])
    return None if shape is None else int(np.prod(shape))


def _should_fold(ctx: PassContext):
    def decide(node: ir.Node) -> bool | None:
        if node.op_type not in _EXPANDING or node.domain != "":
            return None
        if any(v is not None and v.const_value is None and ir.convenience.get_const_tensor(v) is None
               for v in node.inputs):
            return None  # not a constant: nothing to decide
        size = _output_size(node)
        if size is not None and size <= EXPANSION_LIMIT:
            return True
        ctx.note(f"fold-constants: kept '{node.outputs[0].name}' ({node.op_type}) computed: folding it would store "
                 f"{'an unknown number of' if size is None else size} elements (size cap {EXPANSION_LIMIT})")
        return False

    return decide


class _Folder(_constant_folding.FoldConstantsPass):
    """onnxscript's folder without its If inlining (:mod:`.inline_if` does it, renaming branch values). The bodies
    of an If whose condition is constant are not folded either: the branch not taken may be invalid for the bound
    values (silero VAD's 8 kHz branch at 16 kHz shapes), and is dropped by the inlining that follows."""

    def visit_node(self, node: ir.Node, root) -> None:
        if node.op_type != "If" or node.domain not in ("", "ai.onnx"):
            super().visit_node(node, root)
        elif taken_branch(node) is None:
            for attr in node.attributes.values():
                self.visit_attribute(attr)


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
        result = _Folder(
            shape_inference=False,
            input_size_limit=ctx.options.fold_size_limit,
            output_size_limit=ctx.options.fold_size_limit,
            should_fold=_should_fold(ctx),
        )(model)
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
