"""``bushu.convert``: ONNX to ncnn (pnnx), MNN (its compiled converter) and OpenVINO IR, each verified against
ONNX Runtime. The ncnn and MNN engines use the same converters through a content-keyed cache."""

from __future__ import annotations

from .api import ConvertResult, convert, verify
from .common import ConversionError
from .targets import TARGETS

__all__ = ["ConvertResult", "ConversionError", "TARGETS", "convert", "verify"]
