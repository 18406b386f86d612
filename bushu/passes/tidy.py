"""The last step of every pipeline: make the output deterministic and free of rewriter bookkeeping."""

from __future__ import annotations

import onnx_ir as ir
from onnx_ir.passes.common import TopologicalSortPass

from .registry import graphs

# onnxscript records, in metadata, which values a folded constant came from and which rule wrote a node: internal
# bookkeeping that would otherwise land in the user's file.
_PREFIX = "pkg.onnxscript."


def _strip(props) -> None:
    for key in [k for k in props if k.startswith(_PREFIX)]:
        del props[key]


def tidy(model: ir.Model) -> None:
    for g in graphs(model):
        for v in [*g.inputs, *g.initializers.values()]:
            _strip(v.metadata_props)
        for n in g:
            _strip(n.metadata_props)
            for v in n.outputs:
                _strip(v.metadata_props)
    TopologicalSortPass()(model)
