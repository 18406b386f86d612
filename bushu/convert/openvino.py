"""ONNX → OpenVINO IR (``model.xml`` + ``model.bin``) with ``openvino.convert_model`` and ``save_model``.

Weights stay FP32 (``compress_to_fp16=False``; OpenVINO compresses to FP16 by default) so the IR can be checked
against ONNX Runtime; OpenVINO picks its own inference precision at compile time anyway.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ..engines.base import TensorSpec
from ..errors import require
from .common import ConversionError

FILES = ("model.xml", "model.bin")


def version() -> str:
    from importlib import metadata

    return f"openvino {metadata.version('openvino')}"


def convert(onnx_path: Path, out_dir: Path, *_ignored) -> list[Path]:
    ov = require("openvino", extra="openvino", feature="conversion to OpenVINO IR")
    try:
        model = ov.convert_model(str(onnx_path))
        ov.save_model(model, str(out_dir / FILES[0]), compress_to_fp16=False)
    except Exception as e:
        from ..engines.openvino import one_line

        text = str(e)
        raise ConversionError("openvino", one_line(text), _op_names(text), log=text) from None
    return [out_dir / f for f in FILES]


def _op_names(text: str) -> list[str]:
    import re

    # OpenVINO's frontend lists "-- No conversion rule found for operations: Foo, Bar"
    m = re.search(r"No conversion rule found for operations:\s*([^\n]+)", text)
    return sorted({s.strip() for s in m.group(1).split(",")}) if m else []


class IrSession:
    """Runs a saved IR on the CPU (just enough to verify a conversion; the ``openvino`` engine runs ONNX)."""

    engine = "openvino-ir"

    def __init__(self, xml: Path, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec], threads: int | None = None):
        ov = require("openvino", extra="openvino", feature="OpenVINO IR")
        config = {"INFERENCE_PRECISION_HINT": "f32"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        self._compiled = ov.Core().compile_model(str(xml), "CPU", config)
        self.inputs, self.outputs = list(inputs), list(outputs)

    def run(self, feeds: Mapping[str, np.ndarray], outputs=None) -> dict[str, np.ndarray]:
        res = self._compiled({s.name: feeds[s.name] for s in self.inputs})
        # outputs come back in the model's order; the IR keeps the ONNX output names
        arrays = [np.asarray(res[i]) for i in range(len(self.outputs))]
        names = [o.name for o in self.outputs]
        wanted = list(outputs) if outputs is not None else names
        by_name = dict(zip(names, arrays))
        return {n: by_name[n] for n in wanted}
