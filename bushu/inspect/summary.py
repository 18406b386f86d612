"""What a model is: signature, producer, opsets, node counts, op-type histogram, parameters per dtype."""

from __future__ import annotations

import collections
import math

import onnx_ir as ir

from ..engines.base import TensorSpec, dtype_name
from .result import ParamStat
from .shapes import dims


def signature(model: ir.Model) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """Graph inputs (initializers excluded) and outputs; symbolic dims by name, unknown dims ``None``."""
    inits = model.graph.initializers
    ins = tuple(TensorSpec(v.name or "", dtype_name(v.dtype), dims(v)) for v in model.graph.inputs if v.name not in inits)
    outs = tuple(TensorSpec(v.name or "", dtype_name(v.dtype), dims(v)) for v in model.graph.outputs)
    return ins, outs


def node_counts(model: ir.Model) -> tuple[int, int, dict[str, int]]:
    """(main-graph nodes, nodes inside subgraphs, op-type histogram over every graph, most common first)."""
    main = len(model.graph)
    total = 0
    hist: collections.Counter[str] = collections.Counter()
    for graph in model.graphs():
        total += len(graph)
        hist.update(n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}.{n.op_type}" for n in graph)
    return main, total - main, dict(hist.most_common())


def _constant_tensors(node: ir.Node):
    """The tensors a Constant node holds (``value``/``sparse_value``; scalar and list attributes as 1-D)."""
    for name, attr in node.attributes.items():
        if name == "value":
            tensor = attr.value  # as_tensor() would pay for a Protocol isinstance check per call
            yield dtype_name(tensor.dtype), math.prod(tensor.shape), tensor.nbytes
        elif name in ("value_float", "value_floats", "value_int", "value_ints"):
            n = len(attr.value) if name.endswith("s") else 1
            yield ("float32", n, 4 * n) if "float" in name else ("int64", n, 8 * n)


def parameters(model: ir.Model) -> tuple[ParamStat, ...]:
    """Weights per dtype: initializers of every graph and the tensors of Constant nodes (PP-OCR keeps its weights
    as Constant nodes), largest first."""
    tensors: collections.Counter[str] = collections.Counter()
    count: collections.Counter[str] = collections.Counter()
    size: collections.Counter[str] = collections.Counter()
    for graph in model.graphs():
        for value in graph.initializers.values():
            t = value.const_value
            if t is not None:
                dt = dtype_name(t.dtype)
                tensors[dt] += 1
                count[dt] += math.prod(t.shape)
                size[dt] += t.nbytes
        for node in graph:
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                for dt, n, b in _constant_tensors(node):
                    tensors[dt] += 1
                    count[dt] += n
                    size[dt] += b
    return tuple(ParamStat(dt, tensors[dt], count[dt], size[dt]) for dt in sorted(size, key=lambda k: -size[k]))
