"""``bushu.convert``: an ONNX model to ncnn, MNN or OpenVINO IR, verified against ONNX Runtime."""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import time
from pathlib import Path

import onnx_ir as ir

from ..compare.metrics import OutputDiff, Tolerance, diff, merge
from ..engines import open_session
from ..engines.base import EngineOptions, model_specs
from ..errors import BushuError
from ..inputs import synthesize
from ..results import Result, fmt_table
from . import targets
from .common import ConversionError


@dataclasses.dataclass(frozen=True)
class ConvertResult(Result):
    """One conversion; truthy when it converted and the converted model matched ONNX Runtime."""

    kind = "convert"
    model: str
    target: str
    converter: str
    out_dir: str | None
    files: tuple[str, ...]
    seconds: float
    outputs: tuple[OutputDiff, ...]
    error: str | None = None
    unsupported: tuple[str, ...] = ()
    verified: bool = True  # False when verification was skipped (verify_outputs=False)
    precision: str = "fp32"  # "int8": ncnn's own INT8 (--int8), verified on the calibration feeds
    int8_layers: int = 0  # layers made INT8
    int8_fp32_depthwise: int = 0  # depthwise convolutions left FP32 (slower in INT8 on ncnn's x86 kernels)
    int8_note: str = ""  # why the depthwise convolutions were made INT8 after all (their FP32 result failed its check)

    def __bool__(self) -> bool:
        return self.error is None and (not self.verified or (bool(self.outputs) and all(self.outputs)))

    @property
    def verdict(self) -> str:
        if self.error:
            return "FAILED"
        if not self.verified:
            return "converted, NOT verified"
        return "verified" if self else "MISMATCH"

    def __str__(self) -> str:
        if self.error:
            return f"{self.model} → {self.target}: FAILED: {self.error}"
        what = f"{self.target} INT8 ({self.int8_layers} layers)" if self.precision == "int8" else self.target
        head = f"{self.model} → {what} ({self.converter}) in {self.seconds:.1f} s: {self.verdict}"
        if self.verified and self.precision == "int8":
            head += (f" against ONNX Runtime FP32 on the calibration feeds (cosine ≥ {INT8_TOL.min_cosine}: worst "
                     f"{min((o.cosine for o in self.outputs), default=1.0):.4f})")
        elif self.verified:
            head += f" against ONNX Runtime (max_abs {max((o.max_abs for o in self.outputs), default=0.0):.3g})"
        if self.int8_fp32_depthwise:
            head += (f"; {self.int8_fp32_depthwise} depthwise convolutions kept FP32 (ncnn's INT8 depthwise kernels "
                     "ran slower than FP32 here: PP-OCR cls 0.71x with only them INT8; int8_depthwise=True "
                     "quantizes them)")
        if self.int8_note:
            head += f"; {self.int8_note}"
        return f"{head}; written to {self.out_dir}"

    def render(self) -> str:
        lines = [str(self)]
        if self.outputs:
            rows = [[o.name, "PASS" if o else "FAIL", f"{o.max_abs:.3g}", f"{o.cosine:.6f}", f"{o.snr_db:.1f}"]
                    for o in self.outputs]
            lines += ["", fmt_table(rows, ["output", "verdict", "max_abs", "cosine", "snr dB"])]
        if self.files:
            lines += ["", "files: " + ", ".join(self.files)]
        return "\n".join(lines)


def open_converted(target: str, folder: Path, m: ir.Model, shapes: dict, threads: int | None = None):
    """A session over converted files in ``folder`` (``m``: the ONNX model they came from; the same session
    classes the engines use)."""
    ins, outs = model_specs(m)
    if target == "ncnn":
        from ..engines.ncnn import NcnnSession
        from .ncnn import FILES, fixed_specs, two_shapes

        return NcnnSession(folder / FILES[0], folder / FILES[1], fixed_specs(ins, *two_shapes(ins, shapes)), outs, threads)
    if target == "mnn":
        from ..engines.mnn import MnnSession
        from .mnn import FILES

        return MnnSession(folder / FILES[0], ins, outs, threads)
    from .openvino import FILES, IrSession

    return IrSession(folder / FILES[0], ins, outs, threads)


# INT8 is checked by direction, not by value: the outputs must point where FP32's do
INT8_TOL = Tolerance(atol=float("inf"), rtol=0.0, min_cosine=0.98)


def verify(target: str, folder: Path, m: ir.Model, *, shapes: dict, values: dict, seed: int = 0,
           tol: Tolerance = Tolerance(), threads: int | None = None, feeds=None) -> tuple[OutputDiff, ...]:
    """Run the converted model and ONNX Runtime on the same feeds (``feeds``, else one synthesized) and compare
    every output (the worst over the feeds)."""
    sess = open_converted(target, folder, m, shapes, threads)
    feeds = list(feeds) if feeds else [synthesize(sess.inputs, shapes=shapes, values=values, seed=seed)]
    ort_sess = open_session(m, "ort", EngineOptions(threads=threads))
    per_output: dict[str, list[OutputDiff]] = {}
    for feed in feeds:
        ref = ort_sess.run(feed)
        got = sess.run(feed)
        for name in ref:
            per_output.setdefault(name, []).append(diff(got[name], ref[name], name=name, tol=tol))
    return tuple(merge(d) for d in per_output.values())


def _int8(to: str, folder: Path, m: ir.Model, shapes: dict, calib, method: str, samples: int,
          threads: int | None, depthwise: bool = False) -> tuple[int, int, list]:
    """Make the FP32 ncnn model in ``folder`` INT8 (:mod:`bushu.convert.ncnn_int8`); returns the number of INT8
    layers, of depthwise convolutions left FP32, and the calibration feeds (the INT8 model is verified on a few of
    them)."""
    import itertools

    from ..quant.data import feeds as calib_feeds
    from . import ncnn_int8
    from .ncnn import FILES

    sess = open_converted(to, folder, m, shapes, threads)
    source, _ = calib_feeds(calib, sess.inputs)
    taken = list(itertools.islice(source, samples))
    kept = 0 if depthwise else sum(layer.type == "ConvolutionDepthWise"
                                   for layer in ncnn_int8.read_param(folder / FILES[0]))
    done = ncnn_int8.quantize_model(folder, FILES, sess, taken, method, depthwise=depthwise)
    return len(done), kept, taken


def _check_free(out_dir: Path, names: tuple[str, ...], force: bool) -> None:
    for name in names:
        if (out_dir / name).exists() and not force:
            raise BushuError(f"{out_dir / name} exists: pass force=True (--force) to overwrite it or choose another "
                             "-o folder")


def _publish(files: list[Path], out_dir: Path) -> list[str]:
    """Move the converted files into ``out_dir``, each by an atomic rename."""
    out_dir.mkdir(parents=True, exist_ok=True)
    published = []
    for f in files:
        os.replace(f, out_dir / f.name)
        published.append(str(out_dir / f.name))
    return published


def convert(model: ir.Model | str | os.PathLike, to: str, out_dir: str | os.PathLike | None = None, *,
            shapes: dict | None = None, values: dict | None = None, seed: int = 0, tol: Tolerance = Tolerance(),
            verify_outputs: bool = True, force: bool = False, threads: int | None = None, int8: bool = False,
            calib=None, calib_method: str = "minmax", calib_samples: int = 100,
            int8_depthwise: bool = False) -> ConvertResult:
    """Convert ``model`` (a path, an ``ir.Model`` or a zoo name) to ``to`` (``ncnn``, ``mnn``, ``openvino``) and
    write the files into ``out_dir`` (default: ``<model name>-<to>`` beside the model, or the current folder).

    ``shapes`` binds input shapes (ncnn fixes the non-batch dims of an input whose whole shape is bound);
    ``values`` fixes input values for the verification feed. A converter that refuses the model gives a failed
    result that carries its message and the unsupported ops; nothing is written then. A file already in
    ``out_dir`` is only replaced with ``force``.

    ``int8`` (ncnn only) makes ncnn's own INT8 model from the FP32 conversion, calibrated on ``calib`` (a folder of
    .npz/.npy feeds, one file, or an iterable of feeds; the first ``calib_samples``) with ``calib_method``
    (``minmax`` or ``kl``), and verifies it against ONNX Runtime FP32 on four of those feeds by cosine
    (:data:`INT8_TOL`). Depthwise convolutions stay FP32 unless ``int8_depthwise`` (ncnn's INT8 depthwise kernels
    are slower than its FP32 ones on x86; see :mod:`bushu.convert.ncnn_int8`).
    """
    from ..bench.models import resolve

    mod = targets.converter(to)
    if int8 and to != "ncnn":
        raise BushuError(f"--int8 makes ncnn's own INT8 model; for {to} quantize the ONNX model with bushu quantize "
                         "(QDQ), which it runs")
    if int8 and calib is None:
        raise BushuError("--int8 needs calibration data: give --calib FOLDER (.npz/.npy feeds)")
    ref = resolve(model, shapes, values)
    m, data = targets.onnx_bytes(ref.source)
    if out_dir is None:
        base = Path(ref.source).with_suffix("") if isinstance(ref.source, str) else Path(ref.label)
        out_dir = Path.cwd() / f"{base.name}-{to}"
    out_dir = Path(out_dir).resolve()
    if out_dir.exists() and not out_dir.is_dir():
        raise BushuError(f"{out_dir} is a file: -o takes a folder")
    _check_free(out_dir, mod.FILES, force)
    specs, _ = model_specs(m)
    t0 = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix=".bushu-convert-", dir=out_dir.parent if out_dir.parent.exists() else None))
    try:
        try:
            files = targets.convert_into(data, to, tmp, specs, ref.shapes, ref.values)
        except ConversionError as e:
            return ConvertResult(ref.label, to, mod.version(), None, (), time.perf_counter() - t0, (),
                                 error=str(e).split(": ", 1)[-1], unsupported=e.unsupported)
        note = ""
        # INT8 keeps the depthwise convolutions FP32 (faster, see bushu.convert.ncnn_int8) unless that result fails
        # its check: then they are made INT8 too, from a fresh FP32 conversion, and the result says why
        for depthwise in ((int8_depthwise,) if not int8 or int8_depthwise or not verify_outputs else (False, True)):
            if depthwise and not int8_depthwise:
                shutil.rmtree(tmp, ignore_errors=True)
                tmp.mkdir()
                files = targets.convert_into(data, to, tmp, specs, ref.shapes, ref.values)
            int8_layers, kept, check_feeds = _int8(to, tmp, m, ref.shapes, calib, calib_method, calib_samples,
                                                   threads, depthwise) if int8 else (0, 0, None)
            seconds = time.perf_counter() - t0
            try:
                outputs = verify(to, tmp, m, shapes=ref.shapes, values=ref.values, seed=seed,
                                 tol=INT8_TOL if int8 else tol, threads=threads,
                                 feeds=check_feeds[:4] if check_feeds else None) if verify_outputs else ()
            except BushuError as e:  # converted, but the result doesn't run: not worth publishing
                return ConvertResult(ref.label, to, mod.version(), None, (), seconds, (),
                                     error=f"converted, but the result failed to run: {e}")
            if not int8 or all(outputs) or depthwise:
                break
            note = (f"depthwise convolutions made INT8 too: with them FP32 the check failed (worst cosine "
                    f"{min(o.cosine for o in outputs):.4f})")
        published = _publish(files, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return ConvertResult(ref.label, to, mod.version(), str(out_dir), tuple(published), seconds, outputs,
                         verified=verify_outputs, precision="int8" if int8 else "fp32", int8_layers=int8_layers,
                         int8_fp32_depthwise=kept, int8_note=note)
