"""Which ops of a model the installed engines can't run, found cheaply (no session is built).

* ``ort``: ONNX Runtime's CPU kernel registry (``get_all_opkernel_def``, ~20 ms): a node is supported when a
  kernel covers its op version and accepts its input types (float16 where only float is registered counts: ORT
  inserts Casts), or when ONNX defines the op as a function (ORT inlines it), or when the model defines it as a
  local function. Like ORT itself, it flags dead nodes too.
* ``openvino``: the ONNX frontend's ``convert`` (~0.1 s for PP-OCRv4 rec; ``query_model`` would first need the
  converted model anyway): its failure report names the ops with no conversion rule and the nodes whose
  conversion failed.

Each engine reports a status (``ok``, ``not installed``, or a count) and :class:`Problem` findings.
"""

from __future__ import annotations

import io
import re
from collections import defaultdict
from collections.abc import Sequence

import onnx
import onnx_ir as ir

from .problems import Problem

CHECKS = ("ort", "openvino")


def engine_support(original: ir.Model | str, inferred: ir.Model, engines: Sequence[str]) -> tuple[dict[str, str], list[Problem]]:
    """Status per engine and the problems found. ``inferred`` (same nodes, inferred dtypes) serves the type
    checks; ``original`` (the model, or the unmodified file it was loaded from) is what an engine is given."""
    status: dict[str, str] = {}
    problems: list[Problem] = []
    for engine in engines:
        if engine not in CHECKS:
            status[engine] = "not checked (inspect checks ort and openvino)"
            continue
        try:
            found = _ort(inferred) if engine == "ort" else _openvino(original)
        except ImportError:
            status[engine] = "not installed"
            continue
        problems.extend(found)
        status[engine] = "ok" if not found else f"{len(found)} problem(s)"
    return status, problems


def _domain(node: ir.Node) -> str:
    return "" if node.domain == "ai.onnx" else node.domain


def _all_nodes(model: ir.Model):
    for graph in model.graphs():
        yield from graph


def _ort(model: ir.Model) -> list[Problem]:
    from onnxruntime.capi import onnxruntime_pybind11_state as C

    kernels = defaultdict(list)
    for k in C.get_all_opkernel_def():
        if k.provider == "CPUExecutionProvider":
            kernels[(k.domain, k.op_name)].append(k)
    local = {(f.domain, f.name) for f in model.functions.values()}
    missing: dict[tuple[str, str], list[str]] = defaultdict(list)
    for node in _all_nodes(model):
        key = (_domain(node), node.op_type)
        if key in local or key == ("", "Constant"):  # ORT turns Constant nodes into initializers
            continue
        reason = _ort_reason(node, kernels.get(key, []), model.opset_imports.get(key[0], 1))
        if reason:
            missing[(key[0] + "." if key[0] else "") + node.op_type, reason].append(node.name or "")
    return [Problem("unsupported-op", op, f"{reason}; nodes: {_names(nodes)}", engine="ort")
            for (op, reason), nodes in missing.items()]


def _ort_reason(node: ir.Node, kernels: list, opset: int) -> str | None:
    """Why ORT's CPU provider has no kernel for ``node``, or None when it has one."""
    try:
        schema = onnx.defs.get_schema(node.op_type, opset, _domain(node))
    except onnx.defs.SchemaError:
        schema = None
    version = schema.since_version if schema is not None else opset
    in_range = [k for k in kernels if k.version_range[0] <= version <= k.version_range[1]]
    if not in_range:
        if schema is not None and (schema.has_function or schema.has_context_dependent_function):
            return None  # ORT expands ONNX functions into their body
        return f"no CPU kernel for opset {opset}" if kernels else "no CPU kernel"
    if schema is None:
        return None
    types = {}
    for i, value in enumerate(node.inputs):
        if value is None or value.dtype is None or not schema.inputs:
            continue
        formal = schema.inputs[min(i, len(schema.inputs) - 1)]
        types.setdefault(formal.type_str, f"tensor({value.dtype.name.lower()})")
    for k in in_range:
        if all(t not in k.type_constraints or _accepts(k.type_constraints[t], name) for t, name in types.items()):
            return None
    return "no CPU kernel for input types " + ", ".join(sorted(set(types.values())))


def _accepts(allowed: list[str], name: str) -> bool:
    # ORT's InsertCastTransformer runs a float16 node that has only a float kernel in float, between Casts
    return name in allowed or (name == "tensor(float16)" and "tensor(float)" in allowed)


def _names(nodes: list[str], limit: int = 3) -> str:
    named = [n or "<unnamed>" for n in nodes]
    return ", ".join(named[:limit]) + (f" and {len(named) - limit} more" if len(named) > limit else "")


_NO_RULE = re.compile(r"No conversion rule found for operations:\s*(.+)")
_FAILED = re.compile(r"Conversion is failed for:\s*(.+)")
_DETAIL = re.compile(r"-- (\S+) with a message:\n(.*?)(?=\n-- |\nSummary:|\Z)", re.S)


def _openvino(model: ir.Model | str) -> list[Problem]:
    from openvino.frontend import FrontEndManager

    from ..engines.base import ModelFile

    frontend = FrontEndManager().load_by_framework("onnx")
    with ModelFile(model) as src:
        try:
            frontend.convert(frontend.load(io.BytesIO(src) if isinstance(src, bytes) else src))
        except Exception as e:  # OpenVINO raises a generic RuntimeError/OpConversionFailure with a report
            return _openvino_report(str(e))
    return []


def _openvino_report(text: str) -> list[Problem]:
    details = {op: _reason(msg) for op, msg in _DETAIL.findall(text)}
    out = []
    for line in _NO_RULE.findall(text):
        out += [Problem("unsupported-op", op.strip(), "no conversion rule", engine="openvino")
                for op in line.split(",") if op.strip()]
    for line in _FAILED.findall(text):
        out += [Problem("conversion-failed", op.strip(), details.get(op.strip(), ""), engine="openvino")
                for op in line.split(",") if op.strip()]
    if not out:  # a failure without the usual report: keep its first line
        out.append(Problem("conversion-failed", "model", text.strip().splitlines()[0] if text.strip() else "",
                           engine="openvino"))
    return out


def _reason(message: str) -> str:
    """The most telling lines of an OpenVINO conversion message: the node, then the last check that failed."""
    lines = [ln.strip() for ln in message.strip().splitlines() if ln.strip()]
    node = next((re.sub(r".*ONNX node '<Node\((\w+)\): ([^>]*)>'.*", r"node producing \2", ln)
                 for ln in lines if "ONNX node" in ln), "")
    last = lines[-1] if lines else ""
    return f"{node}: {last}" if node else last
