"""What an export returns: the model, which exporter made it and why, and the verification verdict."""

from __future__ import annotations

import dataclasses

from ..compare.metrics import OutputDiff, Tolerance
from ..engines.base import TensorSpec
from ..results import Result, fmt_table


@dataclasses.dataclass(frozen=True)
class VerifyCase(Result):
    """ONNX Runtime against PyTorch on one set of inputs; truthy when every output passed.

    ``label`` is ``example`` for the example inputs, else the dynamic dim sizes tried (``batch=3, sequence=13``);
    ``error`` says why ONNX Runtime could not run the model at those sizes, ``skipped`` why the case proves
    nothing (PyTorch itself fails at those sizes; it counts as passed); either way ``outputs`` is empty.
    """

    kind = "export_verify_case"
    label: str
    shapes: dict[str, tuple[int, ...]]
    outputs: tuple[OutputDiff, ...]
    error: str | None = None
    skipped: str | None = None

    def __bool__(self) -> bool:
        return self.error is None and all(self.outputs)

    def __str__(self) -> str:
        if self.skipped:
            return f"{self.label}: skipped ({self.skipped})"
        if self.error:
            return f"{self.label}: FAIL ({self.error})"
        worst = max((o.max_abs for o in self.outputs), default=0.0)
        failed = [o.name for o in self.outputs if not o]
        verdict = "PASS" if self else f"FAIL ({', '.join(failed)})"
        return f"{self.label}: {verdict} max_abs {worst:.3g}, min cosine {min(o.cosine for o in self.outputs):.6f}"


@dataclasses.dataclass(frozen=True)
class ExportResult(Result):
    """A PyTorch module exported to ONNX; truthy when the export is faithful (every verification case passed, or
    verification was turned off).

    ``exporter`` is ``dynamo`` or ``torchscript``; ``fallback_reason`` says why the dynamo exporter was not used
    when ``exporter="auto"`` fell back. ``notes`` carry warnings worth reading (TracerWarnings name the Python code
    a TorchScript trace froze). ``model`` is the ``onnx_ir.Model`` (not in JSON).
    """

    kind = "export"
    path: str | None
    exporter: str
    fallback_reason: str | None
    opset: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    tolerance: Tolerance
    verification: tuple[VerifyCase, ...]
    notes: tuple[str, ...]
    export_s: float
    verify_s: float
    model: object = dataclasses.field(default=None, repr=False, compare=False)

    @property
    def verified(self) -> bool:
        return bool(self.verification)

    def __bool__(self) -> bool:
        return all(self.verification)

    def _verdict(self) -> str:
        if not self.verified:
            return "not verified"
        if self:
            n = sum(1 for c in self.verification if not c.skipped)
            return f"faithful on {n} input set(s)"
        bad = [c.label for c in self.verification if not c]
        return f"NOT faithful: differs from PyTorch on {', '.join(bad)}"

    def __str__(self) -> str:
        where = self.path or "in memory"
        return f"exported {where} with the {self.exporter} exporter (opset {self.opset}): {self._verdict()}"

    def render(self) -> str:
        fallback = f" (fallback: {self.fallback_reason})" if self.fallback_reason else ""
        lines = [f"model     {self.path or '(in memory)'}",
                 f"exporter  {self.exporter}{fallback}",
                 f"opset     {self.opset}",
                 f"inputs    {', '.join(map(str, self.inputs))}",
                 f"outputs   {', '.join(map(str, self.outputs))}",
                 f"time      export {self.export_s:.1f} s, verify {self.verify_s:.1f} s"]
        if self.verified:
            t = self.tolerance
            lines += ["", f"verification: ONNX Runtime vs PyTorch (atol {t.atol:g}, rtol {t.rtol:g}, "
                          f"min cosine {t.min_cosine:g})"]
            rows = []
            for case in self.verification:
                if case.error or case.skipped:
                    rows.append([case.label, "", "", "", "", f"FAIL: {case.error}" if case.error
                                 else f"skipped: {case.skipped}"])
                for o in case.outputs:
                    rows.append([case.label, o.name, f"{o.max_abs:.3g}", f"{o.max_rel:.3g}", f"{o.cosine:.6f}",
                                 "PASS" if o else "FAIL" + (f" ({o.note})" if o.note else "")])
            lines.append(fmt_table(rows, ["inputs", "output", "max_abs", "max_rel", "cosine", ""]))
        lines += [f"note: {n}" for n in self.notes]
        lines += ["", f"verdict: {self._verdict()}"]
        return "\n".join(lines)
