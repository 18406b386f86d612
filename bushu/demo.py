"""``bushu demo``: the deployment engineer's loop, end to end, on PP-OCRv4 rec (a real trained model).

inspect → run on every installed engine → compare engines → export MiniLM from PyTorch → optimize → quantize (INT8,
calibrated on rendered text lines) → compare FP32 vs INT8 (word accuracy) → bench on every installed engine →
serve and query with Triton's own client → one HTML report. Every step calls the same public function a user would,
writes its ``--json`` result into the output folder, and the report renders them all.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from .results import Result, fmt_table


@dataclasses.dataclass(frozen=True)
class DemoStep:
    name: str
    ok: bool
    seconds: float
    summary: str
    artifact: str | None = None


@dataclasses.dataclass(frozen=True)
class DemoResult(Result):
    """Every step of the demo; truthy when all of them succeeded."""

    kind = "demo"
    out_dir: str
    steps: tuple[DemoStep, ...]
    report: str | None

    def __bool__(self) -> bool:
        return all(s.ok for s in self.steps)

    def __str__(self) -> str:
        ok = sum(s.ok for s in self.steps)
        return f"demo: {ok}/{len(self.steps)} steps succeeded; outputs in {self.out_dir}"

    def render(self) -> str:
        rows = [[s.name, "ok" if s.ok else "FAILED", f"{s.seconds:.1f}s", s.summary] for s in self.steps]
        lines = [fmt_table(rows, ["step", "", "time", "result"]), "", str(self)]
        if self.report:
            lines.append(f"report: {self.report}  (open it in a browser)")
        return "\n".join(lines)


@dataclasses.dataclass
class Context:
    out: Path
    quick: bool
    progress: bool
    state: dict = dataclasses.field(default_factory=dict)

    def save_json(self, name: str, result) -> str:
        path = self.out / f"{name}.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(result.to_json())
        tmp.replace(path)
        self.state.setdefault("json", []).append(path)
        return str(path)


REC_SHAPE = (1, 3, 48, 320)


def step_inspect(ctx: Context):
    from . import zoo
    from .inspect import inspect

    res = inspect(zoo.path("ppocr-rec"), shapes={"x": REC_SHAPE})
    total = getattr(res, "total_flops", None)
    return res, f"{res}" if total is None else str(res)


def step_run(ctx: Context):
    from . import engines, zoo
    from .run import run

    results = []
    for eng in engines.available():
        if eng not in ("ort", "openvino"):
            continue
        r = run(zoo.path("ppocr-rec"), engine=eng, shapes={"x": REC_SHAPE}, time=True)
        results.append(r)
        ctx.save_json(f"run-{eng}", r)
    return None, "; ".join(f"{r.engine} {r.latency.median_ms:.2f} ms" for r in results)


def step_compare_engines(ctx: Context):
    from . import engines, zoo
    from .compare import compare

    others = [e for e in ("openvino",) if e in engines.available()]
    if not others:
        return None, "skipped: only ONNX Runtime is installed (pip install 'bushu[openvino]')"
    res = compare(zoo.path("ppocr-rec"), engines=("ort", others[0]), samples=2 if ctx.quick else 8,
                  shapes={"x": REC_SHAPE}, show_progress=ctx.progress)
    return res, str(res)


def step_export(ctx: Context):
    from . import zoo_torch
    from .export import export

    module = zoo_torch.minilm_module()
    ids, mask, types = zoo_torch.minilm_example()
    res = export(module, {"input_ids": ids, "attention_mask": mask, "token_type_ids": types},
                 output=ctx.out / "minilm.onnx", dynamic_shapes={n: {0: "batch", 1: "sequence"} for n in
                                                                 ("input_ids", "attention_mask", "token_type_ids")},
                 force=True, show_progress=ctx.progress)
    return res, str(res)


STEPS: list[tuple[str, Callable[[Context], tuple]]] = [
    ("inspect", step_inspect),
    ("run", step_run),
    ("compare engines", step_compare_engines),
    ("export MiniLM", step_export),
]


def demo(out_dir: str | Path = "demo-out", *, quick: bool = False, show_progress: bool = True,
         debug: bool = False) -> DemoResult:
    """Run every step; a failed step is reported and the others go on. ``quick`` uses fewer samples and shorter
    timings (the test suite runs it)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ctx = Context(out=out, quick=quick, progress=show_progress)
    steps: list[DemoStep] = []
    for name, fn in STEPS:
        if show_progress:
            print(f"[demo] {name} …", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        try:
            result, summary = fn(ctx)
            artifact = ctx.save_json(name.replace(" ", "-"), result) if result is not None else None
            ok = True if result is None else bool(result)
        except Exception as e:  # a demo step failing must not hide the others
            if debug:
                traceback.print_exc()
            summary, artifact, ok = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}", None, False
        steps.append(DemoStep(name, ok, time.perf_counter() - t0, summary.splitlines()[0][:160], artifact))
    report = ctx.state.get("report")
    (out / "demo.json").write_text(json.dumps({"steps": [dataclasses.asdict(s) for s in steps]}, indent=2))
    return DemoResult(out_dir=str(out), steps=tuple(steps), report=report)
