"""The result of :func:`bushu.quantize`: the quantized model, how it was made, how accurate and how fast it is."""

from __future__ import annotations

import dataclasses

import onnx_ir as ir

from ..results import Result, fmt_table
from .budget import Accuracy, Step
from .diagnose import Diagnosis
from .speed import Speed
from .verify import EngineCheck


@dataclasses.dataclass(frozen=True)
class QuantizeResult(Result):
    """Truthy when the accuracy budget was met (always, without a budget) and the target engine computes the file
    right (``engine_check``: the file on the target engine against the same file on ONNX Runtime; None on ONNX
    Runtime itself). ``model`` is the quantized ``ir.Model`` (save it with ``bushu.save``); ``float_layers`` are
    the weighted layers left in float and why; ``placement`` is the preset whose Q/DQ placement the file has
    (another engine's when the target engine computed its own wrong: ``rejected`` holds those checks)."""

    kind = "quantize"
    source: str
    mode: str
    engine: str
    method: str
    quantized_layers: int
    float_layers: dict[str, str]
    notes: tuple[str, ...]
    calibration_samples: int
    accuracy: Accuracy | None
    speed: Speed | None
    budget: str | None = None
    budget_met: bool = True
    budget_steps: tuple[Step, ...] = ()
    diagnosis: Diagnosis | None = None
    saved_to: str | None = None
    placement: str = ""
    engine_check: EngineCheck | None = None
    rejected: tuple[EngineCheck, ...] = ()
    # the kernels the target engine runs the weighted layers with ("MatMulNBits": 36, "FullyConnected i4": 36) and
    # the weights' bytes before and after (non-static modes)
    kernels: dict[str, int] = dataclasses.field(default_factory=dict)
    weight_bytes: tuple[int, int] | None = None
    model: ir.Model | None = dataclasses.field(default=None, repr=False, compare=False)

    def __bool__(self) -> bool:
        return self.budget_met and (self.engine_check is None or bool(self.engine_check))

    def __str__(self) -> str:
        s = f"{self.mode} {self.engine}: {self.quantized_layers} layers quantized ({self.method})"
        if self.accuracy is not None:
            s += f"; {self.accuracy}"
        if self.speed is not None:
            s += f"; {self.speed.speedup:.2f}× vs fp32"
        if self.budget:
            s += f"; budget {self.budget} {'met' if self.budget_met else 'NOT met'}"
        if self.engine_check is not None and not self.engine_check:
            s += f"; {self.engine} {'cannot run it' if self.engine_check.error else 'computes it WRONG'}"
        return s

    def render(self) -> str:
        where = self.engine + (f", {self.placement} placement" if self.placement not in ("", self.engine) else "")
        out = [f"model        {self.source}", f"mode         {self.mode} for {where} (ranges: {self.method})",
               f"quantized    {self.quantized_layers} weighted layers; {len(self.float_layers)} left in float",
               f"calibration  {self.calibration_samples} samples"]
        out += [f"note         {n}" for n in self.notes]
        if self.accuracy is not None:
            out.append(f"accuracy     {self.accuracy}")
        for c in self.rejected:
            out.append(f"rejected     {c}")
        if self.engine_check is not None:
            out.append(f"{'verified' if self.engine_check else 'WRONG':13s}{self.engine_check}")
        if self.kernels:
            out.append(f"kernels      on {self.engine}: " + ", ".join(f"{k} ×{v}" for k, v in self.kernels.items()))
        if self.weight_bytes:
            before, after = self.weight_bytes
            out.append(f"weights      {before / 1e6:.2f} MB → {after / 1e6:.2f} MB ({before / max(after, 1):.1f}× smaller)")
        if self.budget:
            out.append(f"budget       {self.budget}: {'met' if self.budget_met else 'NOT met'}")
            for st in self.budget_steps:
                out.append(f"  {st.method:10s} {len(st.float_layers):3d} layers in float → {st.value:.4g} "
                           f"{'ok' if st.met else 'no'}")
        if self.float_layers:
            rows = [[k, v] for k, v in list(self.float_layers.items())[:20]]
            more = len(self.float_layers) - len(rows)
            out += ["", "left in float:", fmt_table(rows, ["layer", "why"])] + ([f"… and {more} more"] if more else [])
        if self.speed is not None:
            sp = self.speed
            out += ["", (f"latency      fp32 {sp.fp32.median_ms:.3f} ms (p90 {sp.fp32.p90_ms:.3f}), quantized "
                        f"{sp.quantized.median_ms:.3f} ms (p90 {sp.quantized.p90_ms:.3f}) on {sp.engine}: "
                        f"{sp.speedup:.2f}×")]
            out += [f"why slower   {r}" for r in sp.reasons]
        if self.diagnosis is not None:
            out += ["", self.diagnosis.render()]
        if self.saved_to:
            out += ["", f"saved to {self.saved_to}"]
        return "\n".join(out)
