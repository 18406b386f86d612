"""Verify a quantized file on the engine it is meant for.

An engine can compute an INT8 file wrong that ONNX Runtime computes right (OpenVINO 2026.4: PP-OCRv4 det from
symmetric int8 files 0.06 dB output SNR vs 16.5 dB on ONNX Runtime; the digits CNN from files with activation zero
points 67% top-1 vs 99.1%). :func:`engine_check` runs the quantized model on the target engine and on ONNX Runtime
(the reference engine) on the same held-out feeds, compares both with the float model, and calls the file wrong
on the target when its error there is far beyond ONNX Runtime's (:func:`far_beyond`). It then names the first
layer where the two engines part, by bisection over prefixes of the graph cut at its dequantized activations
(:func:`bushu.edit.extract`): exposing every tensor at once, as ``bushu compare --layerwise`` does, keeps the
engine from fusing the Q/DQ pairs and hides the fault.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from importlib import metadata

import numpy as np
import onnx_ir as ir

from ..edit import extract
from ..results import Result
from ..search import first_true
from .budget import Accuracy, accuracy
from .static import run_all

REFERENCE = "ort"
# "Far beyond": the target's output SNR is below 30 dB and more than 3 dB below ONNX Runtime's on the same file (its
# error power more than twice ONNX Runtime's). Correct engines differ far less (PP-OCRv4 rec on 8 and 24 lines:
# 9.7 / 10.0 dB, 8.2 / 8.2 dB; det 16.6 / 16.7 dB; MiniLM 22.4 / 22.3 dB); NNCF's rec file, which reads 52 % of the
# lines on OpenVINO and 92 % on ONNX Runtime, is 5.4 / 9.6 dB. The floor keeps float-accumulation differences on
# very accurate files (MobileNetV3-small-like 45.3 / 47.8 dB, or 50 vs 60 dB) from counting as wrong. Top-1
# agreement is no criterion: on outputs that only look like scores (MiniLM's token embeddings) it moved 90 → 75 %
# between two engines at the same SNR.
FAR_DB = 3.0
FLOOR_DB = 30.0
_PACKAGES = {"ort": "onnxruntime", "openvino": "openvino"}


def far_beyond(target_snr_db: float, reference_snr_db: float) -> bool:
    """True when the output SNR (dB, against the float model) on the target engine is far below the reference
    engine's on the same file."""
    if math.isnan(target_snr_db):
        return True
    return target_snr_db < FLOOR_DB and target_snr_db < reference_snr_db - FAR_DB


def _far(target: Accuracy, reference: Accuracy) -> bool:
    return far_beyond(target.snr_db, reference.snr_db)


def engine_version(engine: str) -> str:
    try:
        return metadata.version(_PACKAGES.get(engine, engine))
    except metadata.PackageNotFoundError:
        return "?"


@dataclasses.dataclass(frozen=True)
class EngineCheck(Result):
    """The quantized file on the target engine and on ONNX Runtime, each against the float model on the same
    held-out feeds; truthy unless the target's error is far beyond ONNX Runtime's (:func:`far_beyond`).
    ``placement`` is the preset whose Q/DQ placement the file has; ``divergence`` the first layer where the two
    engines part (when the check failed)."""

    kind = "quant_engine_check"
    engine: str
    version: str
    placement: str
    target: Accuracy
    reference: Accuracy
    divergence: str | None = None
    error: str | None = None  # the engine failed to load or run the file

    def __bool__(self) -> bool:
        return self.error is None and not _far(self.target, self.reference)

    def __str__(self) -> str:
        head = f"{self.engine} {self.version}, {self.placement} placement"
        if self.error:
            return f"{head}: {self.engine} cannot run this file (output SNR {self.reference.snr_db:.1f} dB on {REFERENCE}): {self.error}"
        t, r = self.target, self.reference

        def top(a: Accuracy) -> str:
            return f", top-1 agreement {100 * a.top1:.1f}%" if a.top1 is not None else ""

        s = (f"{head}: output SNR {t.snr_db:.1f} dB{top(t)} on {self.engine} vs {r.snr_db:.1f} dB{top(r)} on "
             f"{REFERENCE} (same file, {t.samples} held-out feeds)")
        if self:
            return s + ": right"
        return (f"{s}: {self.engine} computes this file WRONG"
                + (f"; first divergent layer {self.divergence}" if self.divergence else ""))


def engine_check(float_model: ir.Model, quantized: ir.Model, feeds: Sequence[Mapping[str, np.ndarray]], engine: str,
                 *, placement: str = "", reference: list[dict[str, np.ndarray]] | None = None,
                 locate: bool = True) -> EngineCheck:
    """Run ``quantized`` on ``engine`` and on ONNX Runtime with ``feeds`` and compare each with ``float_model`` on
    ONNX Runtime (``reference``: its outputs, when already computed); with ``locate``, a failed check names the
    first divergent layer."""
    ref = reference if reference is not None else run_all(float_model, feeds)
    on_ref = accuracy(ref, run_all(quantized, feeds, REFERENCE))
    version = engine_version(engine)
    try:
        on_target = accuracy(ref, run_all(quantized, feeds, engine))
    except Exception as e:  # noqa: BLE001 (an engine that can't run the file is the finding)
        first = (str(e).splitlines() or [""])[0][:200]
        return EngineCheck(engine, version, placement, on_ref, on_ref, error=f"{type(e).__name__}: {first}")
    check = EngineCheck(engine, version, placement, on_target, on_ref)
    if not check and locate:
        try:
            where = first_divergent(float_model, quantized, feeds[0], engine)
        except Exception as e:  # noqa: BLE001 (the verdict stands without a location)
            where = f"not located ({type(e).__name__})"
        check = dataclasses.replace(check, divergence=where)
    return check


def _cut_points(quantized: ir.Model, float_names: set[str]) -> list[tuple[str, str, ir.Node]]:
    """(tensor in ``quantized``, the same tensor in the float model, the layer that computed it), in graph order:
    each dequantized activation ``DQ(Q(x))`` whose ``x`` the float model has — or, in a file without quantized
    activations (the other modes), each tensor the float model has by name — then the graph outputs."""
    out = []
    for node in quantized.graph:
        if node.op_type != "DequantizeLinear" or node.inputs[0].producer() is None:
            continue
        q = node.inputs[0].producer()
        if q.op_type != "QuantizeLinear":
            continue
        x = q.inputs[0]
        layer = x.producer()
        if x.name in float_names and layer is not None:
            out.append((node.outputs[0].name, x.name, layer))
    if not out:  # no quantized activations (weight-only, int4, dynamic, fp16): cut after every tensor both have
        out = [(o.name, o.name, node) for node in quantized.graph if node.op_type != "Constant"
               for o in node.outputs if o.name in float_names and not o.is_graph_output()]
    for v in quantized.graph.outputs:
        if v.name in float_names and v.producer() is not None:
            out.append((v.name, v.name, v.producer()))
    return out


def _prefix(model: ir.Model, tensor: str) -> ir.Model:
    part = model.clone()
    extract(part, [], [tensor])
    return part


def first_divergent(float_model: ir.Model, quantized: ir.Model, feed: Mapping[str, np.ndarray],
                    engine: str) -> str | None:
    """The first layer (``'name' (OpType)``) after which the quantized model, cut there, is far beyond ONNX
    Runtime's error on ``engine`` (:func:`far_beyond` on that tensor), by bisection over the cut points (a fault
    upstream stays visible downstream); None when no cut point shows it."""
    float_names = {o.name for n in float_model.graph for o in n.outputs}
    cuts = _cut_points(quantized, float_names)

    def wrong(i: int) -> bool:
        qname, fname, _ = cuts[i]
        fpart, qpart = _prefix(float_model, fname), _prefix(quantized, qname)
        if not qpart.graph.inputs:  # computed from weights alone: no engine difference to see
            return False
        try:
            ref = run_all(fpart, [_inputs_of(fpart, feed)])
            qfeed = [_inputs_of(qpart, feed)]
            tgt = accuracy(ref, _renamed(run_all(qpart, qfeed, engine), qname, fname))
            on_ref = accuracy(ref, _renamed(run_all(qpart, qfeed, REFERENCE), qname, fname))
        except Exception:  # noqa: BLE001 (an engine can't compile this cut: not located here)
            return False
        return _far(tgt, on_ref)

    if not cuts or not wrong(len(cuts) - 1):
        return None
    layer = cuts[first_true(-1, len(cuts) - 1, wrong)][2]  # -1: the inputs, right
    return f"'{layer.name}' ({layer.op_type})"


def _inputs_of(model: ir.Model, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    names = {v.name for v in model.graph.inputs}
    return {k: v for k, v in feed.items() if k in names}


def _renamed(outs: list[dict[str, np.ndarray]], old: str, new: str) -> list[dict[str, np.ndarray]]:
    return [{new if k == old else k: v for k, v in o.items()} for o in outs]
