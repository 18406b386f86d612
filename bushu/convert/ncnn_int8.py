"""ncnn's own INT8 model, made here: what ncnn's ``ncnn2table`` + ``ncnn2int8`` tools do, in Python.

ncnn can't run ONNX's QuantizeLinear/DequantizeLinear (pnnx leaves them as layers ncnn has no kernel for); it
runs INT8 from its own format: a Convolution, ConvolutionDepthWise or InnerProduct layer with ``8=1``
(``int8_scale_term``) in the param file, INT8 weights (tag ``0x000D4B38``) in the bin file, and after the bias its
per-output-channel weight scales and the scale of its input blob (``int8 = round(x · scale)``, clamped to ±127).
Those tools are not in the ``ncnn``/``pnnx`` wheels nor in Debian, so this module writes the same files:

1. **Calibration** (``ncnn2table``): the FP32 ncnn model runs on the calibration feeds and every quantized
   layer's input blob is streamed into a :class:`bushu.quant.observers.HistogramObserver` of its absolute
   values; the blob's threshold is the max (``minmax``) or the KL-divergence one (ncnn2table's default
   ``method=kl``; zeros are left out of its histogram as ncnn2table does: with them, the spike at 0 of a ReLU
   output hides the tail and KL clipped PP-OCR cls to cosine 0.63); its scale is ``127 / threshold``. Weight scales are ``127 / max|w|`` per output channel (per
   group for depthwise).
2. **Rewrite** (``ncnn2int8``): the param file gets ``8=1`` on those layers; the bin file is walked layer by layer
   (each layer type's ``load_model`` order, below), their FP32 weights are replaced by INT8 and the scales are
   inserted after the bias. The walk must end exactly at the end of the file, or nothing is written: a layer type
   whose weights this module doesn't know is refused, never guessed.

Layers of other types keep FP32; ncnn converts between them at run time. **Depthwise convolutions keep FP32 too**
unless asked (``depthwise=True``): on this x86 build (the PyPI wheel, which has AVX-512 VNNI INT8 kernels) ncnn's
INT8 ``ConvolutionDepthWise`` runs slower than its FP32 one. Measured on PP-OCR (1 thread, interleaved rounds,
docs/dev/perf-bench.md): with only its depthwise layers INT8, cls ran at 0.71x and rec at 0.83x FP32 speed; with
every other layer INT8 and the depthwise ones FP32, cls 1.05x and rec 1.26x. A depthwise layer has few MACs per
byte, so quantizing its input and dequantizing its output costs more than its INT8 arithmetic saves.
:func:`bushu.convert.convert` checks the result and, when it fails (PP-OCR rec: worst cosine 0.939 against ORT
with the depthwise layers FP32, 0.988 with every layer INT8; not explained: with only the 1x1 convolutions INT8 it
is 0.938 too, with 1x1 and depthwise INT8 0.983), makes the depthwise layers INT8 as well and says so.
"""

from __future__ import annotations

import dataclasses
import os
import struct
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from ..errors import BushuError

MAGIC = "7767517"
TAG_FP32 = 0
TAG_FP16 = 0x01306B47
TAG_INT8 = 0x000D4B38
TAG_FP32_RAW = 0x0002C056
QUANTIZED = ("Convolution", "ConvolutionDepthWise", "InnerProduct")
_CONV_LIKE = {"Convolution", "ConvolutionDepthWise", "Deconvolution", "DeconvolutionDepthWise", "Convolution1D",
              "ConvolutionDepthWise1D", "Deconvolution1D", "DeconvolutionDepthWise1D", "Convolution3D",
              "ConvolutionDepthWise3D", "Deconvolution3D", "DeconvolutionDepthWise3D"}
# layer types that hold no weights (those pnnx emits for the zoo's models and their like)
_WEIGHTLESS = {"Input", "Split", "ReLU", "HardSwish", "HardSigmoid", "Swish", "Sigmoid", "TanH", "Mish", "GELU", "ELU",
               "Clip", "BinaryOp", "UnaryOp", "Pooling", "Pooling1D", "Pooling3D", "Reshape", "Permute", "Concat",
               "Softmax", "Squeeze", "ExpandDims", "Interp", "Reduction", "Slice", "Crop", "Padding", "Flatten",
               "Eltwise", "Dropout", "Noop", "Cast", "ShuffleChannel", "PixelShuffle", "Tile", "Threshold", "Exp",
               "Log", "Power", "AbsVal", "Bias", "Erf", "Dequantize", "Quantize", "Requantize", "CopyTo",
               "Sum", "Yolov3DetectionOutput", "Spp", "DeepCopy", "Shrink", "Fold", "Unfold", "CumulativeSum",
               "Flip", "Diag", "Einsum"}


@dataclasses.dataclass
class Layer:
    type: str
    name: str
    bottoms: list[str]
    tops: list[str]
    params: dict[str, str]  # "8" → "1", "-23303" → "1,0" (kept as written)

    def i(self, key: int, default: int = 0) -> int:
        v = self.params.get(str(key))
        return default if v is None else int(float(v))

    def line(self) -> str:
        params = " ".join(f"{k}={v}" for k, v in self.params.items())
        head = f"{self.type:<24} {self.name:<24} {len(self.bottoms)} {len(self.tops)}"
        return " ".join(x for x in (head, *self.bottoms, *self.tops, params) if x)


def read_param(path: Path) -> list[Layer]:
    lines = [ln for ln in Path(path).read_text().splitlines() if ln.strip()]
    if not lines or lines[0].strip() != MAGIC:
        raise BushuError(f"{path} is not an ncnn param file (its first line is not {MAGIC})")
    layers = []
    for ln in lines[2:]:
        tok = ln.split()
        nb, nt = int(tok[2]), int(tok[3])
        bottoms, tops = tok[4:4 + nb], tok[4 + nb:4 + nb + nt]
        params = dict(t.split("=", 1) for t in tok[4 + nb + nt:])
        layers.append(Layer(tok[0], tok[1], bottoms, tops, params))
    return layers


def write_param(path: Path, layers: Sequence[Layer]) -> None:
    blobs = len({b for layer in layers for b in layer.tops})
    Path(path).write_text("\n".join([MAGIC, f"{len(layers)} {blobs}", *(layer.line() for layer in layers)]) + "\n")


def _weights(layer: Layer) -> list[tuple[str, int]]:
    """The arrays ``layer.load_model`` reads, in order: ("tagged", count) for ``mb.load(n, 0)`` (a 4-byte tag says
    the storage), ("raw", count) for ``mb.load(n, 1)`` (FP32, no tag)."""
    t = layer.type
    if t in _CONV_LIKE:
        if layer.i(19) == 1 or (t.startswith("Deconvolution") and layer.i(28) == 1):
            return []  # dynamic weight: given as a second input
        if layer.i(8):
            raise BushuError(f"layer {layer.name} is INT8 already: quantize the FP32 ncnn model")
        return [("tagged", layer.i(6))] + ([("raw", layer.i(0))] if layer.i(5) else [])
    if t == "InnerProduct":
        if layer.i(8):
            raise BushuError(f"layer {layer.name} is INT8 already: quantize the FP32 ncnn model")
        return [("tagged", layer.i(2))] + ([("raw", layer.i(0))] if layer.i(1) else [])
    if t == "MemoryData":
        dims = [layer.i(0), layer.i(1), layer.i(11), layer.i(2)]
        known = [d for d in dims if d]
        return [("raw", int(np.prod(known)))] if known else []
    if t == "LayerNorm" or t == "RMSNorm":
        n = layer.i(0)
        return ([("raw", n)] * (2 if t == "LayerNorm" else 1)) if layer.i(2, 1) else []
    if t == "BatchNorm":
        return [("raw", layer.i(0))] * 4
    if t == "Scale":
        n = layer.i(0)
        return ([("raw", n)] if n != -233 else []) + ([("raw", n)] if layer.i(1) else [])
    if t == "PReLU":
        return [("raw", layer.i(0))]
    if t == "Embed":
        return [("tagged", layer.i(3))] + ([("raw", layer.i(0))] if layer.i(2) else [])
    if t in ("GroupNorm", "InstanceNorm"):
        c = layer.i(1) if t == "GroupNorm" else layer.i(0)
        return [("raw", c)] * 2 if layer.i(3 if t == "GroupNorm" else 2, 1) else []
    if t == "MultiHeadAttention":
        e, wds = layer.i(0), layer.i(2)
        q = wds // e if e else 0
        k, v = layer.i(3, e), layer.i(4, e)
        return [("tagged", e * q), ("raw", e), ("tagged", e * k), ("raw", e), ("tagged", e * v), ("raw", e),
                ("tagged", q * e), ("raw", q)]
    if t == "Gemm":
        out = []
        m, n, k = layer.i(7), layer.i(8), layer.i(9)
        if layer.i(4):
            out.append(("tagged", m * k))
        if layer.i(5):
            out.append(("tagged", n * k))
        bc = layer.i(10)
        if layer.i(6) and bc != -1:
            out.append(("tagged", {0: 1, 1: m, 2: m, 3: m * n, 4: n}[bc]))
        return out
    if t in _WEIGHTLESS:
        return []
    raise BushuError(f"ncnn INT8: layer type {t} ({layer.name}) may hold weights this module can't walk; "
                     "quantize a model without it or use another engine")


def _align4(n: int) -> int:
    return (n + 3) & ~3


def _span(data: bytes, offset: int, kind: str, count: int) -> tuple[int, np.ndarray | None]:
    """Bytes taken by one array at ``offset``, and its values when FP32."""
    if kind == "raw":
        return count * 4, np.frombuffer(data, np.float32, count, offset)
    (tag,) = struct.unpack_from("<I", data, offset)
    if tag in (TAG_FP32, TAG_FP32_RAW):
        return 4 + count * 4, np.frombuffer(data, np.float32, count, offset + 4)
    if tag == TAG_FP16:
        return 4 + _align4(count * 2), None
    if tag == TAG_INT8:
        return 4 + _align4(count), None
    return 4 + 256 * 4 + _align4(count), None  # a 256-entry value table and one byte per weight


@dataclasses.dataclass(frozen=True)
class Int8Layer:
    name: str
    type: str
    bottom: str
    threshold: float
    weight_scales: tuple[float, ...]


def _weight_scales(layer: Layer, w: np.ndarray) -> np.ndarray:
    groups = layer.i(7, 1) if layer.type == "ConvolutionDepthWise" else layer.i(0)
    absmax = np.abs(w.reshape(groups, -1).astype(np.float64)).max(axis=1)
    ok = absmax > 1e-30  # an all-zero (or denormal) channel gets scale 1, as ncnn2table gives it
    return np.where(ok, 127.0 / np.where(ok, absmax, 1.0), 1.0).astype(np.float32)


def _quantize(w: np.ndarray, scales: np.ndarray) -> np.ndarray:
    q = w.reshape(len(scales), -1).astype(np.float64) * scales[:, None]
    return np.clip(np.round(q), -127, 127).astype(np.int8).reshape(-1)  # round half away from zero, as ncnn


def rewrite(param: Path, weights: Path, out_param: Path, out_weights: Path, thresholds: Mapping[str, float]
            ) -> list[Int8Layer]:
    """Write the INT8 model: each layer named in ``thresholds`` (layer name → its input blob's threshold) gets
    INT8 weights and its scales; every other byte is copied. Raises before writing anything if the walk of
    ``weights`` does not end at its last byte."""
    layers = read_param(param)
    data = Path(weights).read_bytes()
    out = bytearray()
    done = []
    offset = 0
    for layer in layers:
        arrays = _weights(layer)
        quantize = layer.name in thresholds and layer.type in QUANTIZED
        for j, (kind, count) in enumerate(arrays):
            if offset + (count * 4 if kind == "raw" else 4) > len(data):
                raise BushuError(f"ncnn INT8: {weights} ends inside layer {layer.name} ({layer.type}): the param "
                                 "and bin files don't match")
            size, values = _span(data, offset, kind, count)
            if quantize and j == 0:
                if values is None:
                    raise BushuError(f"ncnn INT8: layer {layer.name} has no FP32 weights to quantize (convert with "
                                     "fp16=0)")
                scales = _weight_scales(layer, values)
                q = _quantize(values, scales)
                out += struct.pack("<I", TAG_INT8) + q.tobytes() + b"\0" * (_align4(q.size) - q.size)
            else:
                out += data[offset:offset + size]
            offset += size
        if quantize:
            t = float(thresholds[layer.name])
            bottom_scale = 127.0 / t if t > 0 else 1.0
            out += scales.tobytes() + np.float32(bottom_scale).tobytes()
            layer.params["8"] = "1"
            done.append(Int8Layer(layer.name, layer.type, layer.bottoms[0], t, tuple(float(s) for s in scales)))
    if offset != len(data):
        raise BushuError(f"ncnn INT8: walked {offset} of {len(data)} bytes of {weights}: a layer's weights are "
                         "not where this module expects them; nothing written")
    write_param(out_param, layers)
    Path(out_weights).write_bytes(bytes(out))
    return done


def thresholds(session, feeds: Iterable[Mapping[str, np.ndarray]], layers: Sequence[Layer], method: str = "kl"
               ) -> dict[str, float]:
    """Run the FP32 ncnn ``session`` (:class:`bushu.engines.ncnn.NcnnSession`) on ``feeds`` and return, per layer,
    the threshold of its input blob: KL divergence over a histogram of |x| (``kl``) or the max of |x|
    (``minmax``)."""
    from ..quant.observers import HistogramObserver

    if method not in ("kl", "minmax"):
        raise BushuError(f"unknown ncnn calibration method '{method}': choose kl or minmax")
    blobs = sorted({layer.bottoms[0] for layer in layers})
    observers = {b: HistogramObserver() for b in blobs}
    n = 0
    for feed in feeds:
        for name, arrays in session.blobs(feed, blobs).items():
            for a in arrays:
                a = np.abs(a)
                observers[name].update(a[a != 0] if method == "kl" else a)  # as ncnn2table: zeros skipped for KL
        n += 1
    if n == 0:
        raise BushuError("ncnn INT8 needs calibration data: the calibration set is empty")
    out = {}
    for layer in layers:
        obs = observers[layer.bottoms[0]]
        if obs.count == 0:  # all zeros: any scale will do
            out[layer.name] = 0.0
        else:
            out[layer.name] = float(obs.max) if method == "minmax" else float(obs._kl_threshold(128))
    return out


def quantizable(param: Path, depthwise: bool = False) -> list[Layer]:
    """The layers to make INT8: Convolution and InnerProduct, and ConvolutionDepthWise when ``depthwise``."""
    kinds = QUANTIZED if depthwise else tuple(t for t in QUANTIZED if t != "ConvolutionDepthWise")
    return [layer for layer in read_param(param) if layer.type in kinds]


def quantize_model(folder: Path, files: Sequence[str], session, feeds, method: str = "kl",
                   depthwise: bool = False) -> list[Int8Layer]:
    """Make ``folder``'s FP32 ncnn model (``files``: param, bin) INT8 in place (each file replaced atomically);
    depthwise convolutions stay FP32 unless ``depthwise`` (see the module docstring)."""
    param, weights = folder / files[0], folder / files[1]
    layers = quantizable(param, depthwise)
    if not layers:
        raise BushuError("ncnn INT8: the model has no Convolution or InnerProduct layer"
                         + ("" if depthwise else " (depthwise convolutions stay FP32 unless int8_depthwise=True)"))
    found = thresholds(session, feeds, layers, method)
    tmp_param, tmp_weights = folder / f".{files[0]}.int8", folder / f".{files[1]}.int8"
    try:
        done = rewrite(param, weights, tmp_param, tmp_weights, found)
        os.replace(tmp_weights, weights)
        os.replace(tmp_param, param)
    finally:
        for p in (tmp_param, tmp_weights):
            p.unlink(missing_ok=True)
    return done
