"""ONNX Runtime (CPU; CUDA and TensorRT execution providers when the installed build has them)."""

from __future__ import annotations

import os

from collections.abc import Mapping, Sequence

import numpy as np
import onnx_ir as ir

from ..errors import BushuError, first_line
from .base import EngineOptions, ModelFile, TensorSpec

_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED", "all": "ORT_ENABLE_ALL"}
_PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}
_ORT_TYPES = {
    "tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64", "tensor(int8)": "int8",
    "tensor(int16)": "int16", "tensor(int32)": "int32", "tensor(int64)": "int64", "tensor(uint8)": "uint8",
    "tensor(uint16)": "uint16", "tensor(uint32)": "uint32", "tensor(uint64)": "uint64", "tensor(bool)": "bool",
    "tensor(string)": "object", "tensor(bfloat16)": "bfloat16",
}


def _spec(arg) -> TensorSpec:
    shape = None if arg.shape is None else tuple(d if isinstance(d, int) else (d or None) for d in arg.shape)
    return TensorSpec(arg.name, _ORT_TYPES.get(arg.type, arg.type), shape)


def session_options(options: EngineOptions):
    import onnxruntime as ort

    so = ort.SessionOptions()
    if options.opt_level not in _LEVELS:
        raise BushuError(f"unknown optimization level '{options.opt_level}': choose one of {', '.join(_LEVELS)}")
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _LEVELS[options.opt_level])
    if options.threads:
        so.intra_op_num_threads = options.threads
        so.inter_op_num_threads = 1
    if not options.spin:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    if options.profile:
        so.enable_profiling = True
    # ORT's own log lines (coloured, multi-line) would come before bushu's one-line error; its exceptions carry the
    # same text. `bushu --debug` (BUSHU_DEBUG=1) lets its warnings and errors through.
    so.log_severity_level = 2 if os.environ.get("BUSHU_DEBUG") else 4
    return so


class OrtSession:
    engine = "ort"

    def __init__(self, sess):
        self.sess = sess
        self.inputs = [_spec(a) for a in sess.get_inputs()]
        self.outputs = [_spec(a) for a in sess.get_outputs()]
        self._out_names = [o.name for o in self.outputs]

    def run(self, feeds: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        names = list(outputs) if outputs is not None else self._out_names
        try:
            res = self.sess.run(names, dict(feeds))
        except Exception as e:
            raise BushuError(f"ONNX Runtime failed to run the model: {first_line(e)}") from None
        return dict(zip(names, res))

    def end_profiling(self) -> str:
        return self.sess.end_profiling()


class OrtEngine:
    name = "ort"
    extra = "core"

    def available(self) -> bool:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            return False
        return True

    def providers(self) -> list[str]:
        import onnxruntime as ort

        return ort.get_available_providers()

    def load(self, model: ir.Model | str, options: EngineOptions) -> OrtSession:
        import onnxruntime as ort

        providers = ["CPUExecutionProvider"]
        if options.providers:
            providers = []
            have = set(ort.get_available_providers())
            for p in options.providers:
                full = _PROVIDERS.get(p.lower(), p)
                if full not in have:
                    raise BushuError(
                        f"execution provider '{p}' is not in this onnxruntime build (it has {', '.join(sorted(have))}): "
                        "install onnxruntime-gpu for cuda/tensorrt"
                    )
                providers.append(full)
        with ModelFile(model) as src:
            try:
                sess = ort.InferenceSession(src, sess_options=session_options(options), providers=providers)
            except Exception as e:
                raise BushuError(f"ONNX Runtime could not load the model: {first_line(e)}") from None
        return OrtSession(sess)


def optimized_model(model: ir.Model | str, level: str = "all") -> ir.Model:
    """``model`` as ONNX Runtime's graph optimizer leaves it at ``level`` (``basic`` keeps standard ONNX ops; ``all``
    adds the fusions and layout nodes of this machine). The weights are read into memory, so the result doesn't
    depend on the temporary file ONNX Runtime wrote."""
    import os
    import tempfile

    import onnxruntime as ort

    so = session_options(EngineOptions(opt_level=level))
    with tempfile.TemporaryDirectory(prefix="bushu-ort-opt-") as tmp:
        so.optimized_model_filepath = os.path.join(tmp, "optimized.onnx")
        with ModelFile(model) as src:
            try:
                ort.InferenceSession(src, sess_options=so, providers=["CPUExecutionProvider"])
            except Exception as e:
                raise BushuError(f"ONNX Runtime could not load the model: {first_line(e)}") from None
        out = ir.load(so.optimized_model_filepath)
        for g in [out.graph, *out.graph.subgraphs()]:
            for v in g.initializers.values():
                if isinstance(v.const_value, ir.ExternalTensor):
                    v.const_value = ir.tensor(v.const_value.numpy(), name=v.name)
    return out
