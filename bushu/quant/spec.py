"""Frozen configuration: how tensors are stored (:class:`QType`), what each engine runs fast (:class:`EnginePreset`),
and what the user asked for (:class:`QuantConfig`).

Policy lives here and in :mod:`bushu.quant.annotate`; the mechanism (observe → calibrate → convert) never looks at
an engine name. The presets were chosen by measurement on a 2-core AVX2/AVX-512 machine (see
docs/dev/quant-bench.md): ONNX Runtime fuses Q/DQ groups into integer kernels when activations are uint8 and
weights int8 symmetric per channel ("U8S8"); with int8 activations it leaves many groups as DQ → float op → Q.
OpenVINO runs symmetric int8 activations fast (see docs/quantize.md, "Engine notes", for the constructs OpenVINO
2026.4 computes wrong and how the preset avoids them).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from ..errors import BushuError

METHODS = ("minmax", "percentile", "entropy", "mse", "auto")
MODES = ("static", "dynamic", "weight-only", "int4", "fp16")


@dataclasses.dataclass(frozen=True)
class QType:
    """How a tensor is stored: ``dtype`` (``uint8``, ``int8``, ``int32``, ``int4``), symmetric (zero point 0) or
    not, and ``bits`` actually used (7 for ``reduce_range``: the value range is halved so that u8×s8 products
    can't overflow the 16-bit accumulation of CPUs without VNNI)."""

    dtype: str
    symmetric: bool
    bits: int = 8

    @property
    def qmin(self) -> int:
        if self.dtype.startswith("u"):
            return 0
        return -(2 ** (self.bits - 1)) + (1 if self.symmetric else 0)

    @property
    def qmax(self) -> int:
        if self.dtype.startswith("u"):
            return 2**self.bits - 1
        return 2 ** (self.bits - 1) - 1


UINT8 = QType("uint8", symmetric=False)
INT8_SYM = QType("int8", symmetric=True)
INT8_SYM7 = QType("int8", symmetric=True, bits=7)
# uint8 with zero point 128: the symmetric int8 grid stored unsigned (what OpenVINO computes right after a Concat).
UINT8_CENTERED = QType("uint8", symmetric=True)


# Ops with weights: their inputs, weights and outputs are quantized.
COMPUTE_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
# Ops that only move or select data: their output shares the input's scale and zero point, so engines drop the
# Q/DQ pair around them instead of requantizing.
SHARED_OPS = frozenset({"MaxPool", "Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Resize", "Slice",
                        "Split", "Gather", "DepthToSpace", "SpaceToDepth"})
# Elementwise/pooling ops with integer kernels: inputs and outputs get their own ranges.
ARITH_OPS = frozenset({"Add", "Mul", "Concat", "AveragePool", "GlobalAveragePool", "Sigmoid", "LeakyRelu"})
# Activations an engine can fold into the producer's QuantizeLinear (the Q clamps at its range).
FOLDABLE_ACTIVATIONS = frozenset({"Relu", "Clip"})
# Activations OpenVINO runs as a post-op of the Conv/MatMul before them (Conv+HardSwish is one kernel there): the
# quantization goes after the activation, never between it and its producer.
POST_OPS = frozenset({"Relu", "Clip", "HardSwish"})


@dataclasses.dataclass(frozen=True)
class EnginePreset:
    """Which tensors get which :class:`QType` on one engine, and how Q/DQ is placed so that the engine fuses it."""

    name: str
    activations: QType
    weights: QType
    compute_ops: frozenset = COMPUTE_OPS
    arith_ops: frozenset = ARITH_OPS
    shared_ops: frozenset = SHARED_OPS
    # Fold Relu/Clip(0, …) into the producer's uint8 Q (ORT's QDQ fusions expect DQ → Conv → Q, no Relu between).
    fold_activations: bool = True
    # Activations quantized at their output, not their input, when they follow a quantized Conv/Gemm/MatMul.
    post_ops: frozenset = FOLDABLE_ACTIVATIONS
    # Constant Mul/Add/Sub/Div after a quantized Conv's activation (PP-OCRv4's affine after HardSwish) count as
    # post-ops too: OpenVINO runs Conv → act → ×c → +d as one kernel, and wants one FakeQuantize after the chain.
    affine_post_ops: bool = False
    # Fold a constant per-channel Mul/Add right after a Conv/Gemm into its weights before planning (prepare): Conv →
    # act becomes adjacent, one FakeQuantize after the activation. Off for ONNX Runtime: on PP-OCRv4 rec it was 7 %
    # faster there but read 96.7 % of 300 lines instead of 97.7 % (the Q moves after the folded affine).
    fold_affine: bool = False
    # Rebuild HardSwish from x * HardSigmoid(x) (ONNX Runtime's optimizer inlines it): OpenVINO fuses Conv+HardSwish.
    hardswish: bool = False
    # Leave squeeze-excite gates (pool → Conv → act → Conv → sigmoid, 1×1 spatial) in float: a few hundred MACs
    # each, where Q/DQ and reorders cost more than the int8 kernel saves (NNCF's ignored SE-block pattern).
    float_se: bool = False
    # Leave a Conv that reads a graph input of ≤ 4 channels (the RGB stem) in float: ONNX Runtime's QLinearConv runs
    # it through im2col, 2.2× slower than its float kernel (MobileNetV3 stem 553 vs 254 µs), plus an input
    # Quantize and an NHWC Transpose.
    float_stem: bool = False
    # How a Concat's output (and what shares its range) is stored when it differs from ``activations``. OpenVINO
    # 2026.4 moves a FakeQuantize after a Concat up onto the Concat's inputs and, with a signed (int8) grid, feeds
    # the next Conv wrong values (PP-OCRv4 det: output SNR 0.06 dB); the same grid stored as uint8 with zero point
    # 128 is computed right, as fast (docs/quantize.md, "Engine notes").
    concat_activations: QType | None = None
    # Leave MatMuls of two activations (a transformer's attention: Q·Kᵀ, softmax·V) in float. ONNX Runtime runs
    # them as FusedMatMul (the 1/√d scale inside) and a plain MatMul; quantized, each costs a QuantizeLinear per
    # input, a QLinearMatMul or MatMulIntegerToFloat plus the scale Mul, and a DequantizeLinear after (all-MiniLM-L6-v2:
    # 48 → 24 QuantizeLinear, 31 → 25 Mul kernels per run; see docs/quantize.md).
    float_attention: bool = False
    # Merge MatMul+bias Adds that read the same activation (Q/K/V projections) into one MatMul + Split before
    # planning (bushu.quant.prepare.merge_sibling_matmuls): ONNX Runtime leaves the bias Add of a QDQ MatMul as a kernel
    # of its own.
    merge_matmuls: bool = False


PRESETS: dict[str, EnginePreset] = {
    "ort": EnginePreset("ort", activations=UINT8, weights=INT8_SYM, float_stem=True, float_attention=True,
                        merge_matmuls=True),
    # Symmetric int8: right on the digits CNN, where OpenVINO 2026.4 computes the uint8 files wrong (top-1 0.99 →
    # 0.67; not the zero point but uint8 after a float Conv+bias in a dynamic-shape graph, docs/quantize.md), except
    # after a Concat, where it is the signed grid OpenVINO gets wrong (concat_activations).
    "openvino": EnginePreset("openvino", activations=INT8_SYM, weights=INT8_SYM, fold_activations=False,
                             post_ops=POST_OPS, affine_post_ops=True, fold_affine=True, hardswish=True,
                             float_se=True, concat_activations=UINT8_CENTERED),
}


def preset(engine: str) -> EnginePreset:
    key = {"onnxruntime": "ort", "ov": "openvino"}.get(engine.lower(), engine.lower())
    if key not in PRESETS:
        raise BushuError(f"no quantization preset for engine '{engine}': choose one of {', '.join(PRESETS)}")
    return PRESETS[key]


@dataclasses.dataclass(frozen=True)
class QuantConfig:
    """What to quantize and how. Every field has a measured default; see docs/quantize.md and
    docs/dev/quant-bench.md. Ranges by MSE (PP-OCRv4 det output SNR 8.4 dB with min-max, 11.0 with MSE; rec word
    accuracy 97.3% → 98.0%, = FP32); bias correction on (det 11.0 → 14.8 dB, MobileNetV3 41 → 47 dB); cross-layer
    equalization on (det 14.8 → 16.4 dB; it only touches Conv → ReLU → Conv chains).

    ``include``/``exclude`` hold node names or op types: with ``include`` only matching nodes are quantized;
    ``exclude`` always wins. ``keep_float`` is the set of node names the accuracy budget left in float.
    ``heldout`` feeds (the first ones of the calibration stream unless given separately) measure the error of
    ``method="auto"``, of the diagnosis and of the budget. ``budget`` is a string such as ``"cosine>=0.99"``
    (see :mod:`bushu.quant.budget`); ``eval_fn(run) -> float`` is the user's own metric, higher is better.
    ``smoothquant`` is an α in [0, 1] or ``"auto"`` (searched); ``None`` leaves it off. ``reduce_range`` (7-bit
    weights) is ``None`` by default: on for ONNX Runtime on CPUs without VNNI.
    """

    engine: str = "ort"
    # whose Q/DQ placement (a key of PRESETS) to use on ``engine``; None: ONNX Runtime's own on ONNX Runtime, and on
    # another engine the fastest there of the placements it computes right (bushu.quant.pipeline.place). A given
    # placement is kept unless the engine computes its file wrong (then quantize falls back to another)
    placement: str | None = None
    mode: str = "static"
    method: str = "mse"
    per_channel: bool = True
    reduce_range: bool | None = None
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    keep_float: frozenset[str] = frozenset()
    percentile: float = 99.999
    max_samples: int | None = None
    heldout: int = 8
    bias_correction: bool = True
    smoothquant: float | str | None = "auto"
    cle: bool = True
    adaround: bool = False  # learned weight rounding (bushu.quant.algorithms.adaround), opt-in
    budget: str | None = None
    eval_fn: Callable | None = dataclasses.field(default=None, compare=False)
    measure_speed: bool = True
    diagnose: bool = False
    block_size: int = 32
    progress: bool = True

    def __post_init__(self):
        if self.mode not in MODES:
            raise BushuError(f"unknown mode '{self.mode}': choose one of {', '.join(MODES)}")
        if self.method not in METHODS:
            raise BushuError(f"unknown calibration method '{self.method}': choose one of {', '.join(METHODS)}")
        if not 50.0 < self.percentile <= 100.0:
            raise BushuError(f"percentile {self.percentile} is out of range: give a value in (50, 100], e.g. 99.999")
        if self.block_size < 16 or self.block_size & (self.block_size - 1):
            raise BushuError(f"block size {self.block_size} must be a power of two ≥ 16, e.g. 32")
        preset(self.engine)
        if self.placement is not None:
            preset(self.placement)
        if self.smoothquant not in (None, "auto") and not (isinstance(self.smoothquant, (int, float))
                                                            and 0.0 <= self.smoothquant <= 1.0):
            raise BushuError(f"SmoothQuant α {self.smoothquant!r} must be in [0, 1] or 'auto'")

    @property
    def uses_reduce_range(self) -> bool:
        """``reduce_range=None`` decides by the CPU: ONNX Runtime's u8×s8 kernels without VNNI add pairs of
        products in 16 bits (vpmaddubsw), which saturates with full 8-bit weights."""
        if self.reduce_range is not None:
            return self.reduce_range
        from ..timing import cpu_flags

        flags = cpu_flags()
        return preset(self.placement or self.engine).name == "ort" and bool(flags) and not ({"avx512_vnni", "avx_vnni"} & flags)

    @property
    def preset(self) -> EnginePreset:
        p = preset(self.placement or self.engine)
        if self.uses_reduce_range:
            p = dataclasses.replace(p, weights=INT8_SYM7)
        return p

    def replace(self, **kw) -> QuantConfig:
        return dataclasses.replace(self, **kw)
