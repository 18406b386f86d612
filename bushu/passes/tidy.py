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


def _order_initializers(g: ir.Graph) -> None:
    """Initializers in the order the (sorted) nodes first use them, unused ones last by name: the same file whichever
    way the passes added and replaced them (verify "each" works on clones, "end" and "off" in place)."""
    order: dict[str, ir.Value] = {}
    for n in g:
        for v in n.inputs:
            # NOTE: a subgraph's node may read an outer graph's initializer: only this graph's own are ordered
            if v is not None and v.name not in order and g.initializers.get(v.name) is v:
                order[v.name] = v
    for name in sorted(g.initializers):
        order.setdefault(name, g.initializers[name])
    if list(order) != list(g.initializers):
        g.initializers.clear()
        for v in order.values():
            g.initializers.add(v)


def tidy(model: ir.Model) -> None:
    for g in graphs(model):
        for v in [*g.inputs, *g.initializers.values()]:
            _strip(v.metadata_props)
        for n in g:
            _strip(n.metadata_props)
            for v in n.outputs:
                _strip(v.metadata_props)
    TopologicalSortPass()(model)
    for g in graphs(model):
        if isinstance(g, ir.Graph):
            _order_initializers(g)
