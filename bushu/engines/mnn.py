"""MNN (Alibaba's inference engine), running an ONNX model converted behind the scenes.

The conversion goes through MNN's compiled converter (never the ``mnnconvert`` script: see
:mod:`bushu.convert.mnn`) and is cached by the model's content. The session uses MNN's Module API on the CPU
backend at ``precision: high`` (FP32), which keeps dynamic shapes, so batches run in one call.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx_ir as ir

from ..errors import BushuError, require
from .base import EngineOptions, TensorSpec, model_specs


@contextlib.contextmanager
def _stdout_to_stderr():
    """MNN's C++ code prints a banner on the process's stdout on import; keep stdout clean for ``--json``."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def import_mnn():
    with _stdout_to_stderr():
        return require("MNN", extra="mnn", feature="the MNN engine")


class MnnSession:
    engine = "mnn"

    def __init__(self, path: Path, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec], threads: int | None = None):
        mnn = import_mnn()
        self._F = mnn.expr
        self.inputs, self.outputs = list(inputs), list(outputs)
        config = {"backend": "CPU", "numThread": threads or os.cpu_count() or 1, "precision": "high"}
        with _stdout_to_stderr():
            runtime = mnn.nn.create_runtime_manager((config,))
            self._module = mnn.nn.load_module_from_file(str(path), [s.name for s in self.inputs],
                                                        [s.name for s in self.outputs], runtime_manager=runtime)
        if self._module is None:
            raise BushuError(f"MNN could not load {path}: convert again with bushu convert MODEL --to mnn")

    def _var(self, a: np.ndarray):
        F = self._F
        a = np.ascontiguousarray(a)
        if a.dtype == np.int64 or a.dtype == np.bool_:  # the converter turns int64 (and bool) tensors into int32
            a = a.astype(np.int32)
        elif a.dtype.kind == "f" and a.dtype != np.float32:
            a = a.astype(np.float32)
        dtype = {np.dtype(np.float32): F.float, np.dtype(np.int32): F.int, np.dtype(np.uint8): F.uint8,
                 np.dtype(np.int8): F.int8}.get(a.dtype)
        if dtype is None:
            raise BushuError(f"the MNN engine can't feed a {a.dtype} input: cast it to float32 or int32")
        return F.const(a, list(a.shape), F.NCHW, dtype)

    def run(self, feeds: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        F = self._F
        try:
            vals = self._module.forward([self._var(np.asarray(feeds[s.name])) for s in self.inputs])
        except Exception as e:
            raise BushuError(f"MNN failed to run the model: {str(e).strip() or type(e).__name__}") from None
        result = {}
        for spec, v in zip(self.outputs, vals):
            if v.data_format == F.NC4HW4:
                v = F.convert(v, F.NCHW)
            result[spec.name] = np.array(v.read(), copy=True)
        wanted = list(outputs) if outputs is not None else [o.name for o in self.outputs]
        return {n: result[n] for n in wanted}


class MnnEngine:
    name = "mnn"
    extra = "mnn"

    def available(self) -> bool:
        import importlib.util

        return importlib.util.find_spec("MNN") is not None and importlib.util.find_spec("_tools") is not None

    def load(self, model: ir.Model | str, options: EngineOptions) -> MnnSession:
        from ..convert.mnn import FILES
        from ..convert.targets import cached

        import_mnn()
        folder, m = cached(model, "mnn", options.shapes)
        ins, outs = model_specs(m)
        return MnnSession(folder / FILES[0], ins, outs, options.threads)
