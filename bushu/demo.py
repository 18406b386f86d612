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


def step_optimize(ctx: Context):
    from . import zoo
    from .passes import optimize

    out = ctx.out / "rec-optimized.onnx"
    # opset 14 writes PP-OCR's x*Clip(x+3,0,6)/6 as one HardSwish op: the fastest file on ONNX Runtime and OpenVINO,
    # and the one INT8 gains most on (docs/quantize.md); below 14 the Clip form is kept (OpenVINO runs it faster).
    _, res = optimize(zoo.path("ppocr-rec"), out, verify="each", opset=14, samples=2 if ctx.quick else 3,
                      shapes={"x": REC_SHAPE}, latency=not ctx.quick, force=True, show_progress=ctx.progress)
    ctx.state["optimized"] = out
    return res, str(res)


def _lines(ctx: Context):
    """Rendered text lines: (calibration, held-out), cached for the steps that need them."""
    if "lines" not in ctx.state:
        from . import datasets

        n_cal, n_eval = (16, 24) if ctx.quick else (64, 200)
        lines = datasets.text_lines(n_cal + n_eval, seed=0)
        ctx.state["lines"] = (lines[:n_cal], lines[n_cal:])
    return ctx.state["lines"]


def step_quantize(ctx: Context):
    from .quant import quantize

    calib, _ = _lines(ctx)
    out = ctx.out / "rec-int8.onnx"
    res = quantize(ctx.state["optimized"], [{"x": line.x} for line in calib], output=out, force=True,
                   engine="ort", progress=ctx.progress)
    ctx.state["int8"] = out
    return res, str(res)


@dataclasses.dataclass(frozen=True)
class WordAccuracy(Result):
    """Exact-match word accuracy of PP-OCRv4 rec before and after quantization, on rendered text lines; truthy when
    INT8 loses at most ``max_drop`` (absolute)."""

    kind = "word_accuracy"
    engine: str
    lines: int
    fp32: float
    int8: float
    max_drop: float
    examples: tuple[tuple[str, str, str], ...]  # (truth, fp32, int8) where they differ

    def __bool__(self) -> bool:
        return self.fp32 - self.int8 <= self.max_drop

    def __str__(self) -> str:
        return (f"word accuracy on {self.lines} rendered lines ({self.engine}): FP32 {self.fp32:.3f}, INT8 "
                f"{self.int8:.3f} (drop {100 * (self.fp32 - self.int8):+.1f} pp, allowed {100 * self.max_drop:.0f} pp)")


def step_accuracy(ctx: Context):
    from . import datasets, engines

    _, heldout = _lines(ctx)
    keys = __import__("bushu.zoo", fromlist=["ppocr_keys"]).ppocr_keys()
    texts = {}
    for tag in ("optimized", "int8"):
        sess = engines.open_session(str(ctx.state[tag]), "ort")
        texts[tag] = [datasets.ppocr_decode(sess.run({"x": line.x})[sess.outputs[0].name], keys)[0]
                      for line in heldout]
    truth = [line.text for line in heldout]

    def acc(pred):
        return sum(p == t for p, t in zip(pred, truth)) / len(truth)

    diffs = tuple((t, a, b) for t, a, b in zip(truth, texts["optimized"], texts["int8"]) if a != b)[:10]
    res = WordAccuracy("ort", len(truth), acc(texts["optimized"]), acc(texts["int8"]), 0.05 if ctx.quick else 0.02,
                       diffs)
    return res, str(res)


def step_compare_int8(ctx: Context):
    from .compare import Tolerance, compare

    _, heldout = _lines(ctx)
    # INT8 is not bit-exact by design, and the task metric is the word accuracy above: here the softmax over 6,625
    # characters only has to stay recognisably the same (cosine), while --layerwise shows where the error starts.
    res = compare(str(ctx.state["optimized"]), str(ctx.state["int8"]), inputs=[{"x": ln.x} for ln in heldout[:4]],
                  tol=Tolerance(atol=1.0, rtol=0.0, min_cosine=0.85), layerwise=True, show_progress=ctx.progress)
    return res, str(res)


# Engines that run ONNX's QuantizeLinear/DequantizeLinear as INT8 (ncnn has its own INT8 format, not QDQ).
QDQ_ENGINES = ("ort", "openvino", "mnn")


def step_bench(ctx: Context):
    from . import engines, zoo
    from .bench import bench

    wanted = ("ort", "openvino") if ctx.quick else ("ort", "openvino", "ncnn", "mnn")
    have = [e for e in wanted if e in engines.available()]
    timing = dict(batch=(1,), shapes={"x": REC_SHAPE}, warmup_s=0.1 if ctx.quick else 0.25,
                  budget_s=0.3 if ctx.quick else 1.0, isolate=not ctx.quick, show_progress=ctx.progress)
    fp32 = bench([zoo.path("ppocr-rec"), ctx.state["optimized"]], engines=have, **timing)
    int8 = bench([ctx.state["int8"]], engines=[e for e in have if e in QDQ_ENGINES], **timing)
    ctx.save_json("bench-int8", int8)
    if not int8:
        raise RuntimeError(f"INT8 bench: {int8}")
    return fp32, f"FP32 {fp32}; INT8 {int8}"


@dataclasses.dataclass(frozen=True)
class ServeCheck(Result):
    """A served model answered Triton's own client with the same text as in-process; truthy when it did."""

    kind = "serve_check"
    url: str
    model: str
    truth: str
    served: str
    in_process: str
    latency_ms: float

    def __bool__(self) -> bool:
        return self.served == self.in_process

    def __str__(self) -> str:
        return (f"served {self.model} at {self.url}; tritonclient read '{self.served}' (in-process '{self.in_process}', "
                f"truth '{self.truth}') in {self.latency_ms:.1f} ms")


def step_serve(ctx: Context):
    import re
    import signal
    import subprocess

    import numpy as np

    from . import datasets, engines
    from .errors import require

    httpclient = require("tritonclient.http", extra="serve", feature="querying the server")
    _, heldout = _lines(ctx)
    line = heldout[0]
    model = ctx.state["int8"]
    proc = subprocess.Popen([sys.executable, "-m", "bushu", "serve", str(model), "--http-port", "0", "--grpc-port",
                             "-1", "--metrics-port", "-1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        url = None
        t_end = time.monotonic() + 120
        while time.monotonic() < t_end:
            text = proc.stderr.readline()
            if not text and proc.poll() is not None:
                raise RuntimeError(f"bushu serve exited with code {proc.returncode}")
            m = re.search(r"ready .*?http://([\w.\[\]:]+)", text)
            if m:
                url = m.group(1)
                break
        if url is None:
            raise RuntimeError("bushu serve did not become ready in 120 s")
        client = httpclient.InferenceServerClient(url)
        name = client.get_model_repository_index()[0]["name"] if hasattr(client, "get_model_repository_index") else None
        meta = client.get_model_metadata(name)
        inp = httpclient.InferInput(meta["inputs"][0]["name"], list(line.x.shape), "FP32")
        inp.set_data_from_numpy(line.x, binary_data=True)
        out_name = meta["outputs"][0]["name"]
        t0 = time.perf_counter()
        res = client.infer(name, [inp], outputs=[httpclient.InferRequestedOutput(out_name, binary_data=True)])
        latency = (time.perf_counter() - t0) * 1e3
        served = datasets.ppocr_decode(res.as_numpy(out_name))[0]
        sess = engines.open_session(str(model), "ort")
        local = datasets.ppocr_decode(np.asarray(sess.run({"x": line.x})[out_name]))[0]
        client.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    out = ServeCheck(f"http://{url}", name, line.text, served, local, latency)
    return out, str(out)


def step_report(ctx: Context):
    from .report import report

    out = ctx.out / "report.html"
    res = report(ctx.state["json"], out, title="bushu demo: PP-OCRv4 rec")
    ctx.state["report"] = str(out)
    return None, f"{out}"


STEPS: list[tuple[str, Callable[[Context], tuple]]] = [
    ("inspect", step_inspect),
    ("run", step_run),
    ("compare engines", step_compare_engines),
    ("export MiniLM", step_export),
    ("optimize", step_optimize),
    ("quantize", step_quantize),
    ("word accuracy", step_accuracy),
    ("compare FP32 vs INT8", step_compare_int8),
    ("bench", step_bench),
    ("serve", step_serve),
    ("report", step_report),
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
