"""Inline an ``If`` whose condition is a constant: its taken branch's nodes replace it.

The condition is constant when it is an initializer or a Constant node's output — typically after an input was
bound to a value (``bushu edit --bind sr=16000``) and constant folding evaluated the comparison. Then:
1. the taken branch's nodes move, in their order, to the If's place in the graph that holds it; the branch's own
   initializers move with them;
2. a moved value (or node) whose name is held anywhere else in the model (the other branch, a sibling's body, the
   outer graph) gets a unique one; values the branch read from outer scopes are the same values, untouched;
3. the If's outputs become the branch's outputs: a value computed by a moved node takes the If output's name and
   readers; a branch output that is an outer-scope value, an initializer, or the same value twice goes through an
   ``Identity`` under the If output's name (eliminate-no-ops removes it where that is legal).
Bodies nested in the taken branch move with it, and are inlined in turn when their condition is constant.
onnxscript's constant folder does the same inside fold-constants, but renames only the branch outputs (an outer
value a branch returns would get the If output's name); fold-constants leaves ``If`` nodes to this pass.
"""

from __future__ import annotations

import onnx_ir as ir

from ._rewire import const
from .registry import PassContext, graphs, register


def taken_branch(node: ir.Node) -> ir.Graph | None:
    """The body an If with a constant condition runs, else None."""
    if node.op_type != "If" or node.domain not in ("", "ai.onnx") or not node.inputs or node.inputs[0] is None:
        return None
    cond = const(node.inputs[0])
    if cond is None or cond.size != 1:
        return None
    attr = node.attributes.get("then_branch" if bool(cond.reshape(-1)[0]) else "else_branch")
    if attr is None or attr.type != ir.AttributeType.GRAPH:
        return None
    return attr.as_graph()


def _names_outside(model: ir.Model, branch: ir.Graph) -> tuple[set[str], set[str]]:
    """Value and node names held in the model outside ``branch``'s own values and nodes (its nested bodies count
    as outside: they keep their names, so a moved value must not take one)."""
    values: set[str] = set()
    nodes: set[str] = set()
    for g in graphs(model):
        if g is branch:
            continue
        values.update(v.name for v in [*g.inputs, *g.initializers.values()] if v.name)
        for n in g:
            nodes.add(n.name or "")
            values.update(v.name for v in n.outputs if v.name)
    return values, nodes


def _fresh(name: str, taken: set[str]) -> str:
    i = 1
    while f"{name}_{i}" in taken:
        i += 1
    taken.add(f"{name}_{i}")
    return f"{name}_{i}"


def inline(model: ir.Model, node: ir.Node, branch: ir.Graph) -> None:
    """Replace ``node`` (an If of ``model``) in its graph by the nodes of ``branch``, one of its bodies."""
    graph = node.graph
    assert graph is not None
    outside_values, outside_nodes = _names_outside(model, branch)
    formal = list(branch.outputs)
    branch.outputs.clear()
    inits = list(branch.initializers.values())
    branch.initializers.clear()
    moved = list(branch)
    branch.remove(moved)
    # Every name a moved value or node will hold, so a fresh name collides with none of them either.
    values = outside_values | {v.name for v in inits if v.name} | {v.name for n in moved for v in n.outputs if v.name}
    nodes = outside_nodes | {n.name for n in moved if n.name}
    for v in inits:
        if v.name in outside_values:
            v.name = _fresh(v.name, values)
        graph.register_initializer(v)
    for n in moved:
        for v in n.outputs:
            if v.name in outside_values:
                v.name = _fresh(v.name, values)
        if n.name and n.name in outside_nodes:
            n.name = _fresh(n.name, nodes)
    graph.insert_before(node, moved)
    produced = {id(v) for n in moved for v in n.outputs}
    claimed: set[int] = set()
    for io, bo in zip(node.outputs, formal):
        name = io.name
        if id(bo) in produced and id(bo) not in claimed:
            claimed.add(id(bo))
            bo.type = io.type if bo.type is None else bo.type
            bo.shape = io.shape if bo.shape is None else bo.shape
            io.replace_all_uses_with(bo, replace_graph_outputs=True)
            io.name = None
            bo.name = name
            continue
        ident = ir.node("Identity", [bo], name=_fresh(f"{node.name or 'If'}_output", nodes))
        out = ident.outputs[0]
        out.type, out.shape = io.type or bo.type, io.shape or bo.shape
        graph.insert_before(node, ident)
        io.replace_all_uses_with(out, replace_graph_outputs=True)
        io.name = None
        out.name = name
    graph.remove(node, safe=True)


@register("inline-constant-if", "replace an If whose condition is a constant by the nodes of its taken branch",
          "cleanup")
def run(model: ir.Model, ctx: PassContext) -> int:
    count = 0
    # One at a time, looking again after each: an inlined body may hold Ifs whose condition is constant, and the
    # Ifs of the branch not taken are gone with it.
    while (found := next(((n, b) for g in graphs(model) for n in g if (b := taken_branch(n)) is not None),
                         None)) is not None:
        inline(model, *found)
        count += 1
    return count
