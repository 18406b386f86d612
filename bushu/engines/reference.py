"""The reference engine: ONNX's own evaluator (``onnx.reference.ReferenceEvaluator``), op by op in numpy.

It follows the ONNX specification literally, which makes it the judge when two optimized engines disagree; it is
also slow, single-threaded and holds every weight in memory, so models above :data:`MAX_WEIGHT_BYTES` of weights
are refused (``ReferenceEngine(max_weight_bytes=...)`` raises the limit). Engine options don't apply to it.

One fix over ONNX's evaluator: its BatchNormalization for opsets 9–13 normalizes with the *batch* statistics
whenever the ``momentum`` attribute is present, which exporters (e.g. Paddle2ONNX) always write; the specification
says a node with a single output is in inference mode and uses the running mean and variance. Found with
``bushu compare MODEL --engines ort,reference --layerwise`` on PP-OCR cls (first divergent node: its first BN).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np
import onnx_ir as ir

from ..errors import BushuError
from ..results import human_bytes
from .base import EngineOptions, model_specs

MAX_WEIGHT_BYTES = 64 * 2**20


def weight_bytes(model: ir.Model) -> int:
    """Bytes of initializers and of ``Constant`` node tensors (some exporters, e.g. Paddle2ONNX, store every weight
    as a Constant), in all graphs."""
    total = 0
    for g in [model.graph, *model.graph.subgraphs()]:
        total += sum(v.const_value.nbytes for v in g.initializers.values() if v.const_value is not None)
        for node in g:
            attr = node.attributes.get("value") if node.op_type == "Constant" else None
            if attr is not None and attr.type == ir.AttributeType.TENSOR:
                total += attr.as_tensor().nbytes
    return total


def _batch_norm_op():
    from onnx.reference.op_run import OpRun
    from onnx.reference.ops.op_batch_normalization import _batchnorm_test_mode

    class BatchNormalization(OpRun):
        """Inference mode when the node has one output (opsets 9–13) or ``training_mode`` is 0 (opset ≥ 14)."""

        op_domain = ""

        def _run(self, x, scale, bias, mean, var, epsilon=None, momentum=None, training_mode=None, **_):
            if len(self.onnx_node.output) == 1 and not training_mode:
                eps = 1e-5 if epsilon is None else epsilon
                return (_batchnorm_test_mode(x, scale, bias, mean, var, epsilon=eps),)
            raise RuntimeError("BatchNormalization in training mode: export the model in eval mode")

    return BatchNormalization


class ReferenceSession:
    engine = "reference"

    def __init__(self, evaluator, inputs, outputs):
        self.evaluator = evaluator
        self.inputs = inputs
        self.outputs = outputs

    def run(self, feeds: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        names = list(outputs) if outputs is not None else [o.name for o in self.outputs]
        try:
            res = self.evaluator.run(names, dict(feeds))
        except Exception as e:
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise BushuError(f"the reference engine failed to run the model: {msg}") from None
        return {n: np.asarray(r) for n, r in zip(names, res)}


class ReferenceEngine:
    name = "reference"
    extra = "core"

    def __init__(self, max_weight_bytes: int = MAX_WEIGHT_BYTES):
        self.max_weight_bytes = max_weight_bytes

    def available(self) -> bool:
        return True

    def load(self, model: ir.Model | str, options: EngineOptions) -> ReferenceSession:
        from onnx.reference import ReferenceEvaluator

        from .. import ir as bir

        m = bir.load(model) if isinstance(model, (str, os.PathLike)) else model
        size = weight_bytes(m)
        if size > self.max_weight_bytes:
            raise BushuError(
                f"the reference engine is for small models (up to {human_bytes(self.max_weight_bytes)} of weights) and "
                f"this one has {human_bytes(size)}: use --engine ort or openvino"
            )
        inputs, outputs = model_specs(m)
        try:
            evaluator = ReferenceEvaluator(bir.to_proto(m), new_ops=[_batch_norm_op()])
        except Exception as e:
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise BushuError(f"the reference engine can't evaluate this model: {msg}") from None
        return ReferenceSession(evaluator, inputs, outputs)
