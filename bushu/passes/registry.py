"""Passes by name.

A pass is a function ``run(model: ir.Model, ctx: PassContext) -> int`` that rewrites ``model`` in place and returns
how many rewrites it made (0: the model is unchanged). It never writes into a tensor's buffer: it replaces a value's
tensor with a new one, so a snapshot that shares tensors with the model (see :mod:`bushu.passes.verify`) stays
intact. Every graph, including If/Loop/Scan bodies, gets the same treatment.

Pass modules register themselves with :func:`register` when imported; :data:`_MODULES` lists them in ``--list``
order.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections import Counter
from collections.abc import Callable

import onnx_ir as ir

from ..errors import BushuError

# Default size cap for constant folding, in elements: 512x512 float32 = 1 MiB.
FOLD_SIZE_LIMIT = 512 * 512


@dataclasses.dataclass(frozen=True)
class PassOptions:
    """What a pass may do. ``fold_size_limit``: a folded tensor above this many elements is kept computed unless it
    replaces at least as many constant elements (so folding never inflates the file)."""

    fold_size_limit: int = FOLD_SIZE_LIMIT


@dataclasses.dataclass
class PassContext:
    """Per-run state handed to every pass: the options, and notes the pass wants in the report (refused fusions,
    folds skipped by the size cap), counted by text."""

    options: PassOptions = dataclasses.field(default_factory=PassOptions)
    notes: Counter = dataclasses.field(default_factory=Counter)

    def note(self, text: str, count: int = 1) -> None:
        self.notes[text] += count


PassFn = Callable[[ir.Model, PassContext], int]


@dataclasses.dataclass(frozen=True)
class PassInfo:
    name: str
    summary: str  # one line for `bushu optimize --list`
    kind: str  # cleanup | fold | fusion
    run: PassFn


_PASSES: dict[str, PassInfo] = {}
_MODULES = [
    "shape_inference", "fold_constants", "inline_if", "no_ops", "no_op_shapes", "dead_code", "cse", "dedup_initializers",
    "lift_constants", "fold_batchnorm", "fold_conv_affine", "fold_pad", "matmul_to_gemm", "reshape_chain",
    "constant_chains", "shape_facts", "ort_shapes",
]
_FUSION_MODULES = ["layer_norm", "gelu", "hard_swish", "mish", "softplus", "rms_norm", "softmax",
                   "ort_attention", "ort_mha"]


def register(name: str, summary: str, kind: str) -> Callable[[PassFn], PassFn]:
    def deco(fn: PassFn) -> PassFn:
        _PASSES[name] = PassInfo(name, summary, kind, fn)
        return fn

    return deco


_loaded = False


def _load() -> None:
    global _loaded
    if _loaded:  # registry.get is called per step: importlib.import_module of a loaded module is still ~30 µs
        return
    _loaded = True
    for m in _MODULES:
        importlib.import_module(f"bushu.passes.{m}")
    for m in _FUSION_MODULES:
        importlib.import_module(f"bushu.fusions.{m}")


def known() -> list[PassInfo]:
    """Every registered pass, in ``--list`` order."""
    _load()
    return list(_PASSES.values())


def get(name: str) -> PassInfo:
    _load()
    if name not in _PASSES:
        raise BushuError(f"unknown pass '{name}': choose from {', '.join(_PASSES)} (see bushu optimize --list)")
    return _PASSES[name]


# The standard ONNX ops with graph attributes; nodes of other default-domain ops are not searched for subgraphs.
_CONTROL_FLOW = frozenset({"If", "Loop", "Scan", "SequenceMap"})


def graphs(model: ir.Model) -> list[ir.Graph]:
    """The main graph and every subgraph (If/Loop/Scan bodies, and graph attributes of non-standard ops),
    outermost first, depth first as onnx-ir's ``Graph.subgraphs()`` orders them — which visits every node through
    a generic recursive iterator, several times slower; this reads only the attributes that can hold graphs."""
    found = [model.graph]

    def walk(graph: ir.Graph) -> None:
        for node in graph:
            if node.op_type not in _CONTROL_FLOW and node.domain in ("", "ai.onnx"):
                continue
            for attr in node.attributes.values():
                if attr.type == ir.AttributeType.GRAPH:
                    subs = [attr.as_graph()]
                elif attr.type == ir.AttributeType.GRAPHS:
                    subs = list(attr.as_graphs())
                else:
                    continue
                for sub in subs:
                    found.append(sub)
                    walk(sub)

    walk(model.graph)
    return found
