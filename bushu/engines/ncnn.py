"""ncnn (Tencent's mobile inference engine), running an ONNX model converted by pnnx behind the scenes.

The conversion is cached by the model's content (:mod:`bushu.convert.cache`). ncnn has no batch dimension: a
batch is run item by item, and each output gets its batch dim back. Inputs and outputs are matched by position
(pnnx names them ``in0, in1…`` / ``out0, out1…`` in the ONNX graph's order). FP16 storage and arithmetic are off,
so results are comparable with ONNX Runtime's FP32. pnnx fixes the dims it saw at one value (see
:func:`bushu.convert.ncnn.two_shapes`); the session's input specs show them as static and a feed that differs
there is refused rather than answered with wrong numbers.

Threads: the PyPI wheel runs ncnn's layers on GNU OpenMP (a ``libgomp`` bundled in ``ncnn.libs``), whose idle threads
spin (``GOMP_SPINCOUNT`` 300,000, ~20 ms here) before they sleep. ncnn's ``Option.openmp_blocktime`` does not reach
it (ncnn applies it with ``kmp_set_blocktime``, which only LLVM's OpenMP has), so it is left alone. Measured on 2
cores (docs/dev/serve-bench.md, bench/bench_ncnn_threads.py): alone, the default is the fastest; with another process
busy on a core, a run can wait tens of ms for a descheduled thread. ``OMP_WAIT_POLICY=PASSIVE`` in the environment
before ncnn is first imported (libgomp reads it as it loads) cuts those tails but makes every run 2–3.5× slower
alone, so it is not the default; under contention, ``threads=1`` (``--threads 1``) is the other choice.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx_ir as ir

from ..errors import BushuError, require
from .base import EngineOptions, TensorSpec, model_specs


class NcnnSession:
    engine = "ncnn"

    def __init__(self, param: Path, weights: Path, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec],
                 threads: int | None = None):
        ncnn = require("ncnn", extra="ncnn", feature="the ncnn engine")
        self._ncnn = ncnn
        self.inputs, self.outputs = list(inputs), list(outputs)
        net = ncnn.Net()
        for flag in ("use_fp16_storage", "use_fp16_arithmetic", "use_fp16_packed", "use_bf16_storage"):
            setattr(net.opt, flag, False)
        net.opt.num_threads = threads or os.cpu_count() or 1
        if net.load_param(str(param)) != 0 or net.load_model(str(weights)) != 0:
            raise BushuError(f"ncnn could not load {param}: convert again with bushu convert MODEL --to ncnn")
        self._net = net
        # scalar inputs the conversion made constant (bushu.convert.pnnx_prep): fed values must equal them
        bound_file = Path(param).parent / "model.ncnn.bound.json"
        self._bound = json.loads(bound_file.read_text()) if bound_file.is_file() else {}
        # inputs/outputs the conversion made batch first (bushu.convert.pnnx_prep.batch_first): name -> [ONNX shape
        # at batch 1, ncnn's shape]; feeds and outputs are reshaped between them
        layout_file = Path(param).parent / "model.ncnn.layout.json"
        self._layout = json.loads(layout_file.read_text()) if layout_file.is_file() else {"inputs": {}, "outputs": {}}
        self._fed = [s for s in self.inputs if s.name not in self._bound]
        self._in_names, self._out_names = list(net.input_names()), list(net.output_names())
        if len(self._in_names) != len(self._fed) or len(self._out_names) != len(self.outputs):
            raise BushuError(f"{param} has {len(self._in_names)} inputs/{len(self._out_names)} outputs but the ONNX "
                             f"model {len(self._fed)}/{len(self.outputs)}: the conversion dropped some")

    def _restore(self, spec: TensorSpec, items: list[np.ndarray]) -> np.ndarray:
        out = np.stack(items)
        rest = spec.shape[1:] if spec.shape else None
        # ncnn drops size-1 dims in places; the ONNX rank (and static dims) say where they were
        if rest is not None and out.ndim != len(rest) + 1 and all(isinstance(d, int) for d in rest):
            out = out.reshape(out.shape[0], *rest)
        return out

    def _check(self, spec: TensorSpec, a: np.ndarray) -> None:
        for i, (got, want) in enumerate(zip(a.shape, spec.shape or ())):
            if i > 0 and isinstance(want, int) and got != want:
                raise BushuError(f"the ncnn model was converted for {spec} but got {spec.name} of shape {a.shape}: "
                                 f"pass shapes={{'{spec.name}': {a.shape}}} (--shape) to convert it for that shape")

    def _extract(self, feeds: Mapping[str, np.ndarray], blobs: Sequence[str], keep: bool = False
                 ) -> list[list[np.ndarray]]:
        """Per blob name, its value for each item of the batch (``keep``: intermediate blobs are kept rather than
        recycled, so that any of them can be read)."""
        for name, value in self._bound.items():
            if name in feeds and not np.all(np.asarray(feeds[name]) == value):
                raise BushuError(f"the ncnn model was converted with {name}={value:g} fixed, but got "
                                 f"{name}={np.asarray(feeds[name]).ravel()[:1][0]}: convert again with --value {name}=…")
        arrays = [np.asarray(feeds[s.name]) for s in self._fed]
        for spec, a in zip(self._fed, arrays):
            self._check(spec, a)
        for i, spec in enumerate(self._fed):
            if spec.name in self._layout["inputs"]:
                onnx_shape, ncnn_shape = self._layout["inputs"][spec.name]
                if tuple(arrays[i].shape) != tuple(onnx_shape):
                    raise BushuError(f"the ncnn model takes {spec.name} of shape {tuple(onnx_shape)} only (batch 1: "
                                     f"ncnn has no batch dim and this input's batch is not its first), got "
                                     f"{arrays[i].shape}")
                arrays[i] = arrays[i].reshape(ncnn_shape)
        batch = arrays[0].shape[0] if arrays and arrays[0].ndim else 1
        if self._layout["inputs"] and any(a.shape[0] != 1 for a in arrays if a.ndim):
            raise BushuError(f"this ncnn model runs batch 1 only: its input(s) {', '.join(self._layout['inputs'])} "
                             "carry the batch in another dim than the first, which ncnn has no batch for")
        per_item: list[list[np.ndarray]] = [[] for _ in blobs]
        for b in range(batch):
            with self._net.create_extractor() as ex:
                if keep:
                    ex.set_light_mode(False)
                for name, a in zip(self._in_names, arrays):
                    ex.input(name, self._ncnn.Mat(np.ascontiguousarray(a[b], dtype=np.float32)).clone())
                for j, name in enumerate(blobs):
                    ret, mat = ex.extract(name)
                    if ret != 0:
                        raise BushuError(f"ncnn failed to run the model (extract {name} returned {ret})")
                    per_item[j].append(np.array(mat, copy=True))
        return per_item

    def blobs(self, feeds: Mapping[str, np.ndarray], names: Sequence[str]) -> dict[str, list[np.ndarray]]:
        """Intermediate blobs of the ncnn graph by their param-file names, one array per batch item (what INT8
        calibration observes)."""
        return dict(zip(names, self._extract(feeds, list(names), keep=True)))

    def run(self, feeds: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        per_item = self._extract(feeds, self._out_names)
        result = {spec.name: self._restore(spec, items) for spec, items in zip(self.outputs, per_item)}
        for name, (onnx_shape, _) in self._layout["outputs"].items():
            result[name] = result[name].reshape(onnx_shape)
        wanted = list(outputs) if outputs is not None else [o.name for o in self.outputs]
        return {n: result[n] for n in wanted}


class NcnnEngine:
    name = "ncnn"
    extra = "ncnn"

    def available(self) -> bool:
        import importlib.util

        return importlib.util.find_spec("ncnn") is not None and importlib.util.find_spec("pnnx") is not None

    def load(self, model: ir.Model | str, options: EngineOptions) -> NcnnSession:
        from ..convert.ncnn import FILES, fixed_specs, two_shapes
        from ..convert.targets import cached

        folder, m = cached(model, "ncnn", options.shapes, options.values)
        ins, outs = model_specs(m)
        ins = fixed_specs(ins, *two_shapes(ins, options.shapes))
        return NcnnSession(folder / FILES[0], folder / FILES[1], ins, outs, options.threads)
