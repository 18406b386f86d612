"""OpenVINO (CPU).

Options: ``threads`` → ``INFERENCE_NUM_THREADS``; ``opt_level``: ``all`` keeps OpenVINO's defaults (it may trade
precision for speed where the CPU allows, e.g. bf16 on AMX), any lower level sets ``EXECUTION_MODE_HINT=ACCURACY``
(OpenVINO has no switch for its graph transformations; this is the closest to "don't change my numbers");
``shapes`` reshapes the given inputs before compiling; ``profile`` turns on per-layer counters; ``values`` binds
scalar inputs (see below).

Scalar inputs given a value (``EngineOptions.values``, ``--value sr=16000``; bench and profile pass a zoo model's)
become constants before OpenVINO reads the model (:func:`bushu.edit.bind`), and the optimizer's
``fold-constants``, ``inline-constant-if`` and ``shape-inference`` passes fold what depends on them. Silero VAD
needs it: its ``If`` on ``sr`` has branches whose Conv input has no static rank, which OpenVINO's ONNX reader
refuses; with ``sr`` bound, the If is its taken branch and the model converts. The session then refuses another
value for that input.

Input and output specs are the ONNX model's own (names, dtypes, symbolic dims); outputs are returned under their
ONNX names, found among each OpenVINO output's tensor names (OpenVINO may attach several names to one port) and
otherwise by position.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping, Sequence

import numpy as np
import onnx_ir as ir

from ..errors import BushuError, require
from .base import EngineOptions, ModelFile, TensorSpec, model_specs


def _ov():
    return require("openvino", extra="openvino", feature="the OpenVINO engine")


def one_line(message: str) -> str:
    """OpenVINO's multi-line conversion report as one line: the ops that failed and the first reason."""
    lines = [ln.strip() for ln in message.splitlines() if ln.strip()]
    failed = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("-- Conversion is failed for")), None)
    node = next((f"{m.group(1)} node '{m.group(2)}'" for ln in lines
                 if (m := re.search(r"ONNX node '<Node\((\w+)\): ([^>]*)>'", ln))), None)
    boiler = ("Exception from", "Check ", "FrontEnd API failed", "Model wasn't fully", "Failed operations", "Summary:",
              "While validating", "-- ", "[ ERROR ]")
    reason = next((ln for ln in lines if not ln.startswith(boiler)), None)
    if failed or reason:
        parts = [f"ops that failed: {failed}" if failed else "", f"first at {node}" if node else "", reason or ""]
        return "; ".join(p for p in parts if p)
    return lines[-1] if lines else "unknown error"


def _dims(shape, fallback):
    if shape.rank.is_dynamic:
        return fallback
    return tuple(d.get_length() if d.is_static else None for d in shape)


def bind_scalars(model: ir.Model, values: Mapping[str, object]) -> tuple[ir.Model, dict[str, object]]:
    """``model`` with its scalar inputs named in ``values`` made constants and what depends on them folded (a new
    model; the given one is left as it is), and the values bound. Without such inputs: ``model`` unchanged, ``{}``."""
    bound = {v.name: values[v.name] for v in model.graph.inputs
             if v.name in values and v.shape is not None and len(v.shape) == 0}
    if not bound:
        return model, {}
    from ..edit import bind
    from ..passes import optimize

    copy = ir.from_proto(ir.to_proto(model))
    bind(copy, bound)
    folded, _ = optimize(copy, passes=["fold-constants", "inline-constant-if", "shape-inference", "dead-code"],
                         verify="off", latency=False, show_progress=False)
    return folded, bound


class OpenVinoSession:
    engine = "openvino"

    def __init__(self, compiled, inputs: list[TensorSpec], outputs: list[TensorSpec],
                 bound: Mapping[str, object] | None = None):
        self.compiled = compiled
        self.request = compiled.create_infer_request()
        self.inputs = inputs
        self.outputs = outputs
        self.bound = dict(bound or {})  # scalar inputs made constants: fed values must equal them
        self._port = {}  # ONNX output name -> OpenVINO output port
        ov_outputs = list(compiled.outputs)
        for i, spec in enumerate(outputs):
            port = next((p for p in ov_outputs if spec.name in p.get_names()), None)
            self._port[spec.name] = port if port is not None else ov_outputs[i]

    def run(self, feeds: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        names = list(outputs) if outputs is not None else [o.name for o in self.outputs]
        unknown = [n for n in names if n not in self._port]
        if unknown:
            raise BushuError(f"unknown output(s) {', '.join(unknown)}: the model's outputs are {', '.join(self._port)}")
        for name, value in self.bound.items():
            if name in feeds and not np.all(np.asarray(feeds[name]) == np.asarray(value)):
                raise BushuError(f"this OpenVINO session was compiled with {name}={value} fixed, but got {name}="
                                 f"{np.asarray(feeds[name]).ravel()[:1][0]}: open it with values={{'{name}': …}}")
        feeds = {k: v for k, v in feeds.items() if k not in self.bound}
        try:
            # start_async + wait, not infer(): a synchronous infer runs the graph on the calling (Python) thread,
            # outside the stream's thread arena, and each parallel layer then wakes the arena's workers; on PP-OCR
            # cls (147 small layers, 2 threads) that made a run 1.2-4.7x slower under load and left a third of a
            # quiet run outside every layer counter (docs/dev/perf-bench.md). The stream thread runs it as
            # OpenVINO's benchmark_app does.
            self.request.start_async({k: _ov_array(v) for k, v in feeds.items()})
            self.request.wait()
        except Exception as e:
            raise BushuError(f"OpenVINO failed to run the model: {one_line(str(e))}") from None
        # The request owns the result memory and reuses it on the next run: copy.
        return {n: np.array(self.request.get_tensor(self._port[n]).data, copy=True) for n in names}

    def profiling_info(self) -> list:
        """OpenVINO's per-layer counters of the last run (needs ``EngineOptions(profile=True)``)."""
        return list(self.request.get_profiling_info())


def _ov_array(value) -> np.ndarray:
    """``value`` as OpenVINO takes it: C-contiguous, the shape kept (``np.ascontiguousarray`` makes a 0-d scalar
    1-d), and the dtype in its canonical form (a 0-d int64 that ONNX Runtime returns can be ``longlong``, which
    OpenVINO's dtype map doesn't know)."""
    x = np.asarray(value)
    canonical = np.dtype(x.dtype.str)
    if x.dtype.char != canonical.char:  # equal as dtypes (so astype(copy=False) keeps it), a different type object
        x = x.view(canonical)
    return x if x.flags.c_contiguous else np.ascontiguousarray(x).reshape(x.shape)


class OpenVinoEngine:
    name = "openvino"
    extra = "openvino"

    def available(self) -> bool:
        try:
            import openvino  # noqa: F401
        except ImportError:
            return False
        return True

    def config(self, options: EngineOptions) -> dict[str, str]:
        if options.opt_level not in ("disable", "basic", "extended", "all"):
            raise BushuError(f"unknown optimization level '{options.opt_level}': choose disable, basic, extended or all")
        cfg = {}
        if options.threads:
            cfg["INFERENCE_NUM_THREADS"] = str(options.threads)
        if options.opt_level != "all":
            cfg["EXECUTION_MODE_HINT"] = "ACCURACY"
        if options.profile:
            cfg["PERF_COUNT"] = "YES"
        return cfg

    def load(self, model: ir.Model | str, options: EngineOptions) -> OpenVinoSession:
        ov = _ov()
        from .. import ir as bir

        m = bir.load(model) if isinstance(model, (str, os.PathLike)) else model
        inputs, outputs = model_specs(m)
        m, bound = bind_scalars(m, options.values)
        if bound:
            model = m
        core = ov.Core()
        with ModelFile(model) as src:
            try:
                ov_model = core.read_model(src)
            except Exception as e:
                raise BushuError(f"OpenVINO could not convert the model: {one_line(str(e))}") from None
        known = {s.name for s in inputs}
        shapes = {n: s for n, s in options.shapes.items() if n not in bound}  # a bound input is a constant now
        bad = [n for n in shapes if n not in known]
        if bad:
            raise BushuError(f"--shape names unknown input(s) {', '.join(bad)}: the inputs are {', '.join(sorted(known))}")
        if shapes:
            try:
                ov_model.reshape({n: ov.PartialShape(list(s)) for n, s in shapes.items()})
            except Exception as e:
                raise BushuError(f"OpenVINO could not reshape the model to {dict(shapes)}: {one_line(str(e))}") from None
            inputs = [dataclasses.replace(s, shape=tuple(shapes[s.name])) if s.name in shapes else s
                      for s in inputs]
            by_name = {o.get_any_name(): o for o in ov_model.outputs}
            outputs = [dataclasses.replace(s, shape=_dims(by_name[s.name].get_partial_shape(), s.shape))
                       if s.name in by_name else s for s in outputs]
        try:
            compiled = core.compile_model(ov_model, "CPU", self.config(options))
        except Exception as e:
            hint = ("; give the inputs static shapes (--shape NAME:DIMS): OpenVINO compiles an If at a static rank only"
                    if "dynamic rank" in str(e) and not shapes else "")
            raise BushuError(f"OpenVINO could not compile the model: {one_line(str(e))}{hint}") from None
        return OpenVinoSession(compiled, inputs, outputs, bound)
